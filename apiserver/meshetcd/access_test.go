package meshetcd_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd"
	"github.com/isthmus-mesh/isthmus/apiserver/meshetcd/meshetcdtest"
	"github.com/isthmus-mesh/isthmus/certs"
)

// keys written by admin before each access check, and who may read them.
var accessKeys = []struct {
	key           string
	remote, local bool
}{
	{"cilium/.heartbeat", true, true},
	{"cilium/state/nodes/v1/c1/n1", true, true},
	{"cilium/state/ip/v1/default/10.0.0.1", true, true},
	{"cilium/state/identities/v1/id/65792", true, true},
	{"cilium/state/services/v1/c1/ns/svc", true, true},
	{"cilium/cluster-config/c1", true, true},
	{"cilium/cluster-config/c2", false, true},
	{"cilium/synced/c1/cilium/state/nodes/v1", true, true},
	{"cilium/synced/c2/cilium/state/nodes/v1", false, true},
	{"cilium/synced/c10/cilium/state/nodes/v1", false, true},
	{"cilium/cache/nodes/v1/c2/n1", false, true},
	{"isthmus/identities/v1/65792", false, false},
	{"cilium/other", false, false},
	{"unrelated", false, false},
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func denied(err error) bool { return errors.Is(err, rpctypes.ErrPermissionDenied) }

// refused also accepts etcd's answer to an unknown user's admin requests.
func refused(err error) bool { return denied(err) || errors.Is(err, rpctypes.ErrUserNotFound) }

func TestAccess(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	if err := (meshetcd.Access{Cluster: "c1", RemoteClusters: []string{"c2"}}).Apply(ctx, env.Admin); err != nil {
		t.Fatal(err)
	}
	for _, k := range accessKeys {
		if _, err := env.Admin.Put(ctx, k.key, "v"); err != nil {
			t.Fatalf("admin put %s: %v", k.key, err)
		}
	}
	for _, user := range []string{"remote", "remote-c2", "local-c1", "nobody"} {
		t.Run(user, func(t *testing.T) {
			cli := env.Client(t, user)
			for _, k := range accessKeys {
				want := k.remote
				switch user {
				case "local-c1":
					want = k.local
				case "nobody":
					want = false
				}
				resp, err := cli.Get(ctx, k.key)
				switch {
				case want && err != nil:
					t.Errorf("read %s: %v", k.key, err)
				case want && (len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v"):
					t.Errorf("read %s: %v", k.key, resp.Kvs)
				case !want && !denied(err):
					t.Errorf("read %s: err %v, want permission denied", k.key, err)
				}
				// Every write is refused, readable keys included.
				if _, err := cli.Put(ctx, k.key, "x"); !denied(err) {
					t.Errorf("put %s: %v, want permission denied", k.key, err)
				}
				if _, err := cli.Delete(ctx, k.key); !denied(err) {
					t.Errorf("delete %s: %v, want permission denied", k.key, err)
				}
				if _, err := cli.Txn(ctx).Then(clientv3.OpPut(k.key, "x")).Commit(); !denied(err) {
					t.Errorf("txn put %s: %v, want permission denied", k.key, err)
				}
			}
			// Ranges: the state prefix is readable, wider ranges are not.
			stateReadable := user != "nobody"
			if _, err := cli.Get(ctx, "cilium/state/", clientv3.WithPrefix()); stateReadable != (err == nil) {
				t.Errorf("list cilium/state/: %v", err)
			}
			for _, prefix := range []string{"cilium/", "cilium/cluster-config/c", "isthmus/", ""} {
				if user == "local-c1" && prefix == "cilium/cluster-config/c" {
					continue
				}
				if _, err := cli.Get(ctx, prefix, clientv3.WithPrefix()); !denied(err) {
					t.Errorf("list %q: %v, want permission denied", prefix, err)
				}
			}
			if _, err := cli.Delete(ctx, "cilium/state/", clientv3.WithPrefix()); !denied(err) {
				t.Errorf("delete cilium/state/*: %v", err)
			}
			// No administration either.
			if _, err := cli.UserAdd(ctx, "evil", "pw"); !refused(err) {
				t.Errorf("user add: %v", err)
			}
			if _, err := cli.RoleGrantPermission(ctx, "remote", "", "\x00", clientv3.PermissionType(clientv3.PermReadWrite)); !refused(err) {
				t.Errorf("role grant: %v", err)
			}
			if _, err := cli.AuthDisable(ctx); !refused(err) {
				t.Errorf("auth disable: %v", err)
			}
			if err := (meshetcd.Access{Cluster: "c1"}).Apply(ctx, cli); !errors.Is(err, meshetcd.ErrNotRoot) {
				t.Errorf("Access.Apply as %s: %v, want ErrNotRoot", user, err)
			}
		})
	}
}

func TestAccessWatch(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	remote := env.Client(t, "remote")

	ok := remote.Watch(ctx, "cilium/state/", clientv3.WithPrefix())
	if _, err := env.Admin.Put(ctx, "cilium/state/nodes/v1/c1/n1", "v"); err != nil {
		t.Fatal(err)
	}
	resp := <-ok
	if err := resp.Err(); err != nil || len(resp.Events) != 1 {
		t.Fatalf("watch cilium/state/: %v, %d events", err, len(resp.Events))
	}

	bad := remote.Watch(ctx, "isthmus/", clientv3.WithPrefix())
	if _, err := env.Admin.Put(ctx, "isthmus/identities/v1/65792", "v"); err != nil {
		t.Fatal(err)
	}
	resp = <-bad
	if !resp.Canceled && resp.Err() == nil {
		t.Fatalf("watch of isthmus/ delivered %d events", len(resp.Events))
	}
}

func TestAccessRefusedCertificates(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	other, err := certs.NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.IssueClient("remote", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := env.CA.Issue(certs.Request{CommonName: "remote", NotBefore: time.Now().Add(-2 * time.Hour), Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	good, err := env.CA.IssueClient("remote", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	host := strings.TrimPrefix(env.Endpoints()[0], "https://")
	// handshake speaks TLS to etcd's port and returns the server's verdict:
	// with TLS 1.3 a refused client certificate shows at the first read.
	handshake := func(kp *certs.KeyPair) error {
		cfg := env.ClientTLS(t, kp)
		cfg.NextProtos = []string{"h2"}
		// Present the certificate whatever CAs the server asks for, so the
		// server has to judge it.
		cert := cfg.Certificates[0]
		cfg.Certificates = nil
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", host, cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		// The HTTP/2 preface; the server answers with its SETTINGS frame.
		if _, err := c.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")); err != nil {
			return err
		}
		_, err = c.Read(make([]byte, 1))
		return err
	}
	for _, tc := range []struct {
		name string
		kp   *certs.KeyPair
		want string
	}{
		{"another CA", foreign, "unknown certificate authority"},
		{"expired", expired, "expired certificate"},
	} {
		err := handshake(tc.kp)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("certificate of %s: %v, want a TLS alert %q", tc.name, err, tc.want)
		}
		if cli, err := env.Dial(env.ClientTLS(t, tc.kp)); err == nil {
			cli.Close()
			t.Errorf("etcd client with a certificate of %s connected", tc.name)
		}
	}
	// The control: a fresh certificate of the right CA gets in.
	if err := handshake(good); err != nil {
		t.Fatalf("valid certificate refused at the TLS layer: %v", err)
	}
	cli, err := env.Dial(env.ClientTLS(t, good))
	if err != nil {
		t.Fatalf("valid certificate refused: %v", err)
	}
	cli.Close()
}

func TestAccessIdempotentAcrossRestart(t *testing.T) {
	env := meshetcdtest.Start(t, "c1")
	ctx := ctxT(t)
	a := meshetcd.Access{Cluster: "c1", RemoteClusters: []string{"c2", "c3"}}
	for range 2 {
		if err := a.Apply(ctx, env.Admin); err != nil {
			t.Fatal(err)
		}
	}
	env.Restart(t)
	ctx = ctxT(t)
	// Auth is on now: admin-c1 applies again through its root role, and a
	// cluster dropped from the list loses its user.
	a.RemoteClusters = []string{"c2"}
	if err := a.Apply(ctx, env.Admin); err != nil {
		t.Fatal(err)
	}
	users, err := env.Admin.UserList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"admin-c1", "local-c1", "remote", "remote-c2", "root"}
	if len(users.Users) != len(want) {
		t.Fatalf("users %v, want %v", users.Users, want)
	}
	for i := range want {
		if users.Users[i] != want[i] {
			t.Fatalf("users %v, want %v", users.Users, want)
		}
	}
	if _, err := env.Admin.Put(ctx, "cilium/state/x", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Client(t, "remote-c3").Get(ctx, "cilium/state/x"); !denied(err) {
		t.Errorf("dropped remote-c3 reads: %v", err)
	}
	if _, err := env.Client(t, "remote-c2").Get(ctx, "cilium/state/x"); err != nil {
		t.Errorf("remote-c2 reads: %v", err)
	}
	// A permission granted by hand beyond the contract is taken back.
	if _, err := env.Admin.RoleGrantPermission(ctx, "remote", "isthmus/", clientv3.GetPrefixRangeEnd("isthmus/"), clientv3.PermissionType(clientv3.PermRead)); err != nil {
		t.Fatal(err)
	}
	if err := a.Apply(ctx, env.Admin); err != nil {
		t.Fatal(err)
	}
	role, err := env.Admin.RoleGet(ctx, "remote")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range role.Perm {
		if string(p.Key) == "isthmus/" {
			t.Errorf("stray permission on isthmus/ survived Apply")
		}
	}
	if len(role.Perm) != 4 {
		t.Errorf("remote role has %d permissions, want 4: %v", len(role.Perm), role.Perm)
	}
}
