package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runCLI runs the isthmus command line and returns its exit code, stdout
// and stderr.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = Run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// unreachableKubeconfig has contexts east and west whose API server does
// not exist: a command that tried to reach it would say so.
func unreachableKubeconfig(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "kubeconfig")
	const kc = `apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1"}
contexts:
- name: east
  context: {cluster: c, user: u}
- name: west
  context: {cluster: c, user: u}
users:
- name: u
  user: {token: t}
`
	if err := os.WriteFile(p, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestBadInputBeforeAnyCluster covers the mistakes caught before any
// cluster is contacted.
func TestBadInputBeforeAnyCluster(t *testing.T) {
	kc := unreachableKubeconfig(t)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"missing kubeconfig", []string{"status", "--kubeconfig", missing}, []string{missing, "no such file", "--kubeconfig"}},
		{"unknown context", []string{"enable", "--kubeconfig", kc, "--context", "north", "--cluster-name", "n", "--cluster-id", "3"}, []string{`unknown context "north"`, "available contexts: east, west"}},
		{"unknown destination", []string{"connect", "--kubeconfig", kc, "--context", "east", "--destination-context", "west,south"}, []string{`unknown context "south"`, "available contexts: east, west"}},
		{"connect to itself", []string{"connect", "--kubeconfig", kc, "--context", "east", "--destination-context", "east"}, []string{`context "east" is both --context and a --destination-context`, "cannot be connected to itself"}},
		{"disconnect from itself", []string{"disconnect", "--kubeconfig", kc, "--context", "west", "--destination-context", "east,west"}, []string{"cannot be connected to itself"}},
		{"invalid name and ID", []string{"enable", "--kubeconfig", kc, "--context", "east", "--cluster-name", "East_1", "--cluster-id", "256"}, []string{"2 problems", `cluster name "East_1"`, "cluster ID 256 is out of range", "Nothing was changed."}},
		{"invalid max", []string{"enable", "--kubeconfig", kc, "--context", "east", "--cluster-name", "e", "--cluster-id", "2", "--max-connected-clusters", "300"}, []string{"maxConnectedClusters is 300; it must be 255 or 511"}},
		{"invalid endpoint", []string{"enable", "--kubeconfig", kc, "--context", "east", "--cluster-name", "e", "--cluster-id", "2", "--mesh-endpoint", "10.0.0.1:2379"}, []string{`mesh endpoint "10.0.0.1:2379" is not an https URL`}},
		{"missing name", []string{"enable", "--kubeconfig", kc, "--context", "east", "--cluster-id", "2"}, []string{`required flag(s) "cluster-name" not set`}},
		{"negative grant timeout", []string{"connect", "--kubeconfig", kc, "--context", "east", "--destination-context", "west", "--grant-timeout", "-1s"}, []string{"--grant-timeout -1s is negative", "give 0 to write the entries without waiting"}},
		{"unknown mode", []string{"connect", "--kubeconfig", kc, "--context", "east", "--destination-context", "west", "--connection-mode", "star"}, []string{`connection mode "star" is not one of bidirectional, unicast, mesh`}},
		{"disconnect from nothing", []string{"disconnect", "--kubeconfig", kc, "--context", "east"}, []string{"[destination-context remote-cluster] is required"}},
		{"disconnect two ways", []string{"disconnect", "--kubeconfig", kc, "--context", "east", "--destination-context", "west", "--remote-cluster", "w"}, []string{"none of the others can be"}},
		{"unknown output", []string{"status", "--kubeconfig", kc, "--context", "east", "-o", "table"}, []string{`--output "table" is not one of text, json, yaml`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code == 0 {
				t.Fatalf("exit code 0; stdout:\n%s", stdout)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if strings.Contains(stderr, "127.0.0.1:1") {
				t.Errorf("the cluster was contacted:\n%s", stderr)
			}
		})
	}
}

func TestUnreachableCluster(t *testing.T) {
	code, _, stderr := runCLI(t, "status", "--kubeconfig", unreachableKubeconfig(t), "--context", "east")
	if code == 0 || !strings.Contains(stderr, `context "east": cannot reach the Kubernetes API at https://127.0.0.1:1`) {
		t.Errorf("exit %d, stderr:\n%s", code, stderr)
	}
}

func TestCompletion(t *testing.T) {
	kc := unreachableKubeconfig(t)
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"__complete", "connect", "--kubeconfig", kc, "--context", ""}, []string{"east", "west"}},
		{[]string{"__complete", "connect", "--kubeconfig", kc, "--destination-context", "east,w"}, []string{"east,west"}},
		{[]string{"__complete", "connect", "--connection-mode", ""}, []string{"bidirectional", "unicast", "mesh"}},
		{[]string{"__complete", "status", "-o", ""}, []string{"text", "json", "yaml"}},
	} {
		code, stdout, _ := runCLI(t, tc.args...)
		if code != 0 {
			t.Fatalf("%v: exit %d", tc.args, code)
		}
		lines := strings.Split(strings.TrimSpace(stdout), "\n")
		got := lines[:len(lines)-1] // the last line is the directive
		if strings.Join(got, " ") != strings.Join(tc.want, " ") {
			t.Errorf("%v: completions %q, want %q", tc.args, got, tc.want)
		}
	}
	code, stdout, _ := runCLI(t, "completion", "bash")
	if code != 0 || !strings.Contains(stdout, "__isthmus_") {
		t.Errorf("completion bash: exit %d", code)
	}
}
