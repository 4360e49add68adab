package wireguard

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func TestKeyIsKeptAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state") // New creates it
	first, err := loadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !first.created {
		t.Error("first load did not report a new key")
	}
	second, err := loadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if second.created || second.key != first.key {
		t.Errorf("second load: created=%v, same key=%v; want the first key kept", second.created, second.key == first.key)
	}

	path := filepath.Join(dir, KeyFileName)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, want 0600", st.Mode().Perm())
	}
	dst, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode = %v, want 0700", dst.Mode().Perm())
	}
	// The file reads as `wg genkey` writes it.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != first.key.String()+"\n" {
		t.Errorf("key file = %q, want the base64 key and a newline", b)
	}
	// Nothing but the key is left behind.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("state dir holds %d entries, want only %s", len(entries), KeyFileName)
	}
}

func TestKeyReadsExistingWgGenkeyFile(t *testing.T) {
	dir := t.TempDir()
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFileName), []byte(key.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	kf, err := loadOrCreateKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if kf.key != key || kf.created {
		t.Errorf("loaded a different or new key")
	}
	if !kf.tightened {
		t.Error("a world-readable key file was not reported as tightened")
	}
	st, err := os.Stat(filepath.Join(dir, KeyFileName))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v after load, want 0600", st.Mode().Perm())
	}
}

func TestKeyCorruptFileIsAnErrorNotReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, KeyFileName)
	if err := os.WriteFile(path, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := loadOrCreateKey(dir)
	if err == nil {
		t.Fatal("corrupt key file accepted")
	}
	for _, want := range []string{path, "remove it"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	b, _ := os.ReadFile(path)
	if string(b) != "not a key\n" {
		t.Errorf("corrupt key file was overwritten with %q", b)
	}
}

func TestKeyConcurrentCreatorsAgree(t *testing.T) {
	dir := t.TempDir()
	const n = 8
	keys := make([]wgtypes.Key, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			var kf keyFile
			kf, errs[i] = loadOrCreateKey(dir)
			keys[i] = kf.key
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("creator %d: %v", i, errs[i])
		}
		if keys[i] != keys[0] {
			t.Fatalf("creator %d got a different key than creator 0", i)
		}
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	cfg, err := Config{StateDir: "/x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DeviceName != DefaultDeviceName || cfg.ListenPort != DefaultListenPort || cfg.RouteTable != 254 {
		t.Errorf("defaults = %+v", cfg)
	}
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, "StateDir"},
		{Config{StateDir: "/x", DeviceName: "a-very-long-device"}, "DeviceName"},
		{Config{StateDir: "/x", ListenPort: 70000}, "ListenPort"},
		{Config{StateDir: "/x", Mode: 7}, "Mode(7)"},
		{Config{StateDir: "/x", UnderlayMTU: 1000}, "UnderlayMTU"},
		{Config{StateDir: "/x", PersistentKeepalive: -1}, "PersistentKeepalive"},
	} {
		_, err := c.cfg.withDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want one naming %s", c.cfg, err, c.want)
		}
	}
}
