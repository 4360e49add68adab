package testenv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/internal/testenv"
)

func TestEtcdPlain(t *testing.T) {
	e := testenv.Etcd(t, testenv.EtcdOptions{})
	ctx := testContext(t)
	if _, err := e.Client.Put(ctx, "cilium/state/nodes/v1/c1/n1", "{}"); err != nil {
		t.Fatalf("put: %v", err)
	}
	got, err := e.Client.Get(ctx, "cilium/", clientv3.WithPrefix())
	if err != nil || got.Count != 1 {
		t.Fatalf("get prefix = %v, %v; want 1 key", got, err)
	}
}

// TestEtcdTLSRequiresClientCert: with ClientCAFile the server serves TLS
// and refuses a client that presents no certificate.
func TestEtcdTLSRequiresClientCert(t *testing.T) {
	certs := writeTestCerts(t)
	e := testenv.Etcd(t, testenv.EtcdOptions{TLS: &testenv.EtcdTLS{
		CertFile: certs.serverCert, KeyFile: certs.serverKey, CAFile: certs.ca,
		ClientCAFile:   certs.ca,
		ClientCertFile: certs.clientCert, ClientKeyFile: certs.clientKey,
	}})
	ctx := testContext(t)
	if len(e.Endpoints) == 0 || e.Endpoints[0][:8] != "https://" {
		t.Fatalf("endpoints %v, want https", e.Endpoints)
	}
	if _, err := e.Client.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with a client certificate: %v", err)
	}

	tlsConfig, err := transport.TLSInfo{TrustedCAFile: certs.ca}.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	anon, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints, TLS: tlsConfig, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	shortCtx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	if _, err := anon.Get(shortCtx, "k"); err == nil {
		t.Fatal("a client without a certificate read from an etcd that requires one")
	}

	// Underneath, the server's TLS layer is what refuses it.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(e.Endpoints[0], "https://"), tlsConfig)
	if err != nil {
		t.Fatalf("TLS dial: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("reading from etcd without a client certificate: %v, want the TLS alert \"certificate required\"", err)
	}
}

type testCerts struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// writeTestCerts issues a CA, a server certificate for 127.0.0.1 and a
// client certificate, as PEM files.
func writeTestCerts(t *testing.T) testCerts {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	issue := func(name string, serial int64, tmpl *x509.Certificate) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(name+".crt", "CERTIFICATE", der), write(name+".key", "PRIVATE KEY", keyDER)
	}
	c := testCerts{ca: write("ca.crt", "CERTIFICATE", caDER)}
	c.serverCert, c.serverKey = issue("server", 2, &x509.Certificate{
		Subject: pkix.Name{CommonName: "etcd"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	c.clientCert, c.clientKey = issue("client", 3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	return c
}
