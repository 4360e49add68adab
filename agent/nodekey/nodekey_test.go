package nodekey_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/agent/nodekey"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

var kube = testenv.New(testenv.Options{})

func TestMain(m *testing.M) { testenv.Main(m, kube) }

const key = "VRksOB6ZNds4oXWIGfSVpvc0gBhcOWFmzvTDcyvULlI="

// TestPublishKeepsTheAnnotation runs the publisher against a real
// kube-apiserver: it waits for its Node, annotates it, restores the
// annotation when someone changes or removes it, and publishes again on a
// re-registered Node.
func TestPublishKeepsTheAnnotation(t *testing.T) {
	k := kube.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name := "nodekey-" + strings.ToLower(rand.Text()[:8])
	nodes := k.Client.CoreV1().Nodes()
	t.Cleanup(func() { nodes.Delete(context.Background(), name, metav1.DeleteOptions{}) })

	reg := prometheus.NewRegistry()
	p, err := nodekey.New(slog.New(slog.DiscardHandler), nodekey.Config{Client: k.Client, NodeName: name, Key: key,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { p.Run(rctx); close(done) }()
	defer func() { stop(); <-done }()

	// The Node registers after the agent started.
	createNode(ctx, t, k.Client, name, map[string]string{"other": "kept"})
	waitAnnotation(ctx, t, k.Client, name, key)
	if n, _ := nodes.Get(ctx, name, metav1.GetOptions{}); n.Annotations["other"] != "kept" {
		t.Errorf("other annotations = %v, want them kept", n.Annotations)
	}
	eventually(ctx, t, "published", func() bool { return p.Published() && published(t, reg) == 1 })

	// Someone overwrites it, then removes it.
	for _, patch := range []string{
		`{"metadata":{"annotations":{"` + meshconfig.NodeWireGuardPubKeyAnnotation + `":"stale"}}}`,
		`{"metadata":{"annotations":{"` + meshconfig.NodeWireGuardPubKeyAnnotation + `":null}}}`,
	} {
		if _, err := nodes.Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
		waitAnnotation(ctx, t, k.Client, name, key)
	}

	// The Node is deleted and registered again, without annotations.
	if err := nodes.Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(ctx, t, "unpublished after the Node was deleted", func() bool { return !p.Published() })
	createNode(ctx, t, k.Client, name, nil)
	waitAnnotation(ctx, t, k.Client, name, key)
}

// published reads the isthmus_agent_wireguard_key_published gauge.
func published(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 {
		t.Fatalf("gather: %v, %d families", err, len(mfs))
	}
	return mfs[0].GetMetric()[0].GetGauge().GetValue()
}

func createNode(ctx context.Context, t *testing.T, c kubernetes.Interface, name string, annotations map[string]string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
	if _, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitAnnotation(ctx context.Context, t *testing.T, c kubernetes.Interface, name, want string) {
	t.Helper()
	eventually(ctx, t, fmt.Sprintf("annotation %s", want), func() bool {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		return err == nil && n.Annotations[meshconfig.NodeWireGuardPubKeyAnnotation] == want
	})
}

func eventually(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}
