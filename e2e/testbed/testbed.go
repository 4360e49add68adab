package testbed

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// Options say where the suites run.
type Options struct {
	// Contexts are existing kubeconfig contexts, one per cluster, with the
	// mesh installed and enabled. Empty means: bring up a local lab.
	Contexts []string
	// Kubeconfig holds Contexts; empty loads it as kubectl does
	// ($KUBECONFIG, else ~/.kube/config).
	Kubeconfig string
	// KeepLab leaves the lab running after the tests, to explore a
	// failure; Main prints how to reach it and how to remove it.
	KeepLab bool
	// LabClusters and LabNodes shape the lab; zero means 2 and 2.
	LabClusters, LabNodes int
	// Kube describes the mesh's objects on existing clusters. Zero fields
	// take the chart's defaults (DefaultKubeConventions).
	Kube KubeConventions
}

// KubeConventions are the names the testbed finds the mesh's pods by on
// existing clusters: those the Helm chart gives them.
type KubeConventions struct {
	// Namespace holds the mesh apiserver and the agents.
	Namespace string
	// AgentSelector selects the agent pods (one per node, a DaemonSet).
	AgentSelector string
	// AgentContainer is the agent's container in those pods.
	AgentContainer string
	// AgentCommand is the isthmus-agent binary inside it, which serves
	// `status` and `dump` from the agent's default API socket.
	AgentCommand string
	// APIServerSelector selects the mesh apiserver pods.
	APIServerSelector string
	// EchoImage runs the echo workload: an image with the isthmus binary,
	// whose hidden `lab workload` command is the echo server.
	EchoImage string
	// ClientImage runs the client pods the requests are sent from; it
	// needs curl and sleep.
	ClientImage string
}

// DefaultKubeConventions are the Helm chart's names.
var DefaultKubeConventions = KubeConventions{
	Namespace:         meshconfig.Namespace,
	AgentSelector:     "app.kubernetes.io/name=isthmus-agent",
	AgentContainer:    "isthmus-agent",
	AgentCommand:      "isthmus-agent",
	APIServerSelector: "app.kubernetes.io/name=isthmus-apiserver",
	EchoImage:         "ghcr.io/isthmus-mesh/isthmus:latest",
	ClientImage:       "docker.io/curlimages/curl:8.11.1",
}

func (k KubeConventions) withDefaults() KubeConventions {
	d := DefaultKubeConventions
	for _, f := range []struct{ v, def *string }{
		{&k.Namespace, &d.Namespace}, {&k.AgentSelector, &d.AgentSelector}, {&k.AgentContainer, &d.AgentContainer},
		{&k.AgentCommand, &d.AgentCommand}, {&k.APIServerSelector, &d.APIServerSelector},
		{&k.EchoImage, &d.EchoImage}, {&k.ClientImage, &d.ClientImage},
	} {
		if *f.v == "" {
			*f.v = *f.def
		}
	}
	return k
}

// RegisterFlags adds the testbed's flags to fs and returns the Options
// they fill in when fs is parsed:
//
//	-contexts a,b       run on these kubeconfig contexts instead of a lab
//	-kubeconfig PATH    the kubeconfig holding them
//	-keep-lab           leave the lab running after the tests
//	-echo-image, -client-image, -mesh-namespace: see KubeConventions
func RegisterFlags(fs *flag.FlagSet) *Options {
	o := &Options{}
	fs.Func("contexts", "comma-separated kubeconfig contexts (with the mesh installed) to run on instead of a local lab", func(s string) error {
		o.Contexts = nil
		for _, c := range strings.Split(s, ",") {
			if c = strings.TrimSpace(c); c != "" {
				o.Contexts = append(o.Contexts, c)
			}
		}
		return nil
	})
	fs.StringVar(&o.Kubeconfig, "kubeconfig", "", "kubeconfig holding -contexts (default: $KUBECONFIG, else ~/.kube/config)")
	fs.BoolVar(&o.KeepLab, "keep-lab", false, "leave the lab running after the tests, to explore it")
	fs.StringVar(&o.Kube.EchoImage, "echo-image", "", "with -contexts: image of the echo workload, holding the isthmus binary (default "+DefaultKubeConventions.EchoImage+")")
	fs.StringVar(&o.Kube.ClientImage, "client-image", "", "with -contexts: image of the client pods, with curl (default "+DefaultKubeConventions.ClientImage+")")
	fs.StringVar(&o.Kube.Namespace, "mesh-namespace", "", "with -contexts: namespace of the mesh's pods (default "+DefaultKubeConventions.Namespace+")")
	return o
}

