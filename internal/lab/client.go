package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
)

// RESTConfig returns an admin client configuration for the cluster whose
// context is kubeContext.
func (l *Lab) RESTConfig(kubeContext string) (*rest.Config, error) {
	if _, ok := l.Topology.Cluster(kubeContext); !ok {
		return nil, l.unknownContext(kubeContext)
	}
	rules := &clientcmd.ClientConfigLoadingRules{ExplicitPath: l.KubeconfigPath()}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: kubeContext})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load the lab kubeconfig: %w", err)
	}
	return cfg, nil
}

// Client returns an admin Kubernetes client for the cluster whose context
// is kubeContext.
func (l *Lab) Client(kubeContext string) (kubernetes.Interface, error) {
	cfg, err := l.RESTConfig(kubeContext)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (l *Lab) unknownContext(kubeContext string) error {
	return fmt.Errorf("lab %q has no context %q; its contexts are %s", l.Name(), kubeContext, strings.Join(l.Contexts(), ", "))
}

// PodPlace is where a pod's processes run.
type PodPlace struct {
	Node string
	// Netns is the name of the pod's network namespace (its node's for a
	// host-network pod), in /run/netns.
	Netns string
	// Cgroup is the node's cgroup, relative to the cgroup2 mount.
	Cgroup string
}

// PodPlace finds where pod namespace/pod of cluster kubeContext runs.
func (l *Lab) PodPlace(ctx context.Context, kubeContext, namespace, pod string) (PodPlace, error) {
	client, err := l.Client(kubeContext)
	if err != nil {
		return PodPlace{}, err
	}
	p, err := client.CoreV1().Pods(namespace).Get(ctx, pod, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return PodPlace{}, fmt.Errorf("no pod %s/%s in %s; list them with kubectl --context %s get pods -n %s", namespace, pod, kubeContext, kubeContext, namespace)
	}
	if err != nil {
		return PodPlace{}, fmt.Errorf("get pod %s/%s: %w", namespace, pod, err)
	}
	if p.Spec.NodeName == "" {
		return PodPlace{}, fmt.Errorf("pod %s/%s is not scheduled yet", namespace, pod)
	}
	node, ok := l.Topology.Node(p.Spec.NodeName)
	if !ok {
		return PodPlace{}, fmt.Errorf("pod %s/%s runs on %s, which is not a node of lab %q", namespace, pod, p.Spec.NodeName, l.Name())
	}
	place := PodPlace{Node: node.Name, Netns: node.PodNetns(string(p.UID)), Cgroup: node.Cgroup}
	if p.Spec.HostNetwork {
		place.Netns = node.Netns
	}
	if _, err := os.Stat(nsexec.Path(place.Netns)); err != nil {
		return PodPlace{}, fmt.Errorf("pod %s/%s has no network yet (phase %s); wait until it runs", namespace, pod, p.Status.Phase)
	}
	return place, nil
}

// Stdio are the standard streams of a command run by Exec; nil ones are
// connected to /dev/null.
type Stdio struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Exec runs argv inside pod namespace/pod of the cluster kubeContext: in the
// pod's network namespace and its node's cgroup (where the socket load
// balancer hooks), with the host's filesystem, and returns when it exits.
// A non-zero exit is an *exec.ExitError; ctx ending kills the command.
func (l *Lab) Exec(ctx context.Context, kubeContext, namespace, pod string, argv []string, stdio Stdio) error {
	if len(argv) == 0 {
		return errors.New("no command to run")
	}
	place, err := l.PodPlace(ctx, kubeContext, namespace, pod)
	if err != nil {
		return err
	}
	hier, err := cgroup.Find()
	if err != nil {
		return err
	}
	cg, err := hier.Open(place.Cgroup)
	if err != nil {
		return err
	}
	defer cg.Close()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	if err := nsexec.Start(cmd, nsexec.Where{Netns: nsexec.Path(place.Netns), Cgroup: cg}); err != nil {
		return fmt.Errorf("run %s in %s/%s: %w", argv[0], namespace, pod, err)
	}
	return cmd.Wait()
}

// Status asks the lab's supervisor how the lab and its processes are.
func (l *Lab) Status(ctx context.Context) (state.Status, error) {
	var st state.Status
	resp, err := l.control(ctx, http.MethodGet, state.PathStatus, nil)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("decode the lab status: %w", err)
	}
	return st, nil
}

// Restart restarts one of the lab's supervised processes (as Status names
// them, e.g. "kubelet/isthmus-c1-n1") and returns once it is ready again.
func (l *Lab) Restart(ctx context.Context, process string) error {
	resp, err := l.control(ctx, http.MethodPost, state.PathRestart, url.Values{"process": {process}})
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

// Down removes the lab (see Down).
func (l *Lab) Down(ctx context.Context) error {
	return Down(ctx, l.stateRoot, l.Name())
}

func (l *Lab) control(ctx context.Context, method, path string, query url.Values) (*http.Response, error) {
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", l.Dir.ControlSocket())
		},
	}}
	u := url.URL{Scheme: "http", Host: "lab", Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the supervisor of lab %q: %w (is it running? `isthmus lab status --name %s`)", l.Name(), err, l.Name())
	}
	if resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		resp.Body.Close()
		return nil, fmt.Errorf("lab %q: %s", l.Name(), strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// EtcdEnv returns the ETCDCTL_* variables (endpoint, CA, admin certificate
// and key) that point etcdctl at the mesh etcd of the cluster kubeContext.
func (l *Lab) EtcdEnv(kubeContext string) ([]string, error) {
	c, ok := l.Topology.Cluster(kubeContext)
	if !ok {
		return nil, l.unknownContext(kubeContext)
	}
	var st state.State
	if err := state.ReadJSON(l.Dir.StateFile(), &st); err != nil {
		return nil, err
	}
	if !st.Mesh {
		return nil, fmt.Errorf("lab %q runs without the mesh, so %s has no mesh etcd; build isthmus-apiserver and isthmus-agent next to isthmus (make build) and start the lab again", l.Name(), c.Name)
	}
	files := []string{state.MeshCACert, state.MeshAdminCert, state.MeshAdminKey}
	for _, f := range files {
		if _, err := os.Stat(l.Dir.MeshFile(c.Name, f)); err != nil {
			return nil, fmt.Errorf("mesh credentials of %s: %w", c.Name, err)
		}
	}
	return []string{
		"ETCDCTL_API=3",
		"ETCDCTL_ENDPOINTS=" + c.MeshEndpoint(),
		"ETCDCTL_CACERT=" + l.Dir.MeshFile(c.Name, state.MeshCACert),
		"ETCDCTL_CERT=" + l.Dir.MeshFile(c.Name, state.MeshAdminCert),
		"ETCDCTL_KEY=" + l.Dir.MeshFile(c.Name, state.MeshAdminKey),
	}, nil
}
