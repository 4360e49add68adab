package certs

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// tlsServer accepts TLS connections with cfg and reports the client
// certificate's common name of each accepted connection.
type tlsServer struct {
	addr    string
	clients chan string
}

func startTLSServer(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsServer{addr: l.Addr().String(), clients: make(chan string, 16)}
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tc := tls.Server(c, cfg)
			if err := tc.Handshake(); err != nil {
				c.Close()
				continue
			}
			cn := ""
			if pc := tc.ConnectionState().PeerCertificates; len(pc) > 0 {
				cn = pc[0].Subject.CommonName
			}
			s.clients <- cn
			tc.Write([]byte("ok"))
			tc.Close()
		}
	}()
	return s
}

// dial connects with cfg and returns the server certificate's serial, or
// the error that ended the exchange.
func (s *tlsServer) dial(cfg *tls.Config) (serial string, err error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", s.addr, cfg)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// With TLS 1.3 a refused client certificate only shows on the first read.
	if _, err := io.ReadAll(c); err != nil {
		return "", err
	}
	return c.ConnectionState().PeerCertificates[0].SerialNumber.String(), nil
}

type pairFiles struct{ cert, key string }

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	// Rotate like a Kubernetes Secret volume: write aside, then rename.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func writePair(t *testing.T, f pairFiles, kp *KeyPair) {
	writeFile(t, f.cert, kp.CertPEM)
	writeFile(t, f.key, kp.KeyPEM)
}

func mustCA(t *testing.T, name string) *CA {
	t.Helper()
	ca, err := NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// issuer returns a function that unwraps an Issue result, failing t on error.
func issuer(t *testing.T) func(*KeyPair, error) *KeyPair {
	return func(kp *KeyPair, err error) *KeyPair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
}

func localServer(t *testing.T, ca *CA) *KeyPair {
	return issuer(t)(ca.IssueServer(ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, DNSNames: []string{"localhost"}}))
}

func TestFileSourceServesRotatedFiles(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := mustCA(t, "ca1"), mustCA(t, "ca2")
	srvFiles := pairFiles{filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")}
	clientCA := filepath.Join(dir, "client-ca.crt")
	mustIssue := issuer(t)
	srv1 := localServer(t, ca1)
	writePair(t, srvFiles, srv1)
	writeFile(t, clientCA, ca1.CertPEM())

	src, err := NewFileSource(FileSourceConfig{CertFile: srvFiles.cert, KeyFile: srvFiles.key, CAFile: clientCA})
	if err != nil {
		t.Fatal(err)
	}
	srvCfg, err := src.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	s := startTLSServer(t, srvCfg)

	client := func(ca *CA, kp *KeyPair) *tls.Config {
		c, err := kp.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: []tls.Certificate{c}}
	}
	admin1 := mustIssue(ca1.IssueClient("admin-c1", time.Hour))
	expect := func(cfg *tls.Config, wantSerial string, wantCN string) {
		t.Helper()
		serial, err := s.dial(cfg)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		if serial != wantSerial {
			t.Fatalf("server presented serial %s, want %s", serial, wantSerial)
		}
		if cn := <-s.clients; cn != wantCN {
			t.Fatalf("server saw client %q, want %q", cn, wantCN)
		}
	}
	refused := func(cfg *tls.Config, why string) {
		t.Helper()
		if _, err := s.dial(cfg); err == nil {
			t.Fatalf("%s: connection accepted", why)
		}
	}

	expect(client(ca1, admin1), srv1.Cert.SerialNumber.String(), "admin-c1")

	// A client certificate of another CA, and an expired one, are refused.
	refused(client(ca1, mustIssue(ca2.IssueClient("admin-c1", time.Hour))), "certificate of another CA")
	expired := mustIssue(ca1.Issue(Request{CommonName: "admin-c1", NotBefore: time.Now().Add(-2 * time.Hour), Validity: time.Hour}))
	refused(client(ca1, expired), "expired certificate")
	refused(&tls.Config{RootCAs: ca1.Pool(), ServerName: "127.0.0.1"}, "no client certificate")

	// A rotated server certificate is presented to the next connection.
	srv2 := localServer(t, ca1)
	writePair(t, srvFiles, srv2)
	expect(client(ca1, admin1), srv2.Cert.SerialNumber.String(), "admin-c1")

	// Half a rotation (new certificate, old key) keeps the last good pair.
	srv3 := localServer(t, ca1)
	writeFile(t, srvFiles.cert, srv3.CertPEM)
	expect(client(ca1, admin1), srv2.Cert.SerialNumber.String(), "admin-c1")
	if err := src.Err(); err == nil || !strings.Contains(err.Error(), srvFiles.cert) {
		t.Fatalf("Err after half a rotation = %v, want it to name %s", err, srvFiles.cert)
	}
	writeFile(t, srvFiles.key, srv3.KeyPEM)
	expect(client(ca1, admin1), srv3.Cert.SerialNumber.String(), "admin-c1")
	if err := src.Err(); err != nil {
		t.Fatalf("Err after the rotation completed = %v", err)
	}

	// A rotated client CA file: only certificates of the new CA get in.
	writeFile(t, clientCA, ca2.CertPEM())
	refused(client(ca1, admin1), "certificate of the replaced CA")
	expect(client(ca1, mustIssue(ca2.IssueClient("remote", time.Hour))), srv3.Cert.SerialNumber.String(), "remote")
}

