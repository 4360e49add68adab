package meshops

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// MeshConfig is a cluster's place in the mesh, as its isthmus-config
// ConfigMap records it.
type MeshConfig struct {
	ClusterName          string   `json:"clusterName"`
	ClusterID            uint32   `json:"clusterID"`
	MaxConnectedClusters uint32   `json:"maxConnectedClusters"`
	MeshEndpoints        []string `json:"meshEndpoints,omitempty"`
}

// ParseMeshConfig reads the data of an isthmus-config ConfigMap. A missing
// max-connected-clusters means 255, as in ClusterMesh.
func ParseMeshConfig(data map[string]string) (MeshConfig, error) {
	var errs []error
	mc := MeshConfig{ClusterName: data[meshconfig.KeyClusterName], MaxConnectedClusters: protocol.MaxConnectedClusters255}
	if err := protocol.ValidateClusterName(mc.ClusterName); err != nil {
		errs = append(errs, fmt.Errorf("%s: %w", meshconfig.KeyClusterName, err))
	}
	if s, ok := data[meshconfig.KeyMaxConnectedClusters]; ok {
		m, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %q is not a number", meshconfig.KeyMaxConnectedClusters, s))
		}
		mc.MaxConnectedClusters = uint32(m)
	}
	maxErr := protocol.ValidateMaxConnectedClusters(mc.MaxConnectedClusters)
	if maxErr != nil {
		errs = append(errs, fmt.Errorf("%s: %w", meshconfig.KeyMaxConnectedClusters, maxErr))
	}
	id, err := strconv.ParseUint(strings.TrimSpace(data[meshconfig.KeyClusterID]), 10, 32)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: %q is not a number", meshconfig.KeyClusterID, data[meshconfig.KeyClusterID]))
	} else {
		mc.ClusterID = uint32(id)
		if err := protocol.ValidateClusterID(mc.ClusterID, mc.MaxConnectedClusters); err != nil && maxErr == nil {
			errs = append(errs, fmt.Errorf("%s: %w", meshconfig.KeyClusterID, err))
		}
	}
	for _, ep := range strings.Split(data[meshconfig.KeyMeshEndpoints], ",") {
		if ep = strings.TrimSpace(ep); ep == "" {
			continue
		}
		if err := ValidateMeshEndpoint(ep); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", meshconfig.KeyMeshEndpoints, err))
			continue
		}
		mc.MeshEndpoints = append(mc.MeshEndpoints, ep)
	}
	return mc, errors.Join(errs...)
}

// data returns the ConfigMap keys mc sets.
func (mc MeshConfig) data() map[string]string {
	d := map[string]string{
		meshconfig.KeyClusterName:          mc.ClusterName,
		meshconfig.KeyClusterID:            strconv.FormatUint(uint64(mc.ClusterID), 10),
		meshconfig.KeyMaxConnectedClusters: strconv.FormatUint(uint64(mc.MaxConnectedClusters), 10),
	}
	if len(mc.MeshEndpoints) > 0 {
		d[meshconfig.KeyMeshEndpoints] = strings.Join(mc.MeshEndpoints, ",")
	}
	return d
}

// ValidateMeshEndpoint reports whether ep can be a mesh endpoint: an https
// URL with a host and nothing after it.
func ValidateMeshEndpoint(ep string) error {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "https" || u.Hostname() == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("mesh endpoint %q is not an https URL of the form https://host:port; the mesh etcd is only reached over TLS", ep)
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("mesh endpoint %q: port %q is not a port number", ep, p)
		}
	}
	return nil
}

// dnsNameRE matches a DNS name of RFC 1123 labels; wildcards are allowed
// in the first label, as certificates allow.
var dnsNameRE = regexp.MustCompile(`^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([-a-zA-Z0-9]{0,61}[a-zA-Z0-9])?)*$`)