// Testbed starts an Env on first use and stops it in Main. Create it with
// New in TestMain and pass it to Main. Safe for concurrent use.
type Testbed struct {
	opts Options

	once sync.Once
	// Set once inside once, read-only afterwards.
	env     *Env
	skip    string
	err     error
	stopEnv func(ctx context.Context, failed bool) error
}

// New returns a Testbed that brings up its Env on the first Env call.
func New(opts Options) *Testbed {
	opts.Kube = opts.Kube.withDefaults()
	return &Testbed{opts: opts}
}

// Main runs the tests, then takes the lab down (unless KeepLab), after
// writing the tail of its logs to stderr when a test failed, and exits.
func Main(m *testing.M, b *Testbed) {
	code := m.Run()
	b.once.Do(func() {}) // no start after this
	if b.stopEnv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		err := b.stopEnv(ctx, code != 0)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "testbed: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	os.Exit(code)
}

// Env returns the environment, starting it on first use. Under -short
// (the unit tier) it skips t. On the lab it needs root: see
// privileged.Require.
func (b *Testbed) Env(t testing.TB) *Env {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: runs on a lab or on real clusters; not part of the unit tier (-short)")
	}
	if len(b.opts.Contexts) == 0 {
		requireLab(t)
	}
	b.once.Do(func() {
		begin := time.Now()
		if len(b.opts.Contexts) == 0 {
			b.env, b.stopEnv, b.skip, b.err = startLab(t, b.opts)
		} else {
			b.env, b.stopEnv, b.err = startContexts(b.opts)
		}
		if b.env != nil {
			t.Logf("testbed: %s ready in %s", b.env.Description, time.Since(begin).Round(100*time.Millisecond))
		}
	})
	if b.skip != "" {
		t.Skip(b.skip)
	}
	if b.err != nil {
		t.Fatalf("testbed: %v", b.err)
	}
	if b.env == nil {
		t.Fatal("testbed: the tests have ended")
	}
	return b.env
}

// Env is the clusters a suite runs on.
type Env struct {
	// Description says what the clusters are, for logs.
	Description string
	// Lab is true on the local lab.
	Lab bool
	// Clusters, in the order of the lab or of -contexts.
	Clusters []*Cluster
	// Kubeconfig is the kubeconfig file holding the clusters' contexts;
	// empty means the default (on existing clusters without -kubeconfig).
	Kubeconfig string
	// Isthmus is the isthmus CLI binary built from the module under test.
	Isthmus string
	// Conventions are the names of the mesh's pods and the images of the
	// workloads (on the lab, images are ignored).
	Conventions KubeConventions
}

// CLIResult is the outcome of one isthmus command.
type CLIResult struct {
	Args           []string
	Stdout, Stderr string
	// Code is the exit code.
	Code int
}

