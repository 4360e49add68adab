package helmbin

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A cached binary is returned as it is: no build, no go command.
func TestEnsureUsesTheCache(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "helm", Version, "helm")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	got, err := Ensure(context.Background(), Options{CacheDir: root, GoCommand: filepath.Join(root, "no-go")})
	if err != nil {
		t.Fatal(err)
	}
	if got != bin {
		t.Fatalf("Ensure = %s; want the cached %s", got, bin)
	}
}

// A file that is not executable is no cached binary: Ensure builds, and
// says what is missing when it cannot.
func TestEnsureBuildsWhenNotCached(t *testing.T) {
	root := t.TempDir()
	bin := filepath.Join(root, "helm", Version, "helm")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Ensure(context.Background(), Options{CacheDir: root, GoCommand: filepath.Join(root, "no-go")})
	if err == nil || !strings.Contains(err.Error(), "the go command is not on PATH") {
		t.Fatalf("Ensure without a go command: %v; want it to say the go command is missing", err)
	}
}
