package exporter

import (
	"context"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/isthmus-mesh/isthmus/apiserver/identity"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// mapWriter records the exporter's output. The exporter's bookkeeping
// (IP ownership, identity reference counts) is logic; the real informer
// path against a real kube-apiserver is the golden tests' job.
type mapWriter struct {
	mu sync.Mutex
	m  map[string]string
}

func (w *mapWriter) Put(k string, v []byte, _ time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.m[k] = string(v)
}

func (w *mapWriter) Delete(k string, _ time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.m, k)
}

func (w *mapWriter) get(k string) (string, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v, ok := w.m[k]
	return v, ok
}

func runningPod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", Labels: labels},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "172.18.0.9"},
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(10 * time.Second)
	for !cond() {
		select {
		case <-tick.C:
		case <-timeout:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Two running pods reporting one IP (a stale status during churn): the
// first keeps the entry; when it goes, the second's takes its place
// instead of the key vanishing.
func TestIPClaimedTwice(t *testing.T) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns"}}
	client := fake.NewClientset(ns, runningPod("old", "10.0.0.1", map[string]string{"app": "old"}))
	w := &mapWriter{m: map[string]string{}}
	alloc, err := identity.New(slog.New(slog.DiscardHandler), identity.Config{ClusterID: 1, MaxConnectedClusters: 255, Store: w, Grace: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(slog.New(slog.DiscardHandler), Config{Cluster: "c1", ClusterID: 1, MaxConnectedClusters: 255, Client: client, Writer: w, Allocator: alloc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { e.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	if err := e.WaitInitialExport(ctx); err != nil {
		t.Fatal(err)
	}
	key := protocol.IPCacheKey(netipMust("10.0.0.1"))
	podOf := func() string {
		v, ok := w.get(key)
		if !ok {
			return ""
		}
		e, err := protocol.DecodeIPCacheEntry(1, 255, key, []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		return e.K8sPodName
	}
	waitFor(t, "old pod's entry", func() bool { return podOf() == "old" })

	if _, err := client.CoreV1().Pods("ns").Create(ctx, runningPod("new", "10.0.0.1", map[string]string{"app": "new"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The new pod's identity is allocated, its entry held back.
	waitFor(t, "new pod's identity", func() bool { return alloc.Len() == 2 })
	if got := podOf(); got != "old" {
		t.Fatalf("entry of %q, want old kept", got)
	}
	if err := client.CoreV1().Pods("ns").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new pod's entry", func() bool { return podOf() == "new" })
	if err := client.CoreV1().Pods("ns").Delete(ctx, "new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "entry gone", func() bool { return podOf() == "" })
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }
