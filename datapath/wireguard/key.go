package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

// KeyFileName is the file in Config.StateDir that holds the node's
// private key, base64-encoded on one line as `wg genkey` writes it, so
// `wg pubkey < wireguard.key` prints the published public key.
const KeyFileName = "wireguard.key"

// keyFile is what loadOrCreateKey found or made.
type keyFile struct {
	key     wgtypes.Key
	created bool
	// tightened is set when the file was readable by others and its mode
	// was reset to 0600.
	tightened bool
}

// loadOrCreateKey returns the private key kept in dir, generating and
// storing one when there is none. A new key is written to a temporary
// file and linked into place, so a crash never leaves a partial key and
// two processes racing on one dir end up with the same key. A key file
// that is not a key is an error, not replaced: the published public key
// would silently change.
func loadOrCreateKey(dir string) (keyFile, error) {
	path := filepath.Join(dir, KeyFileName)
	if kf, err := readKey(path); !errors.Is(err, fs.ErrNotExist) {
		return kf, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return keyFile{}, fmt.Errorf("create state dir: %w", err)
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return keyFile{}, fmt.Errorf("generate WireGuard key: %w", err)
	}
	tmp, err := os.CreateTemp(dir, "."+KeyFileName+"-*") // mode 0600
	if err != nil {
		return keyFile{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.WriteString(key.String() + "\n")
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return keyFile{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	if err := os.Link(tmp.Name(), path); errors.Is(err, fs.ErrExist) {
		// Another process created it first: use that one.
		return readKey(path)
	} else if err != nil {
		return keyFile{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return keyFile{}, fmt.Errorf("write WireGuard key: %w", err)
	}
	return keyFile{key: key, created: true}, nil
}

func readKey(path string) (keyFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return keyFile{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return keyFile{}, fmt.Errorf("read WireGuard key: %w", err)
	}
	if !st.Mode().IsRegular() {
		return keyFile{}, fmt.Errorf("WireGuard key %s is not a regular file; remove it to have a new key generated", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, 128))
	if err != nil {
		return keyFile{}, fmt.Errorf("read WireGuard key: %w", err)
	}
	key, err := wgtypes.ParseKey(string(bytes.TrimSpace(b)))
	if err != nil {
		return keyFile{}, fmt.Errorf("WireGuard key %s holds no base64-encoded 32-byte key; remove it to have a new key generated (peers must then learn the new public key)", path)
	}
	kf := keyFile{key: key}
	if st.Mode().Perm()&0o077 != 0 {
		if err := f.Chmod(0o600); err != nil {
			return keyFile{}, fmt.Errorf("WireGuard key %s is readable by others (mode %v) and cannot be made private: %w", path, st.Mode().Perm(), err)
		}
		kf.tightened = true
	}
	return kf, nil
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
