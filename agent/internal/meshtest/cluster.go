package meshtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// RemoteUser is the read-only etcd user readers of other clusters use.
const RemoteUser = protocol.RemoteUser

// Cluster is one test cluster's mesh etcd: a real embedded etcd server with
// mutual TLS and etcd auth, the users of PROTOCOL.md "Access", and an admin
// client that publishes protocol values as a mesh apiserver would.
type Cluster struct {
	Name         string
	ID           uint32
	MaxConnected uint32
	CA           *CA

	tb        testing.TB
	dir       string // certificates
	clientURL string // fixed after the first start, so restarts keep it

	mu    sync.Mutex // guards the fields below
	etcd  *embed.Etcd
	admin *clientv3.Client
}

// StartCluster starts the mesh etcd of cluster name with cluster ID id and
// maxConnectedClusters 255, and publishes its cluster-config. It is stopped
// in tb's cleanup. Under -short (the unit tier) it skips tb.
func StartCluster(tb testing.TB, name string, id uint32) *Cluster {
	tb.Helper()
	if testing.Short() {
		tb.Skip("meshtest: runs a real etcd server; not part of the unit tier (-short)")
	}
	c := &Cluster{Name: name, ID: id, MaxConnected: protocol.MaxConnectedClusters255, CA: NewCA(tb, name+"-ca"), tb: tb, dir: tb.TempDir()}
	cert, key := c.CA.Issue(tb, "server", true)
	for f, b := range map[string][]byte{"ca.crt": c.CA.CertPEM, "server.crt": cert, "server.key": key} {
		if err := os.WriteFile(filepath.Join(c.dir, f), b, 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	c.Start(true)
	tb.Cleanup(c.Stop)
	c.SetupAuth()
	c.PutConfig()
	return c
}

// Start starts the etcd server, on a fresh data directory when wipe is set
// (a remote that lost all its state) or on the previous one otherwise. The
// client URL stays the same across restarts.
func (c *Cluster) Start(wipe bool) {
	tb := c.tb
	tb.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.etcd != nil {
		tb.Fatalf("meshtest: cluster %s already running", c.Name)
	}
	dataDir := filepath.Join(c.dir, "data")
	if wipe {
		if err := os.RemoveAll(dataDir); err != nil {
			tb.Fatal(err)
		}
	}
	cfg := embed.NewConfig()
	cfg.Name = c.Name
	cfg.Dir = dataDir
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	clientURL := c.clientURL
	if clientURL == "" {
		clientURL = "https://127.0.0.1:0"
	}
	cu, _ := url.Parse(clientURL)
	pu, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(c.Name)
	cfg.ClientTLSInfo.CertFile = filepath.Join(c.dir, "server.crt")
	cfg.ClientTLSInfo.KeyFile = filepath.Join(c.dir, "server.key")
	cfg.ClientTLSInfo.TrustedCAFile = filepath.Join(c.dir, "ca.crt")
	cfg.ClientTLSInfo.ClientCertAuth = true
	// Large lists in benchmarks; keep the defaults' spirit otherwise.
	cfg.QuotaBackendBytes = 4 << 30
	// Throwaway data: fsync would dominate on a busy disk.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("meshtest: start etcd of %s: %v", c.Name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		tb.Fatalf("meshtest: etcd of %s failed: %v", c.Name, err)
	case <-time.After(time.Minute):
		e.Close()
		tb.Fatalf("meshtest: etcd of %s not ready after a minute", c.Name)
	}
	c.clientURL = "https://" + e.Clients[0].Addr().String()
	c.etcd = e
	c.admin = c.newClient(protocol.RootUser)
}

// Stop stops the etcd server. Readers see their connection fail.
func (c *Cluster) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.admin != nil {
		c.admin.Close()
		c.admin = nil
	}
	if c.etcd != nil {
		c.etcd.Close()
		c.etcd = nil
	}
}

// Endpoint returns the etcd client URL.
func (c *Cluster) Endpoint() string { return c.clientURL }

func (c *Cluster) newClient(user string) *clientv3.Client {
	tb := c.tb
	tb.Helper()
	cfg, err := tlsConfig(c.Entry(user))
	if err != nil {
		tb.Fatal(err)
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: []string{c.clientURL}, TLS: cfg, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	return cl
}

// Entry returns a clustermesh entry for the cluster whose client
// certificate authenticates user (RemoteUser for other clusters' readers).
func (c *Cluster) Entry(user string) meshconfig.ClusterEntry {
	cert, key := c.CA.Issue(c.tb, user, false)
	return meshconfig.ClusterEntry{Cluster: c.Name, Endpoints: []string{c.clientURL}, CA: c.CA.CertPEM, Cert: cert, Key: key}
}

// Client returns the admin client; it changes when the cluster restarts.
func (c *Cluster) Client() *clientv3.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.admin == nil {
		c.tb.Fatalf("meshtest: cluster %s is stopped", c.Name)
	}
	return c.admin
}

