package state

import (
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config configures a State.
type Config struct {
	// LocalCluster and LocalClusterID name the cluster this node is in.
	// Required.
	LocalCluster   string
	LocalClusterID uint32
	// MaxConnectedClusters decides where an identity carries its cluster
	// ID. Required.
	MaxConnectedClusters uint32
	// NodeName is this node's name in the local cluster; its pods and
	// addresses are marked as local to the node. Empty means unknown.
	NodeName string
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// State is the merged mesh view. Safe for concurrent use.
type State struct {
	cfg Config

	mu sync.RWMutex // guards the fields below
	// clusters by name; order lists them local first, then by name, which
	// is the preference order when two clusters claim one prefix.
	clusters       map[string]*clusterState
	order          []*clusterState
	localServices  map[ServiceName]*LocalService
	localEndpoints map[ServiceName]map[string]protocol.PortConfiguration
	ipcacheSubs    []*Changes[netip.Prefix]
	serviceSubs    []*Changes[ServiceName]
	identitySubs   []*Changes[protocol.NumericIdentity]
	nodeSubs       []*Changes[NodeName]
	syncSubs       []chan struct{}
	// ipcacheSize is the number of prefixes some cluster holds, and
	// ipcacheHosts how many of them are host prefixes (/32, /128).
	ipcacheSize, ipcacheHosts int
}

// New returns an empty State.
func New(cfg Config) (*State, error) {
	if err := protocol.ValidateClusterName(cfg.LocalCluster); err != nil {
		return nil, err
	}
	if err := protocol.ValidateClusterID(cfg.LocalClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &State{
		cfg:            cfg,
		clusters:       make(map[string]*clusterState),
		localServices:  make(map[ServiceName]*LocalService),
		localEndpoints: make(map[ServiceName]map[string]protocol.PortConfiguration),
	}, nil
}

// ServiceName is a service's namespace and name.
type ServiceName struct{ Namespace, Name string }

func (n ServiceName) String() string { return n.Namespace + "/" + n.Name }

// NodeName is a node's cluster and name.
type NodeName struct{ Cluster, Name string }

func (n NodeName) String() string { return n.Cluster + "/" + n.Name }

// clusterState is one cluster's export. Every entry carries the listing
// generation of its kind in which it was last written, for the sweep after
// a (re)list.
type clusterState struct {
	name  string
	local bool

	identities map[protocol.NumericIdentity]identityEntry
	ipcache    map[ipKey]podEntry
	// maskedKeys maps the host key of an ipcache entry's key address to
	// its prefix, for the rare entries whose mask makes them differ.
	maskedKeys map[ipKey]ipKey
	hosts      hostTable
	nodes      map[string]nodeEntry
	nodeIPs    map[ipKey]string // node address (host prefix) -> node name
	services   map[ServiceName]serviceEntry

	gen        [numKinds]uint32 // current listing generation per kind
	synced     map[protocol.Kind]bool
	everSynced bool
	lastChange time.Time
}

type identityEntry struct {
	labels protocol.Labels
	gen    uint32
}

// podEntry is 12 bytes without pointers: with 250k entries, a map of them
// is small and the garbage collector never scans it.
type podEntry struct {
	id   protocol.NumericIdentity
	host uint32 // index in the cluster's hostTable
	gen  uint32
}

type nodeEntry struct {
	node *protocol.Node
	gen  uint32
}

type serviceEntry struct {
	svc *protocol.ClusterService
	gen uint32
}

// numKinds is len(protocol.Kinds).
const numKinds = 4

func kindIndex(k protocol.Kind) int {
	for i, kk := range protocol.Kinds {
		if kk == k {
			return i
		}
	}
	return -1
}

var (
	kindNodes      = kindIndex(protocol.KindNodes)
	kindServices   = kindIndex(protocol.KindServices)
	kindIdentities = kindIndex(protocol.KindIdentities)
	kindIPCache    = kindIndex(protocol.KindIPCache)
)

// ipKey is an IP prefix without pointers (a netip.Prefix holds one), so
// that the large maps keyed by it are not scanned by the garbage
// collector.
type ipKey struct {
	addr [16]byte // IPv4 in IPv4-mapped form
	bits uint8
	v4   bool
}

// keyOf returns the key of p, which must be masked and unmapped.
func keyOf(p netip.Prefix) ipKey {
	a := p.Addr()
	return ipKey{addr: a.As16(), bits: uint8(p.Bits()), v4: a.Is4()}
}

func (k ipKey) prefix() netip.Prefix {
	a := netip.AddrFrom16(k.addr)
	if k.v4 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, int(k.bits))
}

func hostKey(a netip.Addr) ipKey {
	a = a.Unmap()
	return keyOf(netip.PrefixFrom(a, a.BitLen()))
}

// hostTable interns node addresses: pods refer to their host by a 4-byte
// index. Index 0 is the invalid address. Entries are never removed; there
// are as many as nodes ever seen.
type hostTable struct {
	addrs []netip.Addr
	index map[netip.Addr]uint32
}

func (h *hostTable) id(a netip.Addr) uint32 {
	if !a.IsValid() {
		return 0
	}
	if id, ok := h.index[a]; ok {
		return id
	}
	if h.index == nil {
		h.index = make(map[netip.Addr]uint32)
		h.addrs = []netip.Addr{{}}
	}
	id := uint32(len(h.addrs))
	h.addrs = append(h.addrs, a)
	h.index[a] = id
	return id
}

func (h *hostTable) addr(id uint32) netip.Addr {
	if int(id) >= len(h.addrs) {
		return netip.Addr{}
	}
	return h.addrs[id]
}

func newClusterState(name string, local bool) *clusterState {
	return &clusterState{
		name:       name,
		local:      local,
		identities: make(map[protocol.NumericIdentity]identityEntry),
		ipcache:    make(map[ipKey]podEntry),
		maskedKeys: make(map[ipKey]ipKey),
		nodes:      make(map[string]nodeEntry),
		nodeIPs:    make(map[ipKey]string),
		services:   make(map[ServiceName]serviceEntry),
		synced:     make(map[protocol.Kind]bool),
	}
}

// resize counts k coming into (delta 1) or leaving (-1) the merged ipcache.
func (s *State) resize(k ipKey, delta int) {
	s.ipcacheSize += delta
	if k.isHost() {
		s.ipcacheHosts += delta
	}
}

func (k ipKey) isHost() bool { return k.v4 && k.bits == 32 || !k.v4 && k.bits == 128 }

// heldLocked reports whether any cluster holds k, as a pod or a node
// address.
func (s *State) heldLocked(k ipKey) bool {
	for _, cs := range s.order {
		if _, ok := cs.ipcache[k]; ok {
			return true
		}
		if _, ok := cs.nodeIPs[k]; ok {
			return true
		}
	}
	return false
}

// Cluster returns the writer of cluster name's state, creating the cluster
// if needed. The writer implements remotecluster.Handler.
func (s *State) Cluster(name string) *ClusterWriter {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.clusterLocked(name)
	return &ClusterWriter{s: s, name: name}
}

func (s *State) clusterLocked(name string) *clusterState {
	if cs := s.clusters[name]; cs != nil {
		return cs
	}
	cs := newClusterState(name, name == s.cfg.LocalCluster)
	s.clusters[name] = cs
	s.order = append(s.order, cs)
	slices.SortFunc(s.order, func(a, b *clusterState) int {
		if a.local != b.local {
			if a.local {
				return -1
			}
			return 1
		}
		return strings.Compare(a.name, b.name)
	})
	return cs
}

// RemoveCluster withdraws everything cluster name exported. Its writers
// become no-ops until Cluster is called for the name again.
func (s *State) RemoveCluster(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cs := s.clusters[name]
	if cs == nil {
		return
	}
	now := s.cfg.Now()
	delete(s.clusters, name)
	s.order = slices.DeleteFunc(s.order, func(c *clusterState) bool { return c == cs })
	for k := range cs.ipcache {
		if !s.heldLocked(k) {
			s.resize(k, -1)
		}
		s.ipcacheChangedLocked(k, now)
	}
	for k := range cs.nodeIPs {
		if _, pod := cs.ipcache[k]; !pod && !s.heldLocked(k) {
			s.resize(k, -1)
		}
		s.ipcacheChangedLocked(k, now)
	}
	for id := range cs.identities {
		for _, c := range s.identitySubs {
			c.add(id, now)
		}
	}
	for n := range cs.nodes {
		for _, c := range s.nodeSubs {
			c.add(NodeName{name, n}, now)
		}
	}
	for nn := range cs.services {
		s.serviceChangedLocked(nn, now)
	}
	s.syncChangedLocked()
}

// ClusterNames returns the clusters with state, local first.
func (s *State) ClusterNames() []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]string, len(s.order))
	for i, cs := range s.order {
		out[i] = cs.name
	}
	return out
}

