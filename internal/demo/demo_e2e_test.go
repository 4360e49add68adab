package demo_test

import (
	"bytes"
	"context"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/internal/demo"
	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/labtest"
	"github.com/isthmus-mesh/isthmus/internal/privileged"
)

// verdictLine is one connection's outcome as the demo prints it.
var verdictLine = regexp.MustCompile(`(?m)^\s+(frontend|client)\s+-> \S+ \S+: (allowed|denied|failed)\b`)

// TestDemo runs the real demo, as `make demo` does, on a lab of its own
// (a fresh name, so it runs beside the default lab and other tests' labs):
// the demo brings the lab up, connects it, shows the global service and
// the policy. It checks the demo succeeds, that its verdicts come in the
// order the walkthrough promises (both pods allowed, then client denied
// and frontend allowed under the policy, then client allowed again), that
// the agent's flows show the drop with the policy's name, and that no
// policy is left behind.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("brings up a lab; skipped with -short")
	}
	privileged.Require(t)
	dir := t.TempDir()
	bins, err := labtest.BuildTo(dir)
	if err != nil {
		t.Fatal(err)
	}
	if bins.MeshAPIServer == "" || bins.Agent == "" {
		t.Fatal("the demo needs cmd/isthmus-apiserver and cmd/isthmus-agent")
	}
	name := labtest.Name()
	t.Logf("lab %s", name)
	t.Cleanup(func() {
		if t.Failed() {
			if l, err := lab.Open("", name); err == nil {
				labtest.DumpLogs(t, l)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := lab.Down(ctx, "", name); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute) // includes a first kube build
	defer cancel()

	var out bytes.Buffer
	if err := demo.Run(ctx, demo.Config{Bin: dir, Out: &out, Requests: 4, Lab: name}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	text := out.String()

	var got []string
	for _, m := range verdictLine.FindAllStringSubmatch(text, -1) {
		got = append(got, m[1]+" "+m[2])
	}
	want := []string{
		"frontend allowed", "client allowed", // before the policy
		"client denied", "frontend allowed", // under it
		"client allowed", // after its deletion
	}
	if !slices.Equal(got, want) {
		t.Errorf("verdicts %q, want %q\n%s", got, want, text)
	}
	for _, s := range []string{
		"DROPPED policy-no-match policy " + demo.Namespace + "/echo-from-frontend", // isthmus-agent flows
		"MeshNetworkPolicy: 1 policy;",                                             // isthmus-agent status
		"lab exec --name " + name + " ",                                            // commands name the lab
	} {
		if !strings.Contains(text, s) {
			t.Errorf("the demo's output lacks %q\n%s", s, text)
		}
	}

	l, err := lab.Open("", name)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := l.RESTConfig(l.Contexts()[1])
	if err != nil {
		t.Fatal(err)
	}
	mesh, err := client.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	left, err := mesh.MeshNetworkPolicies(demo.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(left.Items); n != 0 {
		t.Errorf("the demo left %d MeshNetworkPolicies in %s", n, l.Contexts()[1])
	}
}
