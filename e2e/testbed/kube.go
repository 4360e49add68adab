package testbed

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	utilexec "k8s.io/client-go/util/exec"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/meshops"
)

// startContexts opens existing clusters. It builds the isthmus CLI of the
// module under test, and checks each cluster has the mesh enabled.
func startContexts(opts Options) (env *Env, stop func(context.Context, bool) error, err error) {
	if len(opts.Contexts) < 2 {
		return nil, nil, fmt.Errorf("-contexts names %d context(s); the scenarios need at least 2 clusters", len(opts.Contexts))
	}
	kc, err := meshops.LoadKubeconfig(opts.Kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	clusters, err := kc.Clusters(opts.Contexts)
	if err != nil {
		return nil, nil, err
	}
	dir, err := os.MkdirTemp("", "isthmus-e2e-")
	if err != nil {
		return nil, nil, err
	}
	stop = func(context.Context, bool) error { return os.RemoveAll(dir) }
	bins, err := labtest.BuildTo(dir)
	if err != nil {
		return nil, stop, fmt.Errorf("build the isthmus CLI: %w", err)
	}
	env = &Env{
		Description: "contexts " + strings.Join(opts.Contexts, ", "),
		Kubeconfig:  opts.Kubeconfig,
		Isthmus:     bins.Isthmus,
		Conventions: opts.Kube,
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, mc := range clusters {
		cfg, err := readMeshConfig(ctx, mc)
		if err != nil {
			return nil, stop, err
		}
		env.Clusters = append(env.Clusters, &Cluster{
			Context: mc.Context(), Name: cfg.ClusterName, ID: cfg.ClusterID,
			REST: mc.RESTConfig(), Kube: mc.Client(), Mesh: mc,
			backend: &kubeCluster{mc: mc, conv: opts.Kube},
		})
	}
	return env, stop, nil
}

// kubeCluster is an existing cluster with the mesh installed.
type kubeCluster struct {
	mc   *meshops.Cluster
	conv KubeConventions
}

func (c *kubeCluster) exec(ctx context.Context, namespace, pod string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return c.execIn(ctx, namespace, pod, "", argv, stdin, stdout, stderr)
}

// execIn runs argv in container (the first when empty) of a pod through
// the exec API: WebSocket, falling back to SPDY for older apiservers.
func (c *kubeCluster) execIn(ctx context.Context, namespace, pod, container string, argv []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	req := c.mc.Client().CoreV1().RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: container, Command: argv, Stdin: stdin != nil, Stdout: true, Stderr: true}, scheme.ParameterCodec)
	cfg := c.mc.RESTConfig()
	ws, err := remotecommand.NewWebSocketExecutor(cfg, "GET", req.URL().String())
	if err != nil {
		return err
	}
	spdy, err := remotecommand.NewSPDYExecutor(cfg, "POST", req.URL())
	if err != nil {
		return err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	var exit utilexec.CodeExitError
	if errors.As(err, &exit) {
		return &ExitError{Code: exit.ExitStatus()}
	}
	if err != nil {
		return fmt.Errorf("exec in %s/%s of %s: %w", namespace, pod, c.mc.Context(), err)
	}
	return nil
}

// ready reports whether a pod runs and is Ready.
func ready(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func (c *kubeCluster) pods(ctx context.Context, selector, node string) ([]corev1.Pod, error) {
	opts := metav1.ListOptions{LabelSelector: selector}
	if node != "" {
		opts.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}
	list, err := c.mc.Client().CoreV1().Pods(c.conv.Namespace).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list pods %s in %s of %s: %w", selector, c.conv.Namespace, c.mc.Context(), err)
	}
	return list.Items, nil
}

func (c *kubeCluster) agentPod(ctx context.Context, node string) (*corev1.Pod, error) {
	pods, err := c.pods(ctx, c.conv.AgentSelector, node)
	if err != nil {
		return nil, err
	}
	for i := range pods {
		if ready(&pods[i]) {
			return &pods[i], nil
		}
	}
	return nil, fmt.Errorf("no ready agent pod (%s in %s) on node %s of %s", c.conv.AgentSelector, c.conv.Namespace, node, c.mc.Context())
}

func (c *kubeCluster) agentNodes(ctx context.Context) ([]string, error) {
	pods, err := c.pods(ctx, c.conv.AgentSelector, "")
	if err != nil {
		return nil, err
	}
	var nodes []string
	for _, p := range pods {
		if p.Spec.NodeName != "" && !slices.Contains(nodes, p.Spec.NodeName) {
			nodes = append(nodes, p.Spec.NodeName)
		}
	}
	slices.Sort(nodes)
	return nodes, nil
}

// restartAgent deletes node's agent pod and waits for its DaemonSet's
// replacement to be ready.
func (c *kubeCluster) restartAgent(ctx context.Context, node string) error {
	old, err := c.agentPod(ctx, node)
	if err != nil {
		return err
	}
	if err := c.mc.Client().CoreV1().Pods(c.conv.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete agent pod %s: %w", old.Name, err)
	}
	return c.waitReplaced(ctx, c.conv.AgentSelector, node, []types.UID{old.UID}, 1)
}

// restartMeshAPIServer deletes the mesh apiserver's pods and waits for
// their replacements to be ready.
func (c *kubeCluster) restartMeshAPIServer(ctx context.Context) error {
	pods, err := c.pods(ctx, c.conv.APIServerSelector, "")
	if err != nil {
		return err
	}
	if len(pods) == 0 {
		return fmt.Errorf("no mesh apiserver pod (%s in %s) in %s", c.conv.APIServerSelector, c.conv.Namespace, c.mc.Context())
	}
	var uids []types.UID
	for _, p := range pods {
		uids = append(uids, p.UID)
		if err := c.mc.Client().CoreV1().Pods(c.conv.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete mesh apiserver pod %s: %w", p.Name, err)
		}
	}
	return c.waitReplaced(ctx, c.conv.APIServerSelector, "", uids, len(pods))
}

// waitReplaced waits until want pods of selector (on node, if set) are
// ready and none of them is one of old.
func (c *kubeCluster) waitReplaced(ctx context.Context, selector, node string, old []types.UID, want int) error {
	var last []corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		pods, err := c.pods(ctx, selector, node)
		if err != nil {
			return false, nil
		}
		last = pods
		n := 0
		for i := range pods {
			if slices.Contains(old, pods[i].UID) {
				return false, nil
			}
			if ready(&pods[i]) {
				n++
			}
		}
		return n >= want, nil
	})
	if err != nil {
		var s []string
		for _, p := range last {
			s = append(s, fmt.Sprintf("%s (%s, ready %t)", p.Name, p.Status.Phase, ready(&p)))
		}
		return fmt.Errorf("waiting for %d new ready pod(s) %s in %s: %w; pods now: %s", want, selector, c.mc.Context(), err, strings.Join(s, ", "))
	}
	return nil
}