// ClusterSummary counts one cluster's state.
type ClusterSummary struct {
	Cluster    string
	Identities int
	IPCache    int
	Nodes      int
	Services   int
	// EverSynced is true once every kind was synced at least once.
	EverSynced bool
	LastChange time.Time
}

// Entries returns the count of kind.
func (c ClusterSummary) Entries(kind protocol.Kind) int {
	switch kind {
	case protocol.KindIdentities:
		return c.Identities
	case protocol.KindIPCache:
		return c.IPCache
	case protocol.KindNodes:
		return c.Nodes
	case protocol.KindServices:
		return c.Services
	}
	return 0
}

// Summary returns the counts of cluster name.
func (s *State) Summary(name string) (ClusterSummary, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.clusters[name]
	if cs == nil {
		return ClusterSummary{}, false
	}
	return ClusterSummary{
		Cluster: name, Identities: len(cs.identities), IPCache: len(cs.ipcache),
		Nodes: len(cs.nodes), Services: len(cs.services), EverSynced: cs.everSynced, LastChange: cs.lastChange,
	}, true
}

// EverSynced reports whether cluster name synced every kind at least once.
func (s *State) EverSynced(name string) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cs := s.clusters[name]
	return cs != nil && cs.everSynced
}

// SyncChanged returns a channel that receives a value whenever a cluster
// first completes its sync or is removed. Capacity 1: wake-ups coalesce.
func (s *State) SyncChanged() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := make(chan struct{}, 1)
	s.syncSubs = append(s.syncSubs, c)
	return c
}

