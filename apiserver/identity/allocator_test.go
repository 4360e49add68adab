package identity_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/apiserver/identity"
	"github.com/isthmus-mesh/isthmus/apiserver/kvstore"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// mapStore records the allocator's writes; the allocator's logic is pure,
// etcd is exercised in TestRestoreFromEtcd.
type mapStore map[string]string

func (m mapStore) Put(k string, v []byte, _ time.Time) { m[k] = string(v) }
func (m mapStore) Delete(k string, _ time.Time)        { delete(m, k) }

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func labels(app string) protocol.Labels {
	return protocol.PodSecurityLabels("c1", "ns", "default", map[string]string{"app": app}, nil)
}

func newAllocator(t *testing.T, clusterID, maxConnected uint32, store identity.Store) *identity.Allocator {
	t.Helper()
	a, err := identity.New(discard(), identity.Config{ClusterID: clusterID, MaxConnectedClusters: maxConnected, Grace: time.Minute, Store: store})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestAcquireRelease(t *testing.T) {
	store := mapStore{}
	a := newAllocator(t, 3, 255, store)
	t0 := time.Now()
	x, err := a.Acquire(labels("x"), t0)
	if err != nil {
		t.Fatal(err)
	}
	if x.ClusterID(255) != 3 || x.LocalPart(255) < protocol.MinLocalIdentity || x != 3<<16|256 {
		t.Fatalf("first identity %d: cluster %d local %d", x, x.ClusterID(255), x.LocalPart(255))
	}
	if x2, _ := a.Acquire(labels("x"), t0); x2 != x {
		t.Fatalf("same labels got %d and %d", x, x2)
	}
	y, _ := a.Acquire(labels("y"), t0)
	if y == x {
		t.Fatal("different labels share an identity")
	}
	want := labels("x").String()
	if store[protocol.IdentityKey(x)] != want || store[identity.PrivateKey(x)] != want {
		t.Fatalf("store = %v", store)
	}

	a.Release(x, t0)
	a.Release(x, t0)
	if n := a.GC(t0.Add(59 * time.Second)); n != 0 {
		t.Fatalf("GC within the grace period released %d", n)
	}
	// Used again within the grace period: kept, same identity.
	if x3, _ := a.Acquire(labels("x"), t0); x3 != x {
		t.Fatalf("re-acquired %d, want %d", x3, x)
	}
	a.Release(x, t0)
	if n := a.GC(t0.Add(time.Minute)); n != 1 {
		t.Fatalf("GC after the grace period released %d, want 1", n)
	}
	if _, ok := store[protocol.IdentityKey(x)]; ok {
		t.Fatal("released identity still published")
	}
	if _, ok := store[identity.PrivateKey(x)]; ok {
		t.Fatal("released identity still recorded")
	}
	// A released identity is not handed out again at once.
	z, _ := a.Acquire(labels("x"), t0)
	if z == x || z == y {
		t.Fatalf("new allocation %d reuses %d or %d", z, x, y)
	}
	if a.Len() != 2 {
		t.Fatalf("Len = %d", a.Len())
	}
}

func TestClusterBits511(t *testing.T) {
	a := newAllocator(t, 300, 511, mapStore{})
	id, err := a.Acquire(labels("x"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if id != 300<<15|256 || id.ClusterID(511) != 300 {
		t.Fatalf("identity %d in cluster 300 of 511", id)
	}
	if _, err := identity.New(discard(), identity.Config{ClusterID: 300, MaxConnectedClusters: 255, Store: mapStore{}}); err == nil {
		t.Fatal("cluster ID 300 accepted with 255 clusters")
	}
}

func TestExhaustion(t *testing.T) {
	a := newAllocator(t, 1, 511, mapStore{})
	span := int(protocol.MaxLocalIdentity(511)) - protocol.MinLocalIdentity + 1
	now := time.Now()
	for i := range span {
		if _, err := a.Acquire(labels(fmt.Sprint(i)), now); err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
	}
	if _, err := a.Acquire(labels("one-too-many"), now); !errors.Is(err, identity.ErrExhausted) {
		t.Fatalf("allocation beyond %d: %v", span, err)
	}
	// Releasing one makes room after the grace period.
	id, _ := a.Lookup(labels("7"))
	a.Release(id, now)
	a.GC(now.Add(time.Hour))
	got, err := a.Acquire(labels("one-too-many"), now)
	if err != nil || got != id {
		t.Fatalf("after release: %d, %v; want %d", got, err, id)
	}
}

func TestRestoreFromEtcd(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	w := kvstore.NewWriter(discard(), env.Admin, kvstore.WriterConfig{})
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(runCtx) })
	defer func() { stop(); wg.Wait() }()

	a := newAllocator(t, 3, 255, w)
	ids := map[string]protocol.NumericIdentity{}
	for _, app := range []string{"a", "b", "c"} {
		id, err := a.Acquire(labels(app), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ids[app] = id
	}
	// A record another cluster ID left in the data dir is not restored.
	foreign := protocol.ComposeIdentity(4, 999, 255)
	w.Put(identity.PrivateKey(foreign), []byte(labels("f").String()), time.Time{})
	w.Put(identity.PrivatePrefix+"junk", []byte("x"), time.Time{})
	if err := w.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	b := newAllocator(t, 3, 255, mapStore{})
	n, err := b.Restore(ctx, env.Admin)
	if err != nil || n != 3 {
		t.Fatalf("Restore = %d, %v", n, err)
	}
	for app, want := range ids {
		if got, ok := b.Lookup(labels(app)); !ok || got != want {
			t.Errorf("%s: restored %d, want %d", app, got, want)
		}
	}
	if _, ok := b.Lookup(labels("f")); ok {
		t.Error("foreign record restored")
	}
	d, err := b.Acquire(labels("d"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if d == id {
			t.Fatalf("new identity %d collides with a restored one", d)
		}
	}
	// Restored identities nobody acquires are released after the grace.
	if got := b.GC(time.Now().Add(2 * time.Minute)); got != 3 {
		t.Errorf("GC released %d restored identities, want 3", got)
	}
}
