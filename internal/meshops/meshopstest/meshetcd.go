// Package meshopstest runs what the mesh operations are tested against: a
// real embedded mesh etcd set up as the mesh apiserver sets up its own
// (TLS with client-certificate authentication, the users and roles of
// PROTOCOL.md "Access", the cluster-config published), from certificates
// given or from those that `isthmus enable` wrote into a cluster, and the
// apiserver's part of connect: publishing the mesh endpoint and keeping
// the remote-<r> users in step with the remote-readers ConfigMap.
//
// Only tests import it. It must not import internal/meshops, whose tests
// use it.
package meshopstest

import (
	"context"
	"crypto/tls"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/embedetcd"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// MeshEtcd is a real embedded etcd set up as a mesh apiserver sets up
// its own (PROTOCOL.md "Access"): TLS with client-certificate
// authentication, auth on, users root, admin-<c>, local-<c>, remote and
// remote-<r>, and the cluster's cluster-config published.
type MeshEtcd struct {
	Cluster string
	CA      *certs.CA
	// Endpoint is the client URL, https://127.0.0.1:<port>.
	Endpoint string
	// Admin is a client of user admin-<c>.
	Admin *clientv3.Client
}

// StartMeshEtcd runs the mesh etcd of cluster with server certificate
// server (signed by ca, valid for 127.0.0.1) and publishes cfg as its
// cluster-config.
func StartMeshEtcd(t testing.TB, cluster string, ca *certs.CA, server *certs.KeyPair, cfg protocol.ClusterConfig) *MeshEtcd {
	t.Helper()
	if testing.Short() {
		t.Skip("meshopstest: runs a real etcd; not part of the unit tier (-short)")
	}
	dir := t.TempDir()
	files := map[string][]byte{"server.crt": server.CertPEM, "server.key": server.KeyPEM, "ca.crt": ca.CertPEM()}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := embedetcd.Start(ctx, embedetcd.Config{
		DataDir: filepath.Join(dir, "data"),
		TLS:     &embedetcd.TLS{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"), ClientCAFile: filepath.Join(dir, "ca.crt")},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	e := &MeshEtcd{Cluster: cluster, CA: ca, Endpoint: srv.Endpoints()[0]}
	e.Admin = e.Client(t, protocol.AdminUser(cluster))

	// Before auth is on, any client may set it up.
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(e.Admin.Put(ctx, protocol.ClusterConfigKey(cluster), string(cfg.Encode())))
	must(e.Admin.Put(ctx, protocol.HeartbeatKey, string(protocol.EncodeTimestamp(time.Now()))))
	must(e.Admin.Put(ctx, protocol.NodeKey(cluster, "node-1"), `{"Name":"node-1","Cluster":"`+cluster+`"}`))
	for _, r := range []struct {
		name string
		read []protocol.KeyRange
	}{
		{protocol.LocalUser(cluster), protocol.LocalReadable()},
		{protocol.RemoteUser, protocol.RemoteReadable(cluster)},
	} {
		must(e.Admin.RoleAdd(ctx, r.name))
		for _, kr := range r.read {
			end := ""
			if kr.Prefix {
				end = clientv3.GetPrefixRangeEnd(kr.Key)
			}
			must(e.Admin.RoleGrantPermission(ctx, r.name, kr.Key, end, clientv3.PermissionType(clientv3.PermRead)))
		}
	}
	for user, role := range map[string]string{
		protocol.RootUser: "root", protocol.AdminUser(cluster): "root",
		protocol.LocalUser(cluster): protocol.LocalUser(cluster), protocol.RemoteUser: protocol.RemoteUser,
	} {
		must(e.Admin.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}))
		must(e.Admin.UserGrantRole(ctx, user, role))
	}
	must(e.Admin.AuthEnable(ctx))
	return e
}

// SetReaders makes the remote-<r> users exactly readers, as the mesh
// apiserver does from its remote-readers ConfigMap.
func (e *MeshEtcd) SetReaders(t testing.TB, readers []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	want := map[string]bool{}
	for _, r := range readers {
		u := protocol.RemoteUserFor(r)
		want[u] = true
		if _, err := e.Admin.UserAddWithOptions(ctx, u, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
			t.Fatal(err)
		}
		if _, err := e.Admin.UserGrantRole(ctx, u, protocol.RemoteUser); err != nil {
			t.Fatal(err)
		}
	}
	list, err := e.Admin.UserList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range list.Users {
		if strings.HasPrefix(u, protocol.RemoteUserFor("")) && !want[u] {
			if _, err := e.Admin.UserDelete(ctx, u); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// Client returns a client of user with a certificate of the etcd's CA;
// t's cleanup closes it.
func (e *MeshEtcd) Client(t testing.TB, user string) *clientv3.Client {
	t.Helper()
	kp, err := e.CA.IssueClient(user, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return Dial(t, e.Endpoint, e.CA.CertPEM(), kp.CertPEM, kp.KeyPEM)
}

// Dial connects to endpoint trusting caPEM and presenting a certificate;
// t's cleanup closes the client.
func Dial(t testing.TB, endpoint string, caPEM, certPEM, keyPEM []byte) *clientv3.Client {
	t.Helper()
	pool, err := certs.NewCertPool(caPEM)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		TLS:         &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// LoopbackServerCert issues a server certificate for 127.0.0.1 only.
func LoopbackServerCert(t testing.TB, ca *certs.CA) *certs.KeyPair {
	t.Helper()
	kp, err := ca.IssueServer(certs.ServerOptions{IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}})
	if err != nil {
		t.Fatal(err)
	}
	return kp
}
