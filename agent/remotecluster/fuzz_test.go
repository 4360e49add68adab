package remotecluster

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// countingHandler keeps what was delivered, by kind, keyed like the keys.
type countingHandler struct {
	held [numKinds]map[string]bool
}

func newCountingHandler() *countingHandler {
	h := &countingHandler{}
	for i := range h.held {
		h.held[i] = map[string]bool{}
	}
	return h
}

func (h *countingHandler) UpsertIdentity(i protocol.Identity) {
	h.held[2][protocol.IdentityKey(i.ID)] = true
}
func (h *countingHandler) DeleteIdentity(id protocol.NumericIdentity) {
	delete(h.held[2], protocol.IdentityKey(id))
}
func (h *countingHandler) UpsertIPCache(e *protocol.IPCacheEntry) {
	h.held[3][e.IP.String()] = true
}
func (h *countingHandler) DeleteIPCache(a netip.Addr) { delete(h.held[3], a.String()) }
func (h *countingHandler) UpsertNode(n *protocol.Node) {
	h.held[0][n.Name] = true
}
func (h *countingHandler) DeleteNode(name string) { delete(h.held[0], name) }
func (h *countingHandler) UpsertService(s *protocol.ClusterService) {
	h.held[1][s.NamespacedName()] = true
}
func (h *countingHandler) DeleteService(ns, name string) { delete(h.held[1], ns+"/"+name) }
func (h *countingHandler) Synced(protocol.Kind)          {}

// FuzzSessionValues drives arbitrary keys and values of every kind through
// the reader's decode, track and withdraw path (the part of a connection
// that handles remote data, without the network): it must never panic, the
// Handler must hold exactly one value per tracked key, and withdrawing must
// leave it empty.
func FuzzSessionValues(f *testing.F) {
	c := &protocol.Node{Name: "n1", Cluster: "c1", ClusterID: 3}
	svc := &protocol.ClusterService{Cluster: "c1", Namespace: "ns", Name: "s", ClusterID: 3}
	e := &protocol.IPCacheEntry{IP: netip.MustParseAddr("10.0.0.1"), ID: protocol.ComposeIdentity(3, 300, 255)}
	f.Add(uint8(0), "n1", c.Encode(), true)
	f.Add(uint8(1), "ns/s", svc.Encode(), false)
	f.Add(uint8(2), "id/196908", []byte("k8s:app=a;"), true)
	f.Add(uint8(2), "value/k8s:a=b;/x", []byte("1"), true)
	f.Add(uint8(3), "10.0.0.1", e.Encode(), true)
	f.Add(uint8(3), "::ffff:10.0.0.1", e.Encode(), false)
	f.Fuzz(func(t *testing.T, kind uint8, rest string, value []byte, del bool) {
		h := newCountingHandler()
		rc, err := New(slog.New(slog.DiscardHandler), Config{
			Entry:                meshconfig.ClusterEntry{Cluster: "c1"},
			MaxConnectedClusters: 255,
			ClusterIDs:           NewClusterIDs("local", 1),
			Handler:              h,
		})
		if err != nil {
			t.Fatal(err)
		}
		s := &session{rc: rc, config: protocol.NewClusterConfig(3, 255)}
		for i, k := range protocol.Kinds {
			s.prefixes[i] = protocol.WatchPrefix("c1", k)
		}
		i := int(kind) % numKinds
		key := []byte(s.prefixes[i] + rest)
		s.put(i, key, value)
		s.put(i, key, value) // a repeated put is an update, not a second entry
		for j := range numKinds {
			if len(rc.known[j].keys) != len(h.held[j]) {
				t.Fatalf("kind %s: %d keys tracked, handler holds %d", protocol.Kinds[j], len(rc.known[j].keys), len(h.held[j]))
			}
		}
		if del {
			s.remove(i, key)
		} else {
			s.withdraw(i)
		}
		if len(rc.known[i].keys) != 0 || len(h.held[i]) != 0 {
			t.Fatalf("after removal: %d tracked, %d held", len(rc.known[i].keys), len(h.held[i]))
		}
	})
}
