package meshops

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const twoContexts = `apiVersion: v1
kind: Config
current-context: east
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443"}
contexts:
- name: east
  context: {cluster: c, user: u}
- name: west
  context: {cluster: c, user: u}
users:
- name: u
  user: {token: t}
`

func writeKubeconfig(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestLoadKubeconfig(t *testing.T) {
	kc, err := LoadKubeconfig(writeKubeconfig(t, twoContexts))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(kc.Contexts(), ","); got != "east,west" || kc.CurrentContext() != "east" {
		t.Errorf("contexts %s, current %q", got, kc.CurrentContext())
	}
	c, err := kc.Cluster("")
	if err != nil || c.Context() != "east" || c.RESTConfig().Timeout != DefaultRequestTimeout {
		t.Errorf("current context: %v, %v", c, err)
	}
	_, err = kc.Cluster("north")
	if !errors.Is(err, ErrUnknownContext) || !strings.Contains(err.Error(), `"north"`) || !strings.Contains(err.Error(), "available contexts: east, west") {
		t.Errorf("unknown context: %v", err)
	}
	if _, err := kc.Clusters([]string{"west", "south"}); err == nil || !strings.Contains(err.Error(), `"south"`) {
		t.Errorf("Clusters with an unknown one: %v", err)
	}
}

func TestLoadKubeconfigMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := LoadKubeconfig(missing); err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("explicit missing file: %v", err)
	}
	t.Setenv("KUBECONFIG", missing)
	if _, err := LoadKubeconfig(""); err == nil || !strings.Contains(err.Error(), "no kubeconfig found") || !strings.Contains(err.Error(), missing) {
		t.Errorf("nothing found: %v", err)
	}
	if _, err := LoadKubeconfig(writeKubeconfig(t, "apiVersion: v1\nkind: Config\n")); err == nil || !strings.Contains(err.Error(), "has no contexts") {
		t.Errorf("no contexts: %v", err)
	}
	noCurrent := strings.Replace(twoContexts, "current-context: east\n", "", 1)
	kc, err := LoadKubeconfig(writeKubeconfig(t, noCurrent))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kc.Cluster(""); err == nil || !strings.Contains(err.Error(), "no current context; pick one of: east, west") {
		t.Errorf("no current context: %v", err)
	}
}