func (r CLIResult) String() string {
	return fmt.Sprintf("$ isthmus %s\n(exit %d)\n%s%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// CLI runs the isthmus binary with args, adding --kubeconfig when the Env
// has one, the command takes it (enable, connect, disconnect, status) and
// args do not set it.
// An error means it could not be run at all; a non-zero exit is in the
// result.
func (e *Env) CLI(ctx context.Context, args ...string) (CLIResult, error) {
	if e.Kubeconfig != "" && len(args) > 0 && !slices.Contains(args, "--kubeconfig") {
		switch args[0] {
		case "enable", "connect", "disconnect", "status":
			args = append([]string{args[0], "--kubeconfig", e.Kubeconfig}, args[1:]...)
		}
	}
	cmd := exec.CommandContext(ctx, e.Isthmus, args...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	res := CLIResult{Args: args, Stdout: out.String(), Stderr: errOut.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		res.Code = exit.ExitCode()
	case err != nil:
		return res, fmt.Errorf("run isthmus %s: %w", strings.Join(args, " "), err)
	}
	return res, nil
}

// Cluster is one cluster of the Env. Safe for concurrent use.
type Cluster struct {
	// Context is the kubeconfig context (on the lab, the cluster name).
	Context string
	// Name and ID are the cluster's mesh name and ID.
	Name string
	ID   uint32
	// REST and Kube reach the cluster as its admin.
	REST *rest.Config
	Kube kubernetes.Interface
	// Mesh is the cluster for internal/meshops.
	Mesh *meshops.Cluster

	backend clusterBackend
}

func (c *Cluster) String() string { return c.Name }

// clusterBackend is what differs between the lab and existing clusters.
type clusterBackend interface {
	exec(ctx context.Context, namespace, pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error
	agentNodes(ctx context.Context) ([]string, error)
	restartAgent(ctx context.Context, node string) error
	restartMeshAPIServer(ctx context.Context) error
	agentStatus(ctx context.Context, node string) (*agentv1.StatusResponse, error)
	agentMaps(ctx context.Context, node string) (*AgentMaps, error)
	meshEtcd(ctx context.Context) (clientv3.Config, error)
	diagnose(ctx context.Context, w io.Writer)
}

// ExitError is a command run in a pod that exited non-zero.
type ExitError struct {
	Code int
}

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with code %d", e.Code) }

// Exec runs argv in pod namespace/pod and returns when it exits; a
// non-zero exit is an *ExitError. On the lab the command is this
// machine's, run in the pod's network namespace and its node's cgroup; on
// existing clusters it runs in the pod's first container.
func (c *Cluster) Exec(ctx context.Context, namespace, pod string, argv []string, stdout, stderr io.Writer) error {
	return c.backend.exec(ctx, namespace, pod, argv, nil, stdout, stderr)
}

// AgentNodes lists the nodes that run a node agent.
func (c *Cluster) AgentNodes(ctx context.Context) ([]string, error) { return c.backend.agentNodes(ctx) }

// RestartAgent restarts the node agent of node and returns once the new
// one serves its API.
func (c *Cluster) RestartAgent(ctx context.Context, node string) error {
	return c.backend.restartAgent(ctx, node)
}

// RestartMeshAPIServer restarts the cluster's mesh apiserver and returns
// once it is ready again.
func (c *Cluster) RestartMeshAPIServer(ctx context.Context) error {
	return c.backend.restartMeshAPIServer(ctx)
}

// AgentStatus asks node's agent for its status.
func (c *Cluster) AgentStatus(ctx context.Context, node string) (*agentv1.StatusResponse, error) {
	return c.backend.agentStatus(ctx, node)
}

// AgentMaps reads what node's agent has in its BPF maps.
func (c *Cluster) AgentMaps(ctx context.Context, node string) (*AgentMaps, error) {
	return c.backend.agentMaps(ctx, node)
}

// MeshEtcd connects to the cluster's mesh etcd as its admin user; the
// caller closes the client.
func (c *Cluster) MeshEtcd(ctx context.Context) (*clientv3.Client, error) {
	cfg, err := c.backend.meshEtcd(ctx)
	if err != nil {
		return nil, fmt.Errorf("mesh etcd of %s: %w", c.Name, err)
	}
	cfg.Context = ctx
	cfg.DialTimeout = 10 * time.Second
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to the mesh etcd of %s at %s: %w", c.Name, strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}

// Diagnose writes what helps understand a failure: the tails of the
// logs of the cluster's mesh apiserver and agents.
func (c *Cluster) Diagnose(ctx context.Context, w io.Writer) { c.backend.diagnose(ctx, w) }

// Nodes lists the cluster's Kubernetes Nodes by name.
func (c *Cluster) Nodes(ctx context.Context) ([]string, error) {
	list, err := c.Kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the nodes of %s: %w", c.Name, err)
	}
	var out []string
	for _, n := range list.Items {
		out = append(out, n.Name)
	}
	return out, nil
}

// readMeshConfig reads the cluster's isthmus-config: its mesh name and ID.
func readMeshConfig(ctx context.Context, c *meshops.Cluster) (meshops.MeshConfig, error) {
	cm, err := c.Client().CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
	if err != nil {
		return meshops.MeshConfig{}, fmt.Errorf("context %q: read ConfigMap %s/%s (is the mesh enabled? `isthmus enable`): %w", c.Context(), meshconfig.Namespace, meshconfig.ConfigMapName, err)
	}
	mc, err := meshops.ParseMeshConfig(cm.Data)
	if err != nil {
		return meshops.MeshConfig{}, fmt.Errorf("context %q: %w", c.Context(), err)
	}
	return mc, nil
}
