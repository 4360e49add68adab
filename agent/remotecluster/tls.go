package remotecluster

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// TLSConfig returns the mutual-TLS client configuration of a clustermesh
// entry: the entry's CA is the only trusted root, and its certificate
// (whose CN is the etcd user) authenticates us.
func TLSConfig(e meshconfig.ClusterEntry) (*tls.Config, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(e.CA) {
		return nil, fmt.Errorf("clustermesh entry %q: the CA file holds no PEM certificate; re-run `isthmus connect` to rewrite the entry", e.Cluster)
	}
	cert, err := tls.X509KeyPair(e.Cert, e.Key)
	if err != nil {
		return nil, fmt.Errorf("clustermesh entry %q: client certificate and key: %w; re-run `isthmus connect` to rewrite the entry", e.Cluster, err)
	}
	return &tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}, nil
}
