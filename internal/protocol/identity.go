package protocol

import (
	"fmt"
	"slices"
	"strings"
)

// NumericIdentity is a 24-bit security identity. The cluster ID is carried in
// its high bits (see ClusterShift).
type NumericIdentity uint32

// MaxNumericIdentity is the largest numeric identity (24 bits).
const MaxNumericIdentity = 1<<24 - 1

// Reserved identities, shared by every cluster.
const (
	IdentityUnknown       NumericIdentity = 0
	IdentityHost          NumericIdentity = 1
	IdentityWorld         NumericIdentity = 2
	IdentityUnmanaged     NumericIdentity = 3
	IdentityHealth        NumericIdentity = 4
	IdentityInit          NumericIdentity = 5
	IdentityRemoteNode    NumericIdentity = 6
	IdentityKubeAPIServer NumericIdentity = 7
	IdentityIngress       NumericIdentity = 8
)

// MinLocalIdentity is the first identity an apiserver allocates; all below
// are reserved.
const MinLocalIdentity = 256

// IsReserved reports whether id is one of the cluster-independent reserved
// identities.
func (id NumericIdentity) IsReserved() bool { return id < MinLocalIdentity }

// ClusterShift returns the bit position of the cluster ID in a numeric
// identity for the given maxConnectedClusters: 16 for 255, 15 for 511.
func ClusterShift(maxConnected uint32) uint {
	if maxConnected == MaxConnectedClusters511 {
		return 15
	}
	return 16
}

// MaxLocalIdentity is the largest cluster-local part of an identity.
func MaxLocalIdentity(maxConnected uint32) uint32 {
	return 1<<ClusterShift(maxConnected) - 1
}

// ComposeIdentity returns the identity with cluster-local part local in
// cluster clusterID.
func ComposeIdentity(clusterID, local, maxConnected uint32) NumericIdentity {
	return NumericIdentity(clusterID<<ClusterShift(maxConnected) | local)
}

// ClusterID returns the cluster ID carried by id.
func (id NumericIdentity) ClusterID(maxConnected uint32) uint32 {
	return uint32(id) >> ClusterShift(maxConnected)
}

// LocalPart returns the cluster-local part of id.
func (id NumericIdentity) LocalPart(maxConnected uint32) uint32 {
	return uint32(id) & MaxLocalIdentity(maxConnected)
}

// ValidateIdentityCluster reports whether id may be published by cluster
// clusterID: reserved identities may not, and allocated ones must carry the
// cluster's ID.
func ValidateIdentityCluster(id NumericIdentity, clusterID, maxConnected uint32) error {
	if id > MaxNumericIdentity {
		return fmt.Errorf("identity %d exceeds 24 bits", id)
	}
	if id.IsReserved() {
		return fmt.Errorf("identity %d is reserved and cannot be exported by a cluster", id)
	}
	if got := id.ClusterID(maxConnected); got != clusterID {
		return fmt.Errorf("identity %d carries cluster ID %d, not %d", id, got, clusterID)
	}
	if id.LocalPart(maxConnected) < MinLocalIdentity {
		return fmt.Errorf("identity %d has local part %d below the first allocatable identity %d", id, id.LocalPart(maxConnected), MinLocalIdentity)
	}
	return nil
}

// Label sources.
const (
	SourceK8s      = "k8s"
	SourceReserved = "reserved"
)

// Label is one security label, written "source:key=value".
type Label struct {
	Source string
	Key    string
	Value  string
}

func (l Label) String() string { return l.Source + ":" + l.Key + "=" + l.Value }

// Labels is a set of security labels, kept sorted by source and key with no
// duplicate (source, key). Build one with NewLabels or ParseLabels.
type Labels []Label

// NewLabels returns the sorted, de-duplicated set of ls. A later label with
// the same source and key replaces an earlier one.
func NewLabels(ls ...Label) Labels {
	out := make(Labels, 0, len(ls))
	for _, l := range ls {
		i, found := slices.BinarySearchFunc(out, l, compareLabelKey)
		if found {
			out[i] = l
			continue
		}
		out = slices.Insert(out, i, l)
	}
	return out
}

// K8sLabels returns a set of k8s-source labels from a key/value map.
func K8sLabels(m map[string]string) Labels {
	ls := make([]Label, 0, len(m))
	for k, v := range m {
		ls = append(ls, Label{Source: SourceK8s, Key: k, Value: v})
	}
	return NewLabels(ls...)
}

func compareLabelKey(a, b Label) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return strings.Compare(a.Source, b.Source)
}

// String returns the identity value form: each label followed by ';'.
func (ls Labels) String() string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.String())
		b.WriteByte(';')
	}
	return b.String()
}

// Get returns the value of key in the k8s source.
func (ls Labels) Get(key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && l.Source == SourceK8s {
			return l.Value, true
		}
	}
	return "", false
}

// Map returns the labels as key to value, dropping the source. It is the form
// label selectors match against.
func (ls Labels) Map() map[string]string {
	m := make(map[string]string, len(ls))
	for _, l := range ls {
		m[l.Key] = l.Value
	}
	return m
}

// Equal reports whether two label sets are the same.
func (ls Labels) Equal(o Labels) bool { return slices.Equal(ls, o) }

// ParseLabels parses the identity value form "src:key=value;src:key=value;".
func ParseLabels(s string) (Labels, error) {
	var ls []Label
	for part := range strings.SplitSeq(s, ";") {
		if part == "" {
			continue
		}
		src, kv, ok := strings.Cut(part, ":")
		if !ok || src == "" {
			return nil, fmt.Errorf("label %q has no source (want source:key=value)", part)
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("label %q has no key=value (want source:key=value)", part)
		}
		ls = append(ls, Label{Source: src, Key: k, Value: v})
	}
	if len(ls) == 0 {
		return nil, fmt.Errorf("identity value %q holds no labels", s)
	}
	return NewLabels(ls...), nil
}

// Identity is a numeric identity with the labels it stands for, as published
// under cilium/state/identities/v1/id/<id>.
type Identity struct {
	ID     NumericIdentity
	Labels Labels
}

// Encode returns the identity's value.
func (i Identity) Encode() []byte { return []byte(i.Labels.String()) }

// DecodeIdentity decodes and validates an identity key and value published
// by cluster (name and ID). ok is false for keys that are not identity keys
// and must be ignored.
func DecodeIdentity(cluster string, clusterID, maxConnected uint32, key string, value []byte) (id Identity, ok bool, err error) {
	n, ok, err := ParseIdentityKey(key)
	if !ok || err != nil {
		return Identity{}, ok, err
	}
	if err := ValidateIdentityCluster(n, clusterID, maxConnected); err != nil {
		return Identity{}, true, fmt.Errorf("identity key %q: %w", key, err)
	}
	ls, err := ParseLabels(string(value))
	if err != nil {
		return Identity{}, true, fmt.Errorf("identity %d: %w", n, err)
	}
	if c, found := ls.Get(LabelPolicyCluster); found && c != cluster {
		return Identity{}, true, fmt.Errorf("identity %d: cluster label %q does not match cluster %q", n, c, cluster)
	}
	return Identity{ID: n, Labels: ls}, true, nil
}
