package protocol

import (
	"fmt"
	"strings"
	"time"
)

// etcd users of a cluster's mesh etcd (PROTOCOL.md, "Access"). A client
// certificate's common name is its etcd user.
const (
	// RootUser holds etcd's root role; etcd needs it to turn auth on.
	RootUser = "root"
	// RemoteUser is the read-only user remote clusters share.
	RemoteUser = "remote"
)

// AdminUser is the user with full access to cluster's etcd: its apiserver
// and operators.
func AdminUser(cluster string) string { return "admin-" + cluster }

// LocalUser is the read-only user of cluster's own agents.
func LocalUser(cluster string) string { return "local-" + cluster }

// RemoteUserFor is the read-only user that cluster remote reads another
// cluster's etcd with, when each remote gets its own certificate.
func RemoteUserFor(remote string) string { return "remote-" + remote }

// KeyRange is a key, or every key under a prefix, that a read-only user may
// read.
type KeyRange struct {
	Key    string
	Prefix bool
}

func (r KeyRange) String() string {
	if r.Prefix {
		return r.Key + "*"
	}
	return r.Key
}

// Contains reports whether key lies in the range.
func (r KeyRange) Contains(key string) bool {
	if r.Prefix {
		return strings.HasPrefix(key, r.Key)
	}
	return key == r.Key
}

// LocalReadable lists what the local user may read: what Cilium grants its
// local agents (heartbeat, cache, cluster configs, synced canaries) and, in
// Isthmus, the cluster's own state.
func LocalReadable() []KeyRange {
	return []KeyRange{
		{Key: HeartbeatKey},
		{Key: CachePrefix, Prefix: true},
		{Key: ClusterConfigPrefix, Prefix: true},
		{Key: SyncedPrefix, Prefix: true},
		{Key: StatePrefix, Prefix: true},
	}
}

// RemoteReadable lists what remote users may read in cluster's etcd.
func RemoteReadable(cluster string) []KeyRange {
	return []KeyRange{
		{Key: HeartbeatKey},
		{Key: StatePrefix, Prefix: true},
		{Key: ClusterConfigKey(cluster)},
		{Key: SyncedPrefix + cluster + "/", Prefix: true},
	}
}

// EncodeTimestamp is the value of the heartbeat and of synced canaries.
func EncodeTimestamp(t time.Time) []byte { return []byte(t.UTC().Format(time.RFC3339)) }

// DecodeTimestamp decodes a heartbeat or synced canary value.
func DecodeTimestamp(key string, value []byte) (time.Time, error) {
	t, err := time.Parse(time.RFC3339, string(value))
	if err != nil {
		return time.Time{}, fmt.Errorf("%s: value %q is not an RFC 3339 time", key, value)
	}
	// RFC 3339 has four-digit years; an offset can push the UTC time out
	// of them, and EncodeTimestamp could not write it back.
	if y := t.UTC().Year(); y < 0 || y > 9999 {
		return time.Time{}, fmt.Errorf("%s: value %q is out of the RFC 3339 range in UTC", key, value)
	}
	return t, nil
}
