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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
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

// meshAPIServers prepares each cluster for the mesh with meshops.Enable,
// as `isthmus enable` does (mesh CA, certificates, CRDs, the cluster's own
// isthmus-clustermesh entry and the isthmus-config ConfigMap with its mesh
// endpoint), copies the apiserver's certificates into the cluster's mesh
// directory, and lists one isthmus-apiserver per cluster, serving the mesh
// etcd on the cluster's API address.
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
	s.mu.Lock()
	cp := s.planes[c.Name]
	s.mu.Unlock()
	restCfg, err := clientcmd.NewDefaultClientConfig(*cp.Kubeconfig(c.Name), &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		return ProcessSpec{}, err
	}
	cluster, err := meshops.NewCluster(c.Name, restCfg)
	if err != nil {
		return ProcessSpec{}, err
	}
	if _, err := meshops.Enable(ctx, cluster, meshops.EnableOptions{
		ClusterName:   c.Name,
		ClusterID:     c.ID,
		MeshEndpoints: []string{c.MeshEndpoint()},
	}); err != nil {
		return ProcessSpec{}, err
	}
	if err := copyMeshSecrets(ctx, cluster.Client(), dir); err != nil {
		return ProcessSpec{}, err
	}
	kubeconfig := filepath.Join(dir, "apiserver.kubeconfig")
	if err := writeClientKubeconfig(kubeconfig, cp, c, "isthmus-apiserver-"+c.Name, "system:masters"); err != nil {
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

// copyMeshSecrets writes the certificates Enable stored in the cluster into
// files, as a Helm deployment would mount them: the CA, the apiserver's
// server certificate and its admin client certificate.
func copyMeshSecrets(ctx context.Context, client kubernetes.Interface, dir string) error {
	files := []struct{ secret, key, file string }{
		{meshconfig.CASecret, meshconfig.KeyTLSCert, state.MeshCACert},
		{meshconfig.ServerCertSecret, meshconfig.KeyTLSCert, state.MeshServerCert},
		{meshconfig.ServerCertSecret, meshconfig.KeyTLSKey, state.MeshServerKey},
		{meshconfig.AdminCertSecret, meshconfig.KeyTLSCert, state.MeshAdminCert},
		{meshconfig.AdminCertSecret, meshconfig.KeyTLSKey, state.MeshAdminKey},
	}
	for _, f := range files {
		sec, err := client.CoreV1().Secrets(meshconfig.Namespace).Get(ctx, f.secret, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read Secret %s/%s: %w", meshconfig.Namespace, f.secret, err)
		}
		b := sec.Data[f.key]
		if len(b) == 0 {
			return fmt.Errorf("Secret %s/%s has no %s", meshconfig.Namespace, f.secret, f.key)
		}
		if err := os.WriteFile(filepath.Join(dir, f.file), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// agents lists one isthmus-agent per node, in the node's namespace and
// cgroup, pinning under the node's bpffs directory, with the node's own
// WireGuard device and the socket LB on the node's cgroup. A userspace
// WireGuard device is served by a helper process the agent starts, which
// outlives agent restarts; it lives in the node's cgroup, so stopping the
// lab kills it with the rest.
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
					// Nodes share the machine: a device name of their own
					// (userspace devices have machine-wide sockets), and
					// the socket LB for the node's processes only.
					"--wireguard-device", n.WireGuardDevice,
					"--wireguard-port", strconv.Itoa(topology.WireGuardPort),
					"--socklb-cgroup", s.cfg.Cgroups.Path(n.Cgroup),
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