// SetupAuth creates the root, remote and local users of PROTOCOL.md
// "Access" and turns etcd auth on, so
// readers see exactly the permissions a mesh apiserver grants. StartCluster
// does it; call it again after a Start that wiped the data.
func (c *Cluster) SetupAuth() {
	tb := c.tb
	ctx := context.Background()
	cl := c.Client()
	must := func(_ any, err error) {
		tb.Helper()
		if err != nil {
			tb.Fatalf("meshtest: set up etcd auth of %s: %v", c.Name, err)
		}
	}
	noPassword := &clientv3.UserAddOptions{NoPassword: true}
	must(cl.UserAddWithOptions(ctx, protocol.RootUser, "", noPassword))
	must(cl.UserGrantRole(ctx, protocol.RootUser, "root"))
	read := clientv3.PermissionType(clientv3.PermRead)
	for user, ranges := range map[string][]protocol.KeyRange{
		protocol.RemoteUser:        protocol.RemoteReadable(c.Name),
		protocol.LocalUser(c.Name): protocol.LocalReadable(),
	} {
		must(cl.RoleAdd(ctx, user))
		for _, r := range ranges {
			end := ""
			if r.Prefix {
				end = clientv3.GetPrefixRangeEnd(r.Key)
			}
			must(cl.RoleGrantPermission(ctx, user, r.Key, end, read))
		}
		must(cl.UserAddWithOptions(ctx, user, "", noPassword))
		must(cl.UserGrantRole(ctx, user, user))
	}
	must(cl.AuthEnable(ctx))
}

// Put writes one key with the admin client.
func (c *Cluster) Put(key string, value []byte) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client().Put(ctx, key, string(value)); err != nil {
		c.tb.Fatalf("meshtest: put %s: %v", key, err)
	}
}

// Delete deletes one key.
func (c *Cluster) Delete(key string) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client().Delete(ctx, key); err != nil {
		c.tb.Fatalf("meshtest: delete %s: %v", key, err)
	}
}

// KV is a key and value to publish.
type KV struct {
	Key   string
	Value []byte
}

// PutAll writes kvs in transactions of up to 128 operations (etcd's
// default limit), for bulk loads.
func (c *Cluster) PutAll(kvs []KV) {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cl := c.Client()
	for len(kvs) > 0 {
		n := min(len(kvs), 128)
		ops := make([]clientv3.Op, n)
		for i, kv := range kvs[:n] {
			ops[i] = clientv3.OpPut(kv.Key, string(kv.Value))
		}
		if _, err := cl.Txn(ctx).Then(ops...).Commit(); err != nil {
			c.tb.Fatalf("meshtest: bulk put: %v", err)
		}
		kvs = kvs[n:]
	}
}

// PutConfig publishes the cluster-config.
func (c *Cluster) PutConfig() {
	c.Put(protocol.ClusterConfigKey(c.Name), protocol.NewClusterConfig(c.ID, c.MaxConnected).Encode())
}

// PutSynced writes the synced canaries of kinds (all kinds when none given).
func (c *Cluster) PutSynced(kinds ...protocol.Kind) {
	if len(kinds) == 0 {
		kinds = protocol.Kinds
	}
	for _, k := range kinds {
		c.Put(protocol.SyncedKey(c.Name, k), protocol.EncodeTimestamp(time.Now()))
	}
}

// PutHeartbeat writes the heartbeat.
func (c *Cluster) PutHeartbeat() {
	c.Put(protocol.HeartbeatKey, protocol.EncodeTimestamp(time.Now()))
}

// Heartbeat writes the heartbeat every interval until the returned stop
// function is called (also done in cleanup). Writes fail silently while
// the server is stopped.
func (c *Cluster) Heartbeat(interval time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			c.mu.Lock()
			cl := c.admin
			c.mu.Unlock()
			if cl != nil {
				wctx, wcancel := context.WithTimeout(ctx, interval)
				_, _ = cl.Put(wctx, protocol.HeartbeatKey, string(protocol.EncodeTimestamp(time.Now())))
				wcancel()
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	c.tb.Cleanup(stop)
	return stop
}

// Revision returns the current revision.
func (c *Cluster) Revision() int64 {
	c.tb.Helper()
	resp, err := c.Client().Get(context.Background(), protocol.HeartbeatKey)
	if err != nil {
		c.tb.Fatal(err)
	}
	return resp.Header.Revision
}

// Compact compacts the etcd history up to rev.
func (c *Cluster) Compact(rev int64) {
	c.tb.Helper()
	if _, err := c.Client().Compact(context.Background(), rev, clientv3.WithCompactPhysical()); err != nil {
		c.tb.Fatalf("meshtest: compact: %v", err)
	}
}

func (c *Cluster) String() string { return fmt.Sprintf("%s(id %d)", c.Name, c.ID) }

func tlsConfig(e meshconfig.ClusterEntry) (*tls.Config, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(e.CA) {
		return nil, errors.New("meshtest: bad CA")
	}
	cert, err := tls.X509KeyPair(e.Cert, e.Key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}
