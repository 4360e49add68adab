package testbed

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// requireLab checks the lab can run here: root.
func requireLab(t testing.TB) {
	t.Helper()
	privileged.Require(t)
}

// startLab builds the binaries and brings up a lab with the mesh. skip is
// set, and nothing started, when the module cannot run the mesh yet.
func startLab(t testing.TB, opts Options) (env *Env, stop func(context.Context, bool) error, skip string, err error) {
	dir, err := os.MkdirTemp("", "isthmus-e2e-")
	if err != nil {
		return nil, nil, "", err
	}
	bins, err := labtest.BuildTo(dir)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", fmt.Errorf("build the binaries: %w", err)
	}
	if bins.MeshAPIServer == "" || bins.Agent == "" {
		os.RemoveAll(dir)
		return nil, nil, "this module has no cmd/isthmus-apiserver and cmd/isthmus-agent yet: the e2e scenarios need the mesh", nil
	}
	cfg := lab.Config{
		Isthmus:       bins.Isthmus,
		MeshAPIServer: bins.MeshAPIServer,
		Agent:         bins.Agent,
		Progress:      progressWriter{t},
		Timeout:       5 * time.Minute,
	}
	cfg.Name = labtest.Name()
	cfg.Clusters, cfg.NodesPerCluster = opts.LabClusters, opts.LabNodes
	// The first run on a machine builds the control plane: minutes.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, "", err
	}
	stop = func(ctx context.Context, failed bool) error {
		if failed {
			fmt.Fprintf(os.Stderr, "testbed: a test failed; the logs of lab %q end with:\n", l.Name())
			writeLogTails(os.Stderr, string(l.Dir), 40)
		}
		defer os.RemoveAll(dir)
		if opts.KeepLab {
			fmt.Fprintf(os.Stderr, "testbed: lab %q is still running (-keep-lab):\n"+
				"  kubeconfig: %s (contexts %s)\n"+
				"  explore:    %s lab status --name %s\n"+
				"  remove it:  isthmus lab down --name %s\n",
				l.Name(), l.KubeconfigPath(), strings.Join(l.Contexts(), ", "), bins.Isthmus, l.Name(), l.Name())
			return nil
		}
		return l.Down(ctx)
	}
	env = &Env{
		Description: fmt.Sprintf("lab %q (%d clusters of %d nodes)", l.Name(), len(l.Topology.Clusters), len(l.Topology.Clusters[0].Nodes)),
		Lab:         true,
		Kubeconfig:  l.KubeconfigPath(),
		Isthmus:     bins.Isthmus,
		Conventions: opts.Kube,
	}
	for _, tc := range l.Topology.Clusters {
		rc, err := l.RESTConfig(tc.Name)
		if err != nil {
			return nil, stop, "", err
		}
		mc, err := meshops.NewCluster(tc.Name, rc)
		if err != nil {
			return nil, stop, "", err
		}
		env.Clusters = append(env.Clusters, &Cluster{
			Context: tc.Name, Name: tc.Name, ID: tc.ID,
			REST: rc, Kube: mc.Client(), Mesh: mc,
			backend: &labCluster{lab: l, cluster: tc},
		})
	}
	return env, stop, "", nil
}

// progressWriter logs the lab's start into the test that started it.
type progressWriter struct{ t testing.TB }

func (w progressWriter) Write(p []byte) (int, error) {
	w.t.Logf("lab: %s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// labCluster is one cluster of a lab.
type labCluster struct {
	lab     *lab.Lab
	cluster topology.Cluster
}

func (c *labCluster) exec(ctx context.Context, namespace, pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	err := c.lab.Exec(ctx, c.cluster.Name, namespace, pod, argv, lab.Stdio{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return &ExitError{Code: exit.ExitCode()}
	}
	return err
}

func (c *labCluster) agentNodes(context.Context) ([]string, error) {
	var out []string
	for _, n := range c.cluster.Nodes {
		out = append(out, n.Name)
	}
	return out, nil
}

func (c *labCluster) node(name string) (topology.Node, error) {
	for _, n := range c.cluster.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return topology.Node{}, fmt.Errorf("cluster %s of lab %q has no node %q", c.cluster.Name, c.lab.Name(), name)
}

func (c *labCluster) restartAgent(ctx context.Context, node string) error {
	if _, err := c.node(node); err != nil {
		return err
	}
	return c.lab.Restart(ctx, "isthmus-agent/"+node)
}

func (c *labCluster) restartMeshAPIServer(ctx context.Context) error {
	return c.lab.Restart(ctx, "isthmus-apiserver/"+c.cluster.Name)
}

// agentSocket is where the lab's agent of node serves its API (see the
// layout in internal/lab/state).
func (c *labCluster) agentSocket(node string) (string, error) {
	if _, err := c.node(node); err != nil {
		return "", err
	}
	return filepath.Join(c.lab.Dir.NodeDir(node), "agent", "agent.sock"), nil
}

func (c *labCluster) agentClient(node string) (agentv1.AgentClient, func(), error) {
	sock, err := c.agentSocket(node)
	if err != nil {
		return nil, nil, err
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("agent of %s: %w", node, err)
	}
	return agentv1.NewAgentClient(conn), func() { conn.Close() }, nil
}

func (c *labCluster) agentStatus(ctx context.Context, node string) (*agentv1.StatusResponse, error) {
	client, done, err := c.agentClient(node)
	if err != nil {
		return nil, err
	}
	defer done()
	st, err := client.Status(ctx, &agentv1.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("status of the agent of %s: %w", node, err)
	}
	return st, nil
}

func (c *labCluster) agentMaps(ctx context.Context, node string) (*AgentMaps, error) {
	client, done, err := c.agentClient(node)
	if err != nil {
		return nil, err
	}
	defer done()
	return dumpAgent(ctx, client, node)
}

func (c *labCluster) meshEtcd(context.Context) (clientv3.Config, error) {
	env, err := c.lab.EtcdEnv(c.cluster.Name)
	if err != nil {
		return clientv3.Config{}, err
	}
	vars := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		vars[k] = v
	}
	info := transport.TLSInfo{CertFile: vars["ETCDCTL_CERT"], KeyFile: vars["ETCDCTL_KEY"], TrustedCAFile: vars["ETCDCTL_CACERT"]}
	tlsCfg, err := info.ClientConfig()
	if err != nil {
		return clientv3.Config{}, fmt.Errorf("the lab's admin certificate: %w", err)
	}
	tlsCfg.MinVersion = tls.VersionTLS12
	return clientv3.Config{Endpoints: strings.Split(vars["ETCDCTL_ENDPOINTS"], ","), TLS: tlsCfg}, nil
}

func (c *labCluster) diagnose(_ context.Context, w io.Writer) {
	fmt.Fprintf(w, "--- lab %q, cluster %s: log tails\n", c.lab.Name(), c.cluster.Name)
	writeLogTails(w, c.lab.Dir.MeshDir(c.cluster.Name), 30)
	for _, n := range c.cluster.Nodes {
		writeLogTails(w, c.lab.Dir.NodeDir(n.Name), 30)
	}
}

// writeLogTails writes the last n lines of every *.log under dir.
func writeLogTails(w io.Writer, dir string, n int) {
	_ = filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".log") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil
		}
		lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(lines) > n {
			lines = lines[len(lines)-n:]
		}
		fmt.Fprintf(w, "==> %s <==\n%s\n", p, strings.Join(lines, "\n"))
		return nil
	})
}
