package lab_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// TestLabMesh brings up a lab with the mesh and checks that each cluster's
// isthmus-apiserver exports the cluster (read with etcdctl through the
// `lab env` exports), that the cluster publishes what `isthmus connect`
// reads, and that each agent pins its maps in its node's bpffs directory.
func TestLabMesh(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a lab; skipped with -short")
	}
	privileged.Require(t)
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		privileged.Unavailable(t, "etcdctl is not installed (Debian package etcd-client)")
	}
	bins := labtest.Build(t)
	if bins.MeshAPIServer == "" {
		t.Skip("this module has no cmd/isthmus-apiserver and cmd/isthmus-agent yet")
	}
	l := labtest.Up(t, bins, labtest.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c1 := l.Topology.Clusters[0]
	k1 := client(t, l, c1.Name)
	deploy(ctx, t, k1, "echo", 2)
	pods := waitRunning(ctx, t, k1, "echo", 2)

	t.Run("etcdctl with lab env lists the exported state", func(t *testing.T) {
		env, err := l.EtcdEnv(c1.Name)
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"cilium/cluster-config/" + c1.Name}
		for _, n := range c1.Nodes {
			want = append(want, "cilium/state/nodes/v1/"+c1.Name+"/"+n.Name)
		}
		for _, p := range pods {
			want = append(want, "cilium/state/ip/v1/default/"+p.Status.PodIP)
		}
		var out bytes.Buffer
		eventually(ctx, t, "the exported keys", func() bool {
			out.Reset()
			cmd := exec.CommandContext(ctx, etcdctl, "get", "--prefix", "cilium/", "--keys-only")
			cmd.Env = append(os.Environ(), env...)
			cmd.Stdout, cmd.Stderr = &out, &out
			if cmd.Run() != nil {
				return false
			}
			for _, k := range want {
				if !strings.Contains(out.String(), k+"\n") {
					return false
				}
			}
			return true
		}, func() string { return "etcdctl printed:\n" + out.String() + "want keys " + strings.Join(want, ", ") })
	})

	t.Run("the cluster publishes its mesh endpoint and CA", func(t *testing.T) {
		cm, err := k1.CoreV1().ConfigMaps(meshconfig.Namespace).Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if cm.Data[meshconfig.KeyMeshEndpoints] != c1.MeshEndpoint() || cm.Data[meshconfig.KeyClusterName] != c1.Name || cm.Data[meshconfig.KeyClusterID] != "1" {
			t.Errorf("isthmus-config = %v", cm.Data)
		}
		ca, err := k1.CoreV1().Secrets(meshconfig.Namespace).Get(ctx, meshconfig.CASecret, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(ca.Data[meshconfig.KeyTLSCert]) == 0 || len(ca.Data[meshconfig.KeyTLSKey]) == 0 {
			t.Errorf("isthmus-ca holds %d keys", len(ca.Data))
		}
	})

	t.Run("agents pin their maps in their node's bpffs directory", func(t *testing.T) {
		for _, n := range l.Topology.Nodes() {
			pins, err := os.ReadDir(filepath.Join("/sys/fs/bpf", n.BPFDir))
			if err != nil || len(pins) == 0 {
				t.Errorf("node %s: %d pins, %v", n.Name, len(pins), err)
			}
		}
	})

	t.Run("down leaves no pin, process or namespace behind", func(t *testing.T) {
		hier, err := cgroup.Find()
		if err != nil {
			t.Fatal(err)
		}
		pids, _ := hier.Procs(topology.CgroupDir(l.Name()))
		if err := l.Down(ctx); err != nil {
			t.Fatal(err)
		}
		checkGone(t, l, hier, pids)
	})
}
