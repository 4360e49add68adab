package charttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/agent/api/agentv1"
	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/datapath/bpffs"
	"github.com/isthmus-mesh/isthmus/datapath/socklb"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

func randomSuffix(t *testing.T) string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// pinDir is a directory of its own in the machine's bpffs, standing in for
// the node's /sys/fs/bpf, removed with its pins when t ends.
func pinDir(t *testing.T) string {
	t.Helper()
	if ok, err := bpffs.IsBPFFS(bpffs.DefaultMountpoint); err != nil || !ok {
		privileged.Unavailable(t, "no bpffs mounted at "+bpffs.DefaultMountpoint)
	}
	dir := filepath.Join(bpffs.DefaultMountpoint, "isthmus-charttest-"+randomSuffix(t))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove pins: %v", err)
		}
	})
	return dir
}

// testCgroup is a new cgroup v2 directory, removed when t ends (after
// everything registered later, the agent and its pins included).
func testCgroup(t *testing.T) string {
	t.Helper()
	root, err := socklb.CgroupRoot()
	if err != nil {
		privileged.Unavailable(t, err.Error())
	}
	dir := filepath.Join(root, "isthmus-charttest-"+randomSuffix(t))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	return dir
}

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// removeLink deletes a network device, if it is there; a userspace
// WireGuard device's helper process exits when its device goes.
func removeLink(t *testing.T, name string) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return
	}
	if err := netlink.LinkDel(l); err != nil {
		t.Errorf("remove device %s: %v", name, err)
	}
}

// agent is a running agent container.
type agent struct {
	*process
	lc *localContainer
	// statusArgv is the rendered readiness probe's command, moved here.
	statusArgv []string
}

// runAgent runs the rendered agent container for node with the
// credentials of a pod of the DaemonSet on that node.
func (m *mesh) runAgent(t *testing.T, node string) *agent {
	t.Helper()
	ds := toTyped[appsv1.DaemonSet](t, mustFind(t, m.objs, "DaemonSet", "isthmus-agent"))
	pod := m.podFor(t, "isthmus-agent-"+node, ds.Spec.Template, node)
	hostPaths := map[string]string{ds.Spec.Template.Spec.Volumes[0].HostPath.Path: pinDir(t)}
	if ds.Spec.Template.Spec.Volumes[0].Name != "bpffs" {
		t.Fatalf("the DaemonSet's first volume is %s; the test expects bpffs", ds.Spec.Template.Spec.Volumes[0].Name)
	}
	// The socket LB attaches to the mounted host cgroup root: here a
	// cgroup of the test's own, so that it serves no other process.
	hostPaths["/sys/fs/cgroup"] = testCgroup(t)
	spec := ds.Spec.Template.Spec
	lc := m.podEnvFor(t, pod, hostPaths).prepare(t, spec, "isthmus-agent")
	// A device name and port of its own: the machine is shared. The
	// device (a userspace one here, served by a helper process that
	// outlives the agent) is removed after the agent stops.
	device := "icht" + randomSuffix(t)[:6]
	t.Cleanup(func() { removeLink(t, device) })
	p := lc.start(t,
		"--kubeconfig="+m.kubeconfig(t, m.token(t, pod)),
		fmt.Sprintf("--metrics-address=127.0.0.1:%d", freePort(t)),
		"--wireguard-device="+device,
		fmt.Sprintf("--wireguard-port=%d", freeUDPPort(t)))
	a := &agent{process: p, lc: lc}
	probe := spec.Containers[0].ReadinessProbe
	if probe == nil || probe.Exec == nil {
		t.Fatal("the agent has no exec readiness probe")
	}
	a.statusArgv = []string{images(t)[probe.Exec.Command[0]]}
	for _, arg := range probe.Exec.Command[1:] {
		moved, err := lc.move(arg, false)
		if err != nil {
			t.Fatalf("readiness probe: %v", err)
		}
		a.statusArgv = append(a.statusArgv, moved)
	}
	return a
}

// status runs the readiness probe's command with -o json.
func (a *agent) status(ctx context.Context) (*agentv1.StatusResponse, error) {
	cmd := exec.CommandContext(ctx, a.statusArgv[0], append(a.statusArgv[1:], "-o", "json")...)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%v: %w", a.statusArgv, err)
	}
	st := &agentv1.StatusResponse{}
	if err := protojson.Unmarshal(out, st); err != nil {
		return nil, err
	}
	return st, nil
}

// TestAgentRunsWithChartRBAC runs the real isthmus-agent from the rendered
// DaemonSet with the chart's service account, RBAC and admission policy,
// beside the real isthmus-apiserver: it reads the clustermesh Secret,
// connects to its own cluster's mesh etcd through the entry `isthmus
// enable` wrote, syncs, answers its readiness probe, records Events and is
// refused nothing.
func TestAgentRunsWithChartRBAC(t *testing.T) {
	privileged.Require(t)
	m := setupMesh(t, meshOptions{})
	const node = "charttest-n1"
	m.createNode(t, node, "10.244.1.0/24", "192.0.2.11")
	api := m.runAPIServer(t)
	a := m.runAgent(t, node)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var last *agentv1.StatusResponse
	err := a.waitUntil(ctx, "the agent reads its own cluster, synced", func() (bool, error) {
		st, err := a.status(ctx)
		if err != nil {
			return false, err
		}
		last = st
		if !st.SecretRead || !st.InitialSyncDone {
			return false, nil
		}
		for _, c := range st.Clusters {
			if c.Name == testClusterName && c.Ready {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("%v\nlast status: %v", err, last)
	}
	if last.NodeName != node {
		t.Errorf("agent on node %q; the pod is on %s", last.NodeName, node)
	}
	// It publishes its WireGuard key on its own Node (patch, allowed by the
	// admission policy) and writes its MeshAgent (create, status).
	nodes := m.c.Client.CoreV1().Nodes()
	if err := a.waitUntil(ctx, "the Node carries the agent's WireGuard key", func() (bool, error) {
		n, err := nodes.Get(ctx, node, metav1.GetOptions{})
		return err == nil && n.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation] != "", err
	}); err != nil {
		t.Error(err)
	}
	mc, err := meshclient.NewForConfig(m.c.Config)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mc.MeshAgents().Delete(context.Background(), node, metav1.DeleteOptions{}) })
	if err := a.waitUntil(ctx, "the MeshAgent reports the own cluster ready", func() (bool, error) {
		ma, err := mc.MeshAgents().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range ma.Status.Clusters {
			if c.Name == testClusterName && c.Ready {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Error(err)
	}
	svc := m.badlyAnnotatedService(t)
	m.waitEvent(t, a.process, svc, "isthmus-agent")
	noForbidden(t, a.process)
	noForbidden(t, api)
}