// agentJSON runs `isthmus-agent <args> -o json` in node's agent pod and
// decodes its output into m.
func (c *kubeCluster) agentJSON(ctx context.Context, node string, m proto.Message, args ...string) error {
	pod, err := c.agentPod(ctx, node)
	if err != nil {
		return err
	}
	var out, errOut bytes.Buffer
	argv := append(append([]string{c.conv.AgentCommand}, args...), "-o", "json")
	if err := c.execIn(ctx, pod.Namespace, pod.Name, c.conv.AgentContainer, argv, nil, &out, &errOut); err != nil {
		return fmt.Errorf("%s in %s: %w: %s", strings.Join(argv, " "), pod.Name, err, errOut.String())
	}
	if err := protojson.Unmarshal(out.Bytes(), m); err != nil {
		return fmt.Errorf("%s in %s: decode: %w", strings.Join(argv, " "), pod.Name, err)
	}
	return nil
}

func (c *kubeCluster) agentStatus(ctx context.Context, node string) (*agentv1.StatusResponse, error) {
	st := &agentv1.StatusResponse{}
	return st, c.agentJSON(ctx, node, st, "status")
}

func (c *kubeCluster) agentMaps(ctx context.Context, node string) (*AgentMaps, error) {
	ipc, svcs, ids := &agentv1.IPCacheChunk{}, &agentv1.DumpServicesResponse{}, &agentv1.IdentityChunk{}
	if err := c.agentJSON(ctx, node, ipc, "dump", "ipcache"); err != nil {
		return nil, err
	}
	if err := c.agentJSON(ctx, node, svcs, "dump", "services"); err != nil {
		return nil, err
	}
	if err := c.agentJSON(ctx, node, ids, "dump", "identities"); err != nil {
		return nil, err
	}
	return &AgentMaps{Node: node, IPCache: ipc.Entries, Services: svcs.Services, Identities: ids.Identities}, nil
}

