package meshtest

import (
	"net/netip"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
)

// CA is a throwaway mesh CA for one test cluster.
type CA struct {
	*certs.CA
	CertPEM []byte
}

// NewCA returns a fresh CA named cn.
func NewCA(tb testing.TB, cn string) *CA {
	tb.Helper()
	ca, err := certs.NewCA(cn, 24*time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return &CA{CA: ca, CertPEM: ca.CertPEM()}
}

// Issue returns a PEM certificate and key with common name cn. Server
// certificates are valid for localhost and 127.0.0.1; client certificates
// authenticate etcd user cn.
func (ca *CA) Issue(tb testing.TB, cn string, server bool) (certPEM, keyPEM []byte) {
	tb.Helper()
	var kp *certs.KeyPair
	var err error
	if server {
		kp, err = ca.IssueServer(certs.ServerOptions{CommonName: cn, DNSNames: []string{"localhost"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	} else {
		kp, err = ca.IssueClient(cn, time.Hour)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return kp.CertPEM, kp.KeyPEM
}
