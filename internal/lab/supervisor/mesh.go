package supervisor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// MeshHealthPort is where each cluster's isthmus-apiserver serves /readyz,
// on the cluster's API address.
const MeshHealthPort = 9880

// AgentMetricsPort is where each node's isthmus-agent serves /metrics, on
// the node's IP (every node has its own namespace).
const AgentMetricsPort = 9966

// meshEnabled reports whether the plan runs the mesh.
func (s *Supervisor) meshEnabled() bool {
	return s.plan.MeshAPIServer != "" && s.plan.Agent != ""
}

// meshAPIServers prepares each cluster for the mesh, as `isthmus enable`
// would: a mesh CA, the etcd server and admin certificates, and in the
// cluster the objects the CLI, the agents and `isthmus connect` read (the
// isthmus-config ConfigMap, the isthmus-ca Secret and the cluster's own
// entry of the isthmus-clustermesh Secret). It lists one isthmus-apiserver
// per cluster, on the cluster's API address.
func (s *Supervisor) meshAPIServers(ctx context.Context) ([]ProcessSpec, error) {
	var specs []ProcessSpec
	for _, c := range s.lab.Clusters {
		spec, err := s.meshAPIServer(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("prepare the mesh of %s: %w", c.Name, err)
		}
		specs = append(specs, spec)
	}
	return specs, nil
}

func (s *Supervisor) meshAPIServer(ctx context.Context, c topology.Cluster) (ProcessSpec, error) {
	dir := s.cfg.Dir.MeshDir(c.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return ProcessSpec{}, err
	}
	ca, err := certs.NewCA("isthmus mesh CA "+c.Name, 0)
	if err != nil {
		return ProcessSpec{}, err
	}
	server, err := ca.IssueServer(certs.ServerOptions{IPs: []netip.Addr{c.APIAddr, netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		return ProcessSpec{}, err
	}
	admin, err := ca.IssueClient(protocol.AdminUser(c.Name), 0)
	if err != nil {
		return ProcessSpec{}, err
	}
	local, err := ca.IssueClient(protocol.LocalUser(c.Name), 0)
	if err != nil {
		return ProcessSpec{}, err
	}
	files := map[string][]byte{
		state.MeshCACert: ca.CertPEM(), state.MeshCAKey: ca.KeyPEM(),
		state.MeshServerCert: server.CertPEM, state.MeshServerKey: server.KeyPEM,
		state.MeshAdminCert: admin.CertPEM, state.MeshAdminKey: admin.KeyPEM,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return ProcessSpec{}, err
		}
	}
	s.mu.Lock()
	cp := s.planes[c.Name]
	s.mu.Unlock()
	kubeconfig := filepath.Join(dir, "apiserver.kubeconfig")
	if err := writeClientKubeconfig(kubeconfig, cp, c, "isthmus-apiserver-"+c.Name, "system:masters"); err != nil {
		return ProcessSpec{}, err
	}
	if err := publishMesh(ctx, cp, c, ca, local); err != nil {
		return ProcessSpec{}, err
	}
	health := netip.AddrPortFrom(c.APIAddr, MeshHealthPort).String()
	return ProcessSpec{
		Name: "isthmus-apiserver/" + c.Name,
		Path: s.plan.MeshAPIServer,
		Args: []string{
			"--cluster-name", c.Name,
			"--cluster-id", strconv.Itoa(int(c.ID)),
			"--kubeconfig", kubeconfig,
			"--data-dir", filepath.Join(dir, "etcd"),
			"--listen-address", netip.AddrPortFrom(c.APIAddr, topology.MeshEtcdPort).String(),
			"--tls-cert-file", filepath.Join(dir, state.MeshServerCert),
			"--tls-key-file", filepath.Join(dir, state.MeshServerKey),
			"--tls-client-ca-file", filepath.Join(dir, state.MeshCACert),
			"--admin-cert-file", filepath.Join(dir, state.MeshAdminCert),
			"--admin-key-file", filepath.Join(dir, state.MeshAdminKey),
			"--health-address", health,
			"--advertise-endpoint", c.MeshEndpoint(),
			"--log-level", s.logLevel(),
		},
		LogFile: filepath.Join(dir, "apiserver.log"),
		Ready:   httpReady("http://" + health + "/readyz"),
	}, nil
}

// publishMesh writes what `isthmus enable` writes into a cluster: the
// cluster's identity and mesh endpoint (isthmus-config), its CA (isthmus-ca)
// and the cluster's own entry in isthmus-clustermesh, read by its agents
// with the local-<cluster> certificate.
func publishMesh(ctx context.Context, cp ControlPlane, c topology.Cluster, ca *certs.CA, local *certs.KeyPair) error {
	client, err := kubeClient(cp, c)
	if err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", meshconfig.Namespace, err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ConfigMapName, Namespace: meshconfig.Namespace},
		Data: map[string]string{
			meshconfig.KeyClusterName:          c.Name,
			meshconfig.KeyClusterID:            strconv.Itoa(int(c.ID)),
			meshconfig.KeyMaxConnectedClusters: strconv.Itoa(protocol.MaxConnectedClusters255),
			meshconfig.KeyMeshEndpoints:        c.MeshEndpoint(),
		},
	}
	caSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: meshconfig.CASecret, Namespace: meshconfig.Namespace},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{meshconfig.KeyTLSCert: ca.CertPEM(), meshconfig.KeyTLSKey: ca.KeyPEM()},
	}
	mesh := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ClusterMeshSecret, Namespace: meshconfig.Namespace},
		Data:       map[string][]byte{},
	}
	if err := meshconfig.PutEntry(mesh.Data, meshconfig.ClusterEntry{
		Cluster: c.Name, Endpoints: []string{c.MeshEndpoint()}, CA: ca.CertPEM(), Cert: local.CertPEM, Key: local.KeyPEM,
	}); err != nil {
		return err
	}
	if _, err := client.CoreV1().ConfigMaps(meshconfig.Namespace).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create ConfigMap %s: %w", meshconfig.ConfigMapName, err)
	}
	for _, sec := range []*corev1.Secret{caSecret, mesh} {
		if _, err := client.CoreV1().Secrets(meshconfig.Namespace).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create Secret %s: %w", sec.Name, err)
		}
	}
	return nil
}

