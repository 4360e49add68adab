package protocol

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Key prefixes of the protocol. Prefixes that end in a slash are followed by
// the rest of the key; the others name a prefix in the synced canaries.
const (
	ClusterConfigPrefix = "cilium/cluster-config/"
	HeartbeatKey        = "cilium/.heartbeat"
	SyncedPrefix        = "cilium/synced/"
	StatePrefix         = "cilium/state/"
	CachePrefix         = "cilium/cache/"

	IdentitiesPrefix = "cilium/state/identities/v1/"
	IdentityIDPrefix = IdentitiesPrefix + "id/"
	// IPCachePrefix is the ipcache of the default address space, the only
	// one ClusterMesh uses.
	IPCachePrefix  = "cilium/state/ip/v1/default/"
	NodesPrefix    = "cilium/state/nodes/v1/"
	ServicesPrefix = "cilium/state/services/v1/"
)

// Kind names one of the exported state prefixes.
type Kind string

// The exported kinds, in the order an exporter completes them.
const (
	KindNodes      Kind = "nodes"
	KindServices   Kind = "services"
	KindIdentities Kind = "identities"
	KindIPCache    Kind = "ipcache"
)

// Kinds lists every exported kind.
var Kinds = []Kind{KindNodes, KindServices, KindIdentities, KindIPCache}

// syncedName is the prefix name a synced canary carries for each kind.
var syncedName = map[Kind]string{
	KindNodes:      "cilium/state/nodes/v1",
	KindServices:   "cilium/state/services/v1",
	KindIdentities: "cilium/state/identities/v1",
	KindIPCache:    "cilium/state/ip/v1",
}

// ClusterConfigKey is the key of cluster's config.
func ClusterConfigKey(cluster string) string { return ClusterConfigPrefix + cluster }

// SyncedKey is the canary that marks the initial export of kind by cluster
// as complete.
func SyncedKey(cluster string, kind Kind) string {
	return SyncedPrefix + cluster + "/" + syncedName[kind]
}

// WatchPrefix is the prefix a reader lists and watches for kind in cluster's
// etcd. Nodes and services are scoped by cluster name; identities and the
// ipcache are not, since each cluster's etcd holds only its own.
func WatchPrefix(cluster string, kind Kind) string {
	switch kind {
	case KindNodes:
		return NodesPrefix + cluster + "/"
	case KindServices:
		return ServicesPrefix + cluster + "/"
	case KindIdentities:
		return IdentitiesPrefix
	case KindIPCache:
		return IPCachePrefix
	}
	panic(fmt.Sprintf("protocol: unknown kind %q", kind))
}

// IdentityKey is the key of a numeric identity.
func IdentityKey(id NumericIdentity) string {
	return IdentityIDPrefix + strconv.FormatUint(uint64(id), 10)
}

// ParseIdentityKey returns the identity a key names. ok is false for keys
// under the identities prefix that are not "id/<n>" keys (Cilium's kvstore
// allocator keeps other keys there), which readers ignore without counting.
func ParseIdentityKey(key string) (id NumericIdentity, ok bool, err error) {
	rest, found := strings.CutPrefix(key, IdentityIDPrefix)
	if !found {
		return 0, false, nil
	}
	n, err := strconv.ParseUint(rest, 10, 32)
	if err != nil || n == 0 || n > MaxNumericIdentity {
		return 0, true, fmt.Errorf("identity key %q: %q is not a numeric identity between 1 and %d", key, rest, MaxNumericIdentity)
	}
	return NumericIdentity(n), true, nil
}

// IPCacheKey is the key of the ipcache entry of addr.
func IPCacheKey(addr netip.Addr) string { return IPCachePrefix + addr.String() }

// ParseIPCacheKey returns the address an ipcache key names.
func ParseIPCacheKey(key string) (netip.Addr, error) {
	rest, found := strings.CutPrefix(key, IPCachePrefix)
	if !found {
		return netip.Addr{}, fmt.Errorf("ipcache key %q does not start with %q", key, IPCachePrefix)
	}
	addr, err := netip.ParseAddr(rest)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipcache key %q: %w", key, err)
	}
	return addr, nil
}

// NodeKey is the key of node in cluster.
func NodeKey(cluster, node string) string { return NodesPrefix + cluster + "/" + node }

// ParseNodeKey returns the cluster and node name of a node key.
func ParseNodeKey(key string) (cluster, node string, err error) {
	rest, found := strings.CutPrefix(key, NodesPrefix)
	cluster, node, split := strings.Cut(rest, "/")
	if !found || !split || cluster == "" || node == "" || strings.Contains(node, "/") {
		return "", "", fmt.Errorf("node key %q is not of the form %s<cluster>/<node>", key, NodesPrefix)
	}
	return cluster, node, nil
}

// ServiceKey is the key of service namespace/name in cluster.
func ServiceKey(cluster, namespace, name string) string {
	return ServicesPrefix + cluster + "/" + namespace + "/" + name
}

// ParseServiceKey returns the parts of a service key.
func ParseServiceKey(key string) (cluster, namespace, name string, err error) {
	rest, found := strings.CutPrefix(key, ServicesPrefix)
	parts := strings.Split(rest, "/")
	if !found || len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("service key %q is not of the form %s<cluster>/<namespace>/<name>", key, ServicesPrefix)
	}
	return parts[0], parts[1], parts[2], nil
}
