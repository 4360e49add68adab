package embedetcd

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
)

func TestStartServesAndCloses(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	a, err := Start(ctx, Config{DataDir: dir + "/a"})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// A second server in the same process gets its own ports.
	b, err := Start(ctx, Config{DataDir: dir + "/b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if a.Endpoints()[0] == b.Endpoints()[0] {
		t.Fatalf("two servers share endpoint %s", a.Endpoints()[0])
	}

	c, err := clientv3.New(clientv3.Config{Endpoints: a.Endpoints(), DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put: %v", err)
	}
	got, err := c.Get(ctx, "k")
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != "v" {
		t.Fatalf("get k = %v, %v; want v", got, err)
	}
	c.Close()
	a.Close()
	a.Close() // idempotent
	b.Close()
}

func TestStartRequiresDataDir(t *testing.T) {
	if _, err := Start(context.Background(), Config{}); err == nil {
		t.Fatal("Start without DataDir succeeded")
	}
}