// agents lists one isthmus-agent per node, in the node's namespace and
// cgroup, pinning under the node's bpffs directory.
func (s *Supervisor) agents() ([]ProcessSpec, error) {
	var specs []ProcessSpec
	for _, c := range s.lab.Clusters {
		s.mu.Lock()
		cp := s.planes[c.Name]
		s.mu.Unlock()
		for _, n := range c.Nodes {
			dir := filepath.Join(s.cfg.Dir.NodeDir(n.Name), "agent")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return nil, err
			}
			kubeconfig := filepath.Join(dir, "agent.kubeconfig")
			if err := writeClientKubeconfig(kubeconfig, cp, c, "isthmus-agent-"+n.Name, "system:masters"); err != nil {
				return nil, err
			}
			socket := filepath.Join(dir, "agent.sock")
			specs = append(specs, ProcessSpec{
				Name: "isthmus-agent/" + n.Name,
				Path: s.plan.Agent,
				Args: []string{
					"--node-name", n.Name,
					"--cluster-name", c.Name,
					"--cluster-id", strconv.Itoa(int(c.ID)),
					"--kubeconfig", kubeconfig,
					"--bpf-root", filepath.Join(s.cfg.BPFRoot, n.BPFDir),
					"--state-dir", dir,
					"--api-socket", socket,
					"--metrics-address", netip.AddrPortFrom(n.IP, AgentMetricsPort).String(),
					"--log-level", s.logLevel(),
				},
				Netns:   n.Netns,
				Cgroup:  n.Cgroup,
				LogFile: filepath.Join(s.cfg.Dir.NodeDir(n.Name), "agent.log"),
				Ready:   unixReady(socket),
			})
		}
	}
	return specs, nil
}

func (s *Supervisor) logLevel() string {
	if s.plan.Debug {
		return "debug"
	}
	return "info"
}

func kubeClient(cp ControlPlane, c topology.Cluster) (kubernetes.Interface, error) {
	cfg, err := clientcmd.NewDefaultClientConfig(*cp.Kubeconfig(c.Name), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("client of %s: %w", c.Name, err)
	}
	return kubernetes.NewForConfig(cfg)
}

// httpReady is ready once url answers 200.
func httpReady(url string) func(context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	return func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	}
}

// unixReady is ready once a unix socket accepts connections.
func unixReady(path string) func(context.Context) error {
	return func(ctx context.Context) error {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return errors.Join(fmt.Errorf("socket %s not served yet", path), err)
		}
		return c.Close()
	}
}