// meshEtcd reaches the cluster's mesh etcd at its published endpoints,
// as its admin, with the certificate `isthmus enable` stored in the
// cluster. The endpoints must be reachable from where the tests run (for
// kind on Linux, the nodes' addresses are).
func (c *kubeCluster) meshEtcd(ctx context.Context) (clientv3.Config, error) {
	cfg, err := readMeshConfig(ctx, c.mc)
	if err != nil {
		return clientv3.Config{}, err
	}
	if len(cfg.MeshEndpoints) == 0 {
		return clientv3.Config{}, fmt.Errorf("context %q publishes no mesh endpoint in %s/%s", c.mc.Context(), meshconfig.Namespace, meshconfig.ConfigMapName)
	}
	secret := func(name string) (*corev1.Secret, error) {
		s, err := c.mc.Client().CoreV1().Secrets(meshconfig.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read Secret %s/%s of %s: %w", meshconfig.Namespace, name, c.mc.Context(), err)
		}
		return s, nil
	}
	ca, err := secret(meshconfig.CASecret)
	if err != nil {
		return clientv3.Config{}, err
	}
	admin, err := secret(meshconfig.AdminCertSecret)
	if err != nil {
		return clientv3.Config{}, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca.Data[meshconfig.KeyTLSCert]) {
		return clientv3.Config{}, fmt.Errorf("Secret %s/%s of %s holds no CA certificate", meshconfig.Namespace, meshconfig.CASecret, c.mc.Context())
	}
	cert, err := tls.X509KeyPair(admin.Data[meshconfig.KeyTLSCert], admin.Data[meshconfig.KeyTLSKey])
	if err != nil {
		return clientv3.Config{}, fmt.Errorf("Secret %s/%s of %s: %w", meshconfig.Namespace, meshconfig.AdminCertSecret, c.mc.Context(), err)
	}
	return clientv3.Config{Endpoints: cfg.MeshEndpoints, TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}, nil
}

func (c *kubeCluster) diagnose(ctx context.Context, w io.Writer) {
	fmt.Fprintf(w, "--- context %s: log tails of the mesh's pods\n", c.mc.Context())
	for _, sel := range []string{c.conv.APIServerSelector, c.conv.AgentSelector} {
		pods, err := c.pods(ctx, sel, "")
		if err != nil {
			fmt.Fprintf(w, "%v\n", err)
			continue
		}
		for _, p := range pods {
			tail := int64(30)
			b, err := c.mc.Client().CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{TailLines: &tail}).DoRaw(ctx)
			if err != nil {
				fmt.Fprintf(w, "==> %s: %v\n", p.Name, err)
				continue
			}
			fmt.Fprintf(w, "==> %s (node %s) <==\n%s\n", p.Name, p.Spec.NodeName, b)
		}
	}
}
