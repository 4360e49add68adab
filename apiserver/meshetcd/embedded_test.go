package meshetcd_test

import (
	"crypto/tls"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/certs"
)

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path+".new", data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// The embedded etcd picks up a rotated server certificate and client CA
// file for new connections, without a restart.
func TestEmbeddedRotation(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)

	// serverSerial connects as a remote with a certificate of ca and returns
	// the serial of the certificate the server presented.
	serverSerial := func(ca *certs.CA) (string, error) {
		kp, err := ca.IssueClient("remote", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cfg := env.ClientTLS(t, kp)
		var serial string
		cfg.VerifyConnection = func(cs tls.ConnectionState) error {
			serial = cs.PeerCertificates[0].SerialNumber.String()
			return nil
		}
		cli, err := env.Dial(cfg)
		if err != nil {
			return "", err
		}
		defer cli.Close()
		if _, err := cli.Get(ctx, "cilium/.heartbeat"); err != nil {
			return "", err
		}
		return serial, nil
	}
	first, err := serverSerial(env.CA)
	if err != nil {
		t.Fatal(err)
	}

	rotated, err := env.CA.IssueServer(certs.ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, env.CertFile, rotated.CertPEM)
	writeFile(t, env.KeyFile, rotated.KeyPEM)
	got, err := serverSerial(env.CA)
	if err != nil {
		t.Fatal(err)
	}
	if want := rotated.Cert.SerialNumber.String(); got != want || got == first {
		t.Fatalf("after rotation the server presents serial %s, want %s (was %s)", got, want, first)
	}

	// A new client CA file: only its certificates get in.
	ca2, err := certs.NewCA("ca2", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, env.CAFile, ca2.CertPEM())
	if _, err := serverSerial(env.CA); err == nil {
		t.Fatal("certificate of the replaced client CA still accepted")
	}
	if _, err := serverSerial(ca2); err != nil {
		t.Fatalf("certificate of the new client CA: %v", err)
	}
}
