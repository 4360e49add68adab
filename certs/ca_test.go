package certs

import (
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestIssueServerAndClient(t *testing.T) {
	ca, err := NewCA("isthmus-ca-c1", 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.IssueServer(ServerOptions{
		DNSNames: []string{"mesh.c1.example"},
		IPs:      []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")},
		Validity: time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := ca.IssueClient("remote-c2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if got := srv.Cert.Subject.CommonName; got != ServerCommonName {
		t.Errorf("server CN = %q", got)
	}
	if got := cli.Cert.Subject.CommonName; got != "remote-c2" {
		t.Errorf("client CN = %q", got)
	}
	for _, name := range []string{"mesh.c1.example", "127.0.0.1", "::1"} {
		if err := srv.Cert.VerifyHostname(name); err != nil {
			t.Errorf("server certificate not valid for %s: %v", name, err)
		}
	}
	if err := srv.Cert.VerifyHostname("other.example"); err == nil {
		t.Error("server certificate valid for a name it was not issued for")
	}
	verify := func(kp *KeyPair, usage x509.ExtKeyUsage) error {
		_, err := kp.Cert.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{usage}})
		return err
	}
	if err := verify(srv, x509.ExtKeyUsageServerAuth); err != nil {
		t.Errorf("server certificate: %v", err)
	}
	if err := verify(cli, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if err := verify(cli, x509.ExtKeyUsageServerAuth); err == nil {
		t.Error("client certificate passes as a server certificate")
	}
	if d := srv.Cert.NotAfter.Sub(srv.Cert.NotBefore); d != time.Hour {
		t.Errorf("server certificate validity %v, want 1h", d)
	}
	if _, err := srv.TLSCertificate(); err != nil {
		t.Errorf("server key pair: %v", err)
	}

	// LoadCA gives back a CA that issues certificates the original trusts.
	again, err := LoadCA(ca.CertPEM(), ca.KeyPEM())
	if err != nil {
		t.Fatal(err)
	}
	kp, err := again.IssueClient("admin-c1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := verify(kp, x509.ExtKeyUsageClientAuth); err != nil {
		t.Errorf("certificate of the loaded CA: %v", err)
	}
	if !kp.Cert.NotAfter.After(time.Now().Add(300 * 24 * time.Hour)) {
		t.Errorf("default validity ends %v", kp.Cert.NotAfter)
	}
}

func TestIssueRejectsBadRequests(t *testing.T) {
	ca, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.IssueServer(ServerOptions{}); err == nil || !strings.Contains(err.Error(), "no DNS name or IP") {
		t.Errorf("server certificate without names: %v", err)
	}
	if _, err := ca.IssueClient("", 0); err == nil {
		t.Error("client certificate without user issued")
	}
	if _, err := ca.IssueClient("u", -time.Hour); err == nil {
		t.Error("negative validity accepted")
	}
	if _, err := NewCA("", 0); err == nil {
		t.Error("CA without name created")
	}
	// Certificates never outlive the CA.
	kp, err := ca.IssueClient("u", 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if kp.Cert.NotAfter.After(ca.Certificate().NotAfter) {
		t.Errorf("certificate ends %v after its CA %v", kp.Cert.NotAfter, ca.Certificate().NotAfter)
	}
}

func TestLoadCARejectsMismatch(t *testing.T) {
	a, err := NewCA("a", 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewCA("b", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(a.CertPEM(), b.KeyPEM()); err == nil || !strings.Contains(err.Error(), "does not belong") {
		t.Errorf("LoadCA with another CA's key: %v", err)
	}
	leaf, err := a.IssueClient("u", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(leaf.CertPEM, leaf.KeyPEM); err == nil || !strings.Contains(err.Error(), "not a CA") {
		t.Errorf("LoadCA with a leaf certificate: %v", err)
	}
	if _, err := LoadCA([]byte("junk"), a.KeyPEM()); err == nil {
		t.Error("LoadCA accepted junk")
	}
}

func TestPEM(t *testing.T) {
	a, _ := NewCA("a", 0)
	b, _ := NewCA("b", 0)
	bundle := append(append([]byte("leading text\n"), a.CertPEM()...), b.CertPEM()...)
	certs, err := ParseCertificates(bundle)
	if err != nil || len(certs) != 2 || certs[0].Subject.CommonName != "a" || certs[1].Subject.CommonName != "b" {
		t.Fatalf("ParseCertificates = %v, %v", certs, err)
	}
	if _, err := ParseCertificates([]byte("no pem")); err == nil {
		t.Error("ParseCertificates accepted no PEM")
	}
	if _, err := ParsePrivateKey(a.CertPEM()); err == nil {
		t.Error("ParsePrivateKey accepted a certificate")
	}
	k, err := ParsePrivateKey(a.KeyPEM())
	if err != nil || !publicKeysEqual(k.Public(), a.Certificate().PublicKey) {
		t.Errorf("ParsePrivateKey = %v", err)
	}
}