func TestFileSourceClientRotation(t *testing.T) {
	dir := t.TempDir()
	ca1, ca2 := mustCA(t, "ca1"), mustCA(t, "ca2")
	srvTLS := func(ca *CA) *tls.Config {
		c, err := localServer(t, ca).TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		pool := ca1.Pool()
		pool.AddCert(ca2.Certificate())
		return &tls.Config{Certificates: []tls.Certificate{c}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	}
	s1 := startTLSServer(t, srvTLS(ca1))
	s2 := startTLSServer(t, srvTLS(ca2))

	mustIssue := issuer(t)
	files := pairFiles{filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key")}
	caFile := filepath.Join(dir, "ca.crt")
	writePair(t, files, mustIssue(ca1.IssueClient("local-c1", time.Hour)))
	writeFile(t, caFile, ca1.CertPEM())
	src, err := NewFileSource(FileSourceConfig{CertFile: files.cert, KeyFile: files.key, CAFile: caFile})
	if err != nil {
		t.Fatal(err)
	}
	byName := src.ClientConfig("127.0.0.1")
	if _, err := s1.dial(byName); err != nil {
		t.Fatalf("dial: %v", err)
	}
	if cn := <-s1.clients; cn != "local-c1" {
		t.Fatalf("server saw %q", cn)
	}
	// A server of a CA the client does not trust is refused.
	var verr *tls.CertificateVerificationError
	if _, err := s2.dial(byName); !errors.As(err, &verr) {
		t.Fatalf("dial to an untrusted server: %v, want a verification error", err)
	}
	// The certificate is valid for 127.0.0.1 and localhost only.
	if _, err := s1.dial(src.ClientConfig("mesh.example")); !errors.As(err, &verr) {
		t.Fatalf("dial with a name the server certificate lacks: %v", err)
	}

	// Rotated client certificate and CA file: the same config uses them.
	writePair(t, files, mustIssue(ca2.IssueClient("local-c1-rotated", time.Hour)))
	writeFile(t, caFile, ca2.CertPEM())
	if _, err := s2.dial(byName); err != nil {
		t.Fatalf("dial after rotation: %v", err)
	}
	if cn := <-s2.clients; cn != "local-c1-rotated" {
		t.Fatalf("server saw %q after rotation", cn)
	}
	if _, err := s1.dial(byName); !errors.As(err, &verr) {
		t.Fatalf("dial to the server of the replaced CA: %v", err)
	}

	// Without a server name, the CAs are those of the call: a rotated CA
	// file needs a new config.
	snapshot := src.ClientConfig("")
	if _, err := s2.dial(snapshot); err != nil {
		t.Fatalf("dial without server name: %v", err)
	}
	<-s2.clients
	writeFile(t, caFile, ca1.CertPEM())
	if _, err := s1.dial(snapshot); !errors.As(err, &verr) {
		t.Fatalf("dial with the CAs of before the rotation: %v", err)
	}
	if _, err := s1.dial(src.ClientConfig("")); err != nil {
		t.Fatalf("dial with a new config: %v", err)
	}
	<-s1.clients
}

func TestNewFileSourceErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := NewFileSource(FileSourceConfig{CertFile: "x"}); err == nil {
		t.Error("certificate without key accepted")
	}
	if _, err := NewFileSource(FileSourceConfig{}); err == nil {
		t.Error("empty config accepted")
	}
	missing := filepath.Join(dir, "missing.crt")
	if _, err := NewFileSource(FileSourceConfig{CAFile: missing}); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing CA file: %v", err)
	}
	junk := filepath.Join(dir, "junk.crt")
	writeFile(t, junk, []byte("junk"))
	if _, err := NewFileSource(FileSourceConfig{CAFile: junk}); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("junk CA file: %v", err)
	}
	src, err := NewFileSource(FileSourceConfig{CAFile: func() string {
		p := filepath.Join(dir, "ca.crt")
		writeFile(t, p, mustCA(t, "x").CertPEM())
		return p
	}()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := src.ServerConfig(); err == nil {
		t.Error("server config without a certificate")
	}
}