func (s *State) syncChangedLocked() {
	for _, c := range s.syncSubs {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// SubscribeIPCache returns a change set of ipcache prefixes.
func (s *State) SubscribeIPCache() *Changes[netip.Prefix] {
	c := newChanges[netip.Prefix]()
	s.mu.Lock()
	s.ipcacheSubs = append(s.ipcacheSubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeServices returns a change set of global service names.
func (s *State) SubscribeServices() *Changes[ServiceName] {
	c := newChanges[ServiceName]()
	s.mu.Lock()
	s.serviceSubs = append(s.serviceSubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeIdentities returns a change set of identities.
func (s *State) SubscribeIdentities() *Changes[protocol.NumericIdentity] {
	c := newChanges[protocol.NumericIdentity]()
	s.mu.Lock()
	s.identitySubs = append(s.identitySubs, c)
	s.mu.Unlock()
	return c
}

// SubscribeNodes returns a change set of nodes.
func (s *State) SubscribeNodes() *Changes[NodeName] {
	c := newChanges[NodeName]()
	s.mu.Lock()
	s.nodeSubs = append(s.nodeSubs, c)
	s.mu.Unlock()
	return c
}

func (s *State) ipcacheChangedLocked(k ipKey, now time.Time) {
	if len(s.ipcacheSubs) == 0 {
		return
	}
	p := k.prefix()
	for _, c := range s.ipcacheSubs {
		c.add(p, now)
	}
}

func (s *State) serviceChangedLocked(nn ServiceName, now time.Time) {
	for _, c := range s.serviceSubs {
		c.add(nn, now)
	}
}
