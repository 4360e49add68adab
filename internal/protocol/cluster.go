package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
)

// MaxClusterNameLength is the longest cluster name the mesh accepts.
const MaxClusterNameLength = 32

// Supported values of maxConnectedClusters. The value decides how many bits
// of a numeric identity carry the cluster ID.
const (
	MaxConnectedClusters255 = 255
	MaxConnectedClusters511 = 511
)

var clusterNameRE = regexp.MustCompile(`^([a-z0-9][-a-z0-9]*)?[a-z0-9]$`)

// ErrInvalidCluster is wrapped by every cluster name and ID validation error.
var ErrInvalidCluster = errors.New("invalid cluster")

// ValidateClusterName reports whether name may be used as a mesh cluster name.
func ValidateClusterName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: cluster name is empty; choose a name of lower-case letters, digits and '-'", ErrInvalidCluster)
	case len(name) > MaxClusterNameLength:
		return fmt.Errorf("%w: cluster name %q is %d characters long; at most %d are allowed", ErrInvalidCluster, name, len(name), MaxClusterNameLength)
	case !clusterNameRE.MatchString(name):
		return fmt.Errorf("%w: cluster name %q must consist of lower-case letters, digits and '-', and start and end with a letter or digit", ErrInvalidCluster, name)
	}
	return nil
}

// ValidateMaxConnectedClusters reports whether m is a supported value.
func ValidateMaxConnectedClusters(m uint32) error {
	if m != MaxConnectedClusters255 && m != MaxConnectedClusters511 {
		return fmt.Errorf("%w: maxConnectedClusters is %d; it must be %d or %d", ErrInvalidCluster, m, MaxConnectedClusters255, MaxConnectedClusters511)
	}
	return nil
}

// ValidateClusterID reports whether id is a usable cluster ID when the mesh
// allows maxConnected clusters. ID 0 is reserved.
func ValidateClusterID(id, maxConnected uint32) error {
	if err := ValidateMaxConnectedClusters(maxConnected); err != nil {
		return err
	}
	if id < 1 || id > maxConnected {
		return fmt.Errorf("%w: cluster ID %d is out of range; it must be between 1 and %d (0 is reserved)", ErrInvalidCluster, id, maxConnected)
	}
	return nil
}

// ClusterConfig is the value of cilium/cluster-config/<cluster>.
type ClusterConfig struct {
	ID           uint32              `json:"id"`
	Capabilities ClusterCapabilities `json:"capabilities"`
}

// ClusterCapabilities says which protocol features a cluster's apiserver
// offers.
type ClusterCapabilities struct {
	SyncedCanaries        bool   `json:"syncedCanaries"`
	MaxConnectedClusters  uint32 `json:"maxConnectedClusters"`
	ServiceExportsEnabled bool   `json:"serviceExportsEnabled"`
	// Cached is set by KVStoreMesh-style caches; Isthmus apiservers leave it
	// out.
	Cached bool `json:"cached,omitempty"`
}

// NewClusterConfig returns the config an Isthmus apiserver publishes.
func NewClusterConfig(id, maxConnected uint32) ClusterConfig {
	return ClusterConfig{
		ID: id,
		Capabilities: ClusterCapabilities{
			SyncedCanaries:       true,
			MaxConnectedClusters: maxConnected,
		},
	}
}

// Encode returns the JSON value of the config.
func (c ClusterConfig) Encode() []byte { return mustMarshal(c) }

// DecodeClusterConfig decodes and validates the cluster-config value of
// cluster name.
func DecodeClusterConfig(name string, value []byte) (ClusterConfig, error) {
	var c ClusterConfig
	if err := json.Unmarshal(value, &c); err != nil {
		return ClusterConfig{}, fmt.Errorf("decode cluster config of %q: %w", name, err)
	}
	// Peers that predate the capability report 0; ClusterMesh treats that as
	// the default of 255.
	if c.Capabilities.MaxConnectedClusters == 0 {
		c.Capabilities.MaxConnectedClusters = MaxConnectedClusters255
	}
	if err := ValidateClusterID(c.ID, c.Capabilities.MaxConnectedClusters); err != nil {
		return ClusterConfig{}, fmt.Errorf("cluster config of %q: %w", name, err)
	}
	return c, nil
}

func mustMarshal(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Only reachable with a programming error in a protocol type.
		panic(fmt.Sprintf("protocol: marshal %T: %v", v, err))
	}
	return b
}
