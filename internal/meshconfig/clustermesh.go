package meshconfig

import (
	"errors"
	"fmt"
	"maps"
	"path"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Suffixes of the per-cluster files in the clustermesh Secret.
const (
	suffixCA   = ".etcd-client-ca.crt"
	suffixCert = ".etcd-client.crt"
	suffixKey  = ".etcd-client.key"
)

// EtcdClientConfig is the YAML etcd client config of one Secret entry, in
// the shape etcd and Cilium use.
type EtcdClientConfig struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file"`
	CertFile      string   `json:"cert-file"`
	KeyFile       string   `json:"key-file"`
}

// ClusterEntry is everything needed to reach one cluster's mesh etcd.
type ClusterEntry struct {
	Cluster   string
	Endpoints []string
	CA        []byte // PEM, the cluster's mesh CA
	Cert      []byte // PEM client certificate signed by that CA
	Key       []byte // PEM private key of Cert
}

// Equal reports whether two entries are the same.
func (e ClusterEntry) Equal(o ClusterEntry) bool {
	return e.Cluster == o.Cluster && slices.Equal(e.Endpoints, o.Endpoints) &&
		string(e.CA) == string(o.CA) && string(e.Cert) == string(o.Cert) && string(e.Key) == string(o.Key)
}

// EntryKeys returns the Secret data keys that belong to cluster.
func EntryKeys(cluster string) []string {
	return []string{cluster, cluster + suffixCA, cluster + suffixCert, cluster + suffixKey}
}

// PutEntry writes e into Secret data, replacing any earlier entry of the
// same cluster.
func PutEntry(data map[string][]byte, e ClusterEntry) error {
	if err := protocol.ValidateClusterName(e.Cluster); err != nil {
		return err
	}
	if len(e.Endpoints) == 0 {
		return fmt.Errorf("cluster %q: no mesh endpoints", e.Cluster)
	}
	cfg := EtcdClientConfig{
		Endpoints:     e.Endpoints,
		TrustedCAFile: path.Join(ClusterMeshMountDir, e.Cluster+suffixCA),
		CertFile:      path.Join(ClusterMeshMountDir, e.Cluster+suffixCert),
		KeyFile:       path.Join(ClusterMeshMountDir, e.Cluster+suffixKey),
	}
	y, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encode etcd config of %q: %w", e.Cluster, err)
	}
	data[e.Cluster] = y
	data[e.Cluster+suffixCA] = e.CA
	data[e.Cluster+suffixCert] = e.Cert
	data[e.Cluster+suffixKey] = e.Key
	return nil
}

// DeleteEntry removes cluster's entry from Secret data.
func DeleteEntry(data map[string][]byte, cluster string) {
	for _, k := range EntryKeys(cluster) {
		delete(data, k)
	}
}

// ParseEntries reads every cluster entry of the clustermesh Secret. An entry
// that cannot be used is left out and reported in errs, naming the cluster
// and what is wrong; the others are returned.
func ParseEntries(data map[string][]byte) (entries map[string]ClusterEntry, errs []error) {
	entries = make(map[string]ClusterEntry)
	for _, k := range slices.Sorted(maps.Keys(data)) {
		if strings.Contains(k, ".") {
			continue // a file of some entry
		}
		e, err := parseEntry(data, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		entries[k] = e
	}
	return entries, errs
}

func parseEntry(data map[string][]byte, cluster string) (ClusterEntry, error) {
	if err := protocol.ValidateClusterName(cluster); err != nil {
		return ClusterEntry{}, fmt.Errorf("clustermesh entry %q: %w", cluster, err)
	}
	var cfg EtcdClientConfig
	if err := yaml.UnmarshalStrict(data[cluster], &cfg); err != nil {
		return ClusterEntry{}, fmt.Errorf("clustermesh entry %q: decode etcd config: %w", cluster, err)
	}
	if len(cfg.Endpoints) == 0 {
		return ClusterEntry{}, fmt.Errorf("clustermesh entry %q: etcd config lists no endpoints", cluster)
	}
	file := func(what, p string) ([]byte, error) {
		if p == "" {
			return nil, fmt.Errorf("clustermesh entry %q: etcd config has no %s", cluster, what)
		}
		b, ok := data[path.Base(p)]
		if !ok || len(b) == 0 {
			return nil, fmt.Errorf("clustermesh entry %q: %s %q is not in the Secret", cluster, what, path.Base(p))
		}
		return b, nil
	}
	e := ClusterEntry{Cluster: cluster, Endpoints: cfg.Endpoints}
	var err1, err2, err3 error
	e.CA, err1 = file("trusted-ca-file", cfg.TrustedCAFile)
	e.Cert, err2 = file("cert-file", cfg.CertFile)
	e.Key, err3 = file("key-file", cfg.KeyFile)
	if err := errors.Join(err1, err2, err3); err != nil {
		return ClusterEntry{}, err
	}
	return e, nil
}
