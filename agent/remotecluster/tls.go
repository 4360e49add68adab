package remotecluster

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// checkEndpoints reports an entry whose endpoints are not https URLs with
// a host and port: a malformed one would otherwise only show as a
// connection that never comes up.
func checkEndpoints(e meshconfig.ClusterEntry) error {
	for _, ep := range e.Endpoints {
		u, err := url.Parse(ep)
		if err == nil && u.Scheme == "https" && u.Path == "" {
			if host, port, err := net.SplitHostPort(u.Host); err == nil && host != "" {
				if _, err := strconv.ParseUint(port, 10, 16); err == nil {
					continue
				}
			}
		}
		return fmt.Errorf("clustermesh entry %q: endpoint %q is not an https://host:port URL; the mesh etcd is reached over TLS. Fix it with `isthmus connect`", e.Cluster, ep)
	}
	return nil
}

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
