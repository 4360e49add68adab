package meshops

import (
	"crypto/x509"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/certs"
)

func TestKeepable(t *testing.T) {
	now := time.Now()
	ca, err := certs.NewCA("a", 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := certs.NewCA("b", 0)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := ca.IssueClient("remote-x", 0)
	foreign, _ := other.IssueClient("remote-x", 0)
	due, _ := ca.Issue(certs.Request{CommonName: "remote-x", NotBefore: now.Add(-70 * 24 * time.Hour), Validity: 100 * 24 * time.Hour})
	server, _ := ca.IssueServer(certs.ServerOptions{DNSNames: []string{"x"}})
	for _, tc := range []struct {
		name      string
		cert, key []byte
		keep      bool
	}{
		{"good", good.CertPEM, good.KeyPEM, true},
		{"missing", nil, nil, false},
		{"garbage", []byte("x"), good.KeyPEM, false},
		{"other key", good.CertPEM, foreign.KeyPEM, false},
		{"other CA", foreign.CertPEM, foreign.KeyPEM, false},
		{"due for renewal", due.CertPEM, due.KeyPEM, false},
		{"server usage", server.CertPEM, server.KeyPEM, false},
	} {
		_, reason := keepable(ca, tc.cert, tc.key, "remote-x", x509.ExtKeyUsageClientAuth, now)
		if (reason == "") != tc.keep {
			t.Errorf("%s: reason %q, want keep=%v", tc.name, reason, tc.keep)
		}
	}
	if _, reason := keepable(ca, good.CertPEM, good.KeyPEM, "remote-y", x509.ExtKeyUsageClientAuth, now); reason == "" {
		t.Error("kept a certificate of another user")
	}
}

func TestServerNames(t *testing.T) {
	n := defaultServerNames()
	n.addEndpointHosts([]string{"https://10.0.0.1:2379", "https://mesh.example:443", "https://[fd00::1]:2379"})
	n.add("10.0.0.1")
	n.add("::ffff:10.0.0.2")
	if !slices.Contains(n.DNS, "isthmus-apiserver.isthmus-system.svc") || !slices.Contains(n.DNS, "mesh.example") {
		t.Errorf("DNS = %v", n.DNS)
	}
	wantIPs := []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback(), netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1"), netip.MustParseAddr("10.0.0.2")}
	if !slices.Equal(n.IPs, wantIPs) {
		t.Errorf("IPs = %v, want %v", n.IPs, wantIPs)
	}
	ca, _ := certs.NewCA("a", 0)
	kp, err := ca.Issue(certs.Request{CommonName: "s", Usage: certs.UsageServer, DNSNames: n.DNS[:2], IPs: n.IPs[:1]})
	if err != nil {
		t.Fatal(err)
	}
	missing := n.missingFrom(kp.Cert)
	if len(missing) != len(n.DNS)-2+len(n.IPs)-1 || slices.Contains(missing, "127.0.0.1") {
		t.Errorf("missing = %v", missing)
	}
	var again serverNames
	again.addCert(kp.Cert)
	if len(again.missingFrom(kp.Cert)) != 0 || len(again.DNS) != 2 || len(again.IPs) != 1 {
		t.Errorf("names of a certificate: %+v", again)
	}
	for s, ok := range map[string]bool{"mesh.example.com": true, "*.example.com": true, "10.1.2.3": true, "fd00::1": true, "": false, "a b": false, "-x.com": false, "https://x": false} {
		if err := validateSAN(s); (err == nil) != ok {
			t.Errorf("validateSAN(%q) = %v", s, err)
		}
	}
}
