package protocol

import (
	"testing"
	"time"
)

func TestAccessUsers(t *testing.T) {
	for got, want := range map[string]string{
		AdminUser("c1"):     "admin-c1",
		LocalUser("c1"):     "local-c1",
		RemoteUserFor("c2"): "remote-c2",
		RemoteUser:          "remote",
		RootUser:            "root",
	} {
		if got != want {
			t.Errorf("user %q, want %q", got, want)
		}
	}
}

func TestReadableRanges(t *testing.T) {
	readable := func(rs []KeyRange, key string) bool {
		for _, r := range rs {
			if r.Contains(key) {
				return true
			}
		}
		return false
	}
	remote := RemoteReadable("c1")
	local := LocalReadable()
	for _, tc := range []struct {
		key           string
		remote, local bool
	}{
		{HeartbeatKey, true, true},
		{NodeKey("c1", "n1"), true, true},
		{IPCachePrefix + "10.0.0.1", true, true},
		{ClusterConfigKey("c1"), true, true},
		{ClusterConfigKey("c2"), false, true},
		{ClusterConfigKey("c1x"), false, true},
		{SyncedKey("c1", KindNodes), true, true},
		{SyncedKey("c2", KindNodes), false, true},
		{SyncedKey("c10", KindNodes), false, true},
		{CachePrefix + "nodes/v1/c2/n", false, true},
		{"isthmus/identities/v1/256", false, false},
		{"cilium/.heartbeatx", false, false},
		{"cilium/", false, false},
	} {
		if got := readable(remote, tc.key); got != tc.remote {
			t.Errorf("remote may read %q = %v, want %v", tc.key, got, tc.remote)
		}
		if got := readable(local, tc.key); got != tc.local {
			t.Errorf("local may read %q = %v, want %v", tc.key, got, tc.local)
		}
	}
}

func TestTimestamp(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 800, time.FixedZone("x", 3600))
	v := EncodeTimestamp(now)
	if string(v) != "2026-03-04T04:06:07Z" {
		t.Fatalf("EncodeTimestamp = %s", v)
	}
	got, err := DecodeTimestamp(HeartbeatKey, v)
	if err != nil || !got.Equal(now.Truncate(time.Second)) {
		t.Fatalf("DecodeTimestamp = %v, %v", got, err)
	}
	if _, err := DecodeTimestamp(HeartbeatKey, []byte("yesterday")); err == nil {
		t.Fatal("DecodeTimestamp accepted garbage")
	}
}
