package protocol

import (
	"testing"
	"time"
)

// The fuzz tests feed arbitrary remote values to every decoder: none may
// panic, and whatever a decoder accepts must encode and decode again to the
// same value.

func FuzzDecodeNode(f *testing.F) {
	f.Add("test-node-1", []byte(protoNode))
	f.Add("n", []byte(`{"Name":"n","Cluster":"cluster3","ClusterID":3,"IPv4AllocCIDR":{"IP":"::","Mask":"AA=="}}`))
	f.Fuzz(func(t *testing.T, name string, value []byte) {
		key := NodeKey("cluster3", name)
		n, err := DecodeNode("cluster3", 3, key, value)
		if err != nil {
			return
		}
		n2, err := DecodeNode("cluster3", 3, key, n.Encode())
		if err != nil {
			t.Fatalf("re-decode of accepted node: %v", err)
		}
		if string(n2.Encode()) != string(n.Encode()) {
			t.Fatalf("node changed on round trip:\n%s\n%s", n.Encode(), n2.Encode())
		}
		_ = n.PodCIDRs()
	})
}

func FuzzDecodeClusterService(f *testing.F) {
	f.Add([]byte(protoService))
	f.Add([]byte(`{"cluster":"cluster3","namespace":"test","name":"echo","clusterID":3,"backends":{"::1":{"":null}}}`))
	f.Fuzz(func(t *testing.T, value []byte) {
		key := ServiceKey("cluster3", "test", "echo")
		s, err := DecodeClusterService("cluster3", 3, key, value)
		if err != nil {
			return
		}
		if _, err := DecodeClusterService("cluster3", 3, key, s.Encode()); err != nil {
			t.Fatalf("re-decode of accepted service: %v", err)
		}
	})
}

func FuzzDecodeIPCacheEntry(f *testing.F) {
	f.Add("10.244.1.79", []byte(protoIPCache))
	f.Add("::ffff:10.244.1.79", []byte(`{"IP":"::ffff:10.244.1.79","Mask":"AAAA","ID":199472}`))
	f.Fuzz(func(t *testing.T, ip string, value []byte) {
		key := IPCachePrefix + ip
		e, err := DecodeIPCacheEntry(3, 255, key, value)
		if err != nil {
			return
		}
		if !e.Prefix().IsValid() {
			t.Fatalf("accepted entry has invalid prefix: %+v", e)
		}
		if _, err := DecodeIPCacheEntry(3, 255, IPCacheKey(e.IP), e.Encode()); err != nil {
			t.Fatalf("re-decode of accepted entry: %v", err)
		}
	})
}

func FuzzDecodeIdentity(f *testing.F) {
	f.Add("196915", []byte(protoIdentity))
	f.Add("196915", []byte("a:b=c;d:e;"))
	f.Fuzz(func(t *testing.T, id string, value []byte) {
		key := IdentityIDPrefix + id
		i, ok, err := DecodeIdentity("cluster3", 3, 255, key, value)
		if !ok || err != nil {
			return
		}
		i2, _, err := DecodeIdentity("cluster3", 3, 255, IdentityKey(i.ID), i.Encode())
		if err != nil || !i2.Labels.Equal(i.Labels) {
			t.Fatalf("identity changed on round trip: %v %v -> %v", err, i.Labels, i2.Labels)
		}
	})
}

func FuzzDecodeClusterConfig(f *testing.F) {
	f.Add([]byte(protoClusterConfig))
	f.Fuzz(func(t *testing.T, value []byte) {
		c, err := DecodeClusterConfig("c", value)
		if err != nil {
			return
		}
		if _, err := DecodeClusterConfig("c", c.Encode()); err != nil {
			t.Fatalf("re-decode of accepted config: %v", err)
		}
	})
}

// FuzzDecodeTimestamp covers the heartbeat and synced-canary values readers
// decode: whatever it accepts encodes and decodes to the same second.
func FuzzDecodeTimestamp(f *testing.F) {
	f.Add([]byte("2026-11-21T12:00:00Z"))
	f.Add([]byte("2026-11-21T12:00:00.123456789+02:00"))
	f.Add([]byte("not a time"))
	f.Add([]byte("9999-12-31T23:59:59-23:59"))
	f.Fuzz(func(t *testing.T, value []byte) {
		ts, err := DecodeTimestamp(HeartbeatKey, value)
		if err != nil {
			return
		}
		back, err := DecodeTimestamp(HeartbeatKey, EncodeTimestamp(ts))
		if err != nil {
			t.Fatalf("re-decode of %q: %v", EncodeTimestamp(ts), err)
		}
		if !back.Equal(ts.Truncate(time.Second)) {
			t.Fatalf("%q -> %v -> %v", value, ts, back)
		}
	})
}
