package remotecluster

import (
	"log/slog"
	"net/netip"
	"testing"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// countingHandler keeps what was delivered, by kind, keyed like the keys,
// and sweeps by generation.
type countingHandler struct {
	gen  [numKinds]int
	held [numKinds]map[string]int
}

func newCountingHandler() *countingHandler {
	h := &countingHandler{}
	for i := range h.held {
		h.held[i] = map[string]int{}
	}
	return h
}

func (h *countingHandler) put(i int, k string) { h.held[i][k] = h.gen[i] }

func (h *countingHandler) UpsertIdentity(i protocol.Identity) { h.put(2, protocol.IdentityKey(i.ID)) }
func (h *countingHandler) DeleteIdentity(id protocol.NumericIdentity) {
	delete(h.held[2], protocol.IdentityKey(id))
}
func (h *countingHandler) UpsertIPCache(e *protocol.IPCacheEntry) { h.put(3, e.IP.String()) }
func (h *countingHandler) DeleteIPCache(a netip.Addr)             { delete(h.held[3], a.String()) }
func (h *countingHandler) UpsertNode(n *protocol.Node)            { h.put(0, n.Name) }
func (h *countingHandler) DeleteNode(name string)                 { delete(h.held[0], name) }
func (h *countingHandler) UpsertService(s *protocol.ClusterService) {
	h.put(1, s.NamespacedName())
}
func (h *countingHandler) DeleteService(ns, name string) { delete(h.held[1], ns+"/"+name) }
func (h *countingHandler) Resync(k protocol.Kind)        { h.gen[kindIdx(k)]++ }
func (h *countingHandler) Sweep(k protocol.Kind) int {
	i, n := kindIdx(k), 0
	for key, g := range h.held[i] {
		if g != h.gen[i] {
			delete(h.held[i], key)
			n++
		}
	}
	return n
}
func (h *countingHandler) Synced(protocol.Kind) {}

func (h *countingHandler) total() int {
	n := 0
	for _, m := range h.held {
		n += len(m)
	}
	return n
}

func kindIdx(k protocol.Kind) int {
	for i, kk := range protocol.Kinds {
		if kk == k {
			return i
		}
	}
	return -1
}

// FuzzSessionValues drives arbitrary keys and values of every kind through
// the reader's decode and delivery path (the part of a connection that
// handles remote data, without the network): it must never panic; one key
// yields at most one entry however often it is put; a key whose value
// turns bad is withdrawn; and the delete a key's deletion delivers removes
// exactly what its put delivered.
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
		key := s.prefixes[i] + rest
		s.put(i, []byte(key), value)
		s.put(i, []byte(key), value) // an update, not a second entry
		if n := h.total(); n > 1 || len(h.held[i]) != n {
			t.Fatalf("one key gave %d entries (%d of its kind)", n, len(h.held[i]))
		}
		s.put(i, []byte(key), []byte("\x00not a value"))
		if n := h.total(); n != 0 {
			t.Fatalf("a key whose value turned bad still holds %d entries", n)
		}
		s.put(i, []byte(key), value)
		if del {
			s.deliverDelete(i, key)
		} else {
			h.Resync(protocol.Kinds[i])
			h.Sweep(protocol.Kinds[i])
		}
		if n := h.total(); n != 0 {
			t.Fatalf("after removal %d entries are held", n)
		}
	})
}
