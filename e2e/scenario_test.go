package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/e2e/testbed"
)

// scenario is one e2e test's view of the testbed: its context, its
// namespace (the same name in every cluster) and helpers that fail the
// test with the state that explains why.
type scenario struct {
	t   *testing.T
	ctx context.Context
	env *testbed.Env
	// c1 and c2 are the first two clusters; requests start in c1.
	c1, c2 *testbed.Cluster
	ns     string
	// restore undoes what the scenario changed of the mesh, after the
	// failure diagnostics and before the namespace goes.
	restore []func(context.Context)
}

// scenarioTimeout bounds one scenario, waits included.
const scenarioTimeout = 10 * time.Minute

// newScenario starts the testbed if needed, creates the scenario's
// namespace in every cluster, and dumps the mesh's state and logs if the
// test fails.
func newScenario(t *testing.T) *scenario {
	t.Helper()
	env := bed.Env(t)
	ctx, cancel := context.WithTimeout(context.Background(), scenarioTimeout)
	if d, ok := t.Deadline(); ok {
		ctx, cancel = context.WithDeadline(context.Background(), d.Add(-30*time.Second))
	}
	t.Cleanup(cancel)
	s := &scenario{t: t, ctx: ctx, env: env, c1: env.Clusters[0], c2: env.Clusters[1]}
	s.ns = namespaceFor(t.Name())
	for _, c := range env.Clusters {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.ns, Labels: map[string]string{"isthmus.dev/e2e": "true"}}}
		if _, err := c.Kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create namespace %s in %s: %v", s.ns, c, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if t.Failed() {
			s.diagnose(ctx)
		}
		for _, f := range slices.Backward(s.restore) {
			f(ctx)
		}
		for _, c := range env.Clusters {
			err := c.Kube.CoreV1().Namespaces().Delete(ctx, s.ns, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete namespace %s in %s: %v", s.ns, c, err)
			}
		}
	})
	return s
}

// afterwards runs f when the test ends, after the failure diagnostics, to
// put the mesh back as the next scenario expects it.
func (s *scenario) afterwards(f func(context.Context)) { s.restore = append(s.restore, f) }

// namespaceFor derives a unique namespace name from a test name.
func namespaceFor(test string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case b.Len() > 0 && !strings.HasSuffix(b.String(), "-"):
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-")
	name = strings.TrimPrefix(name, "test")
	if len(name) > 40 {
		name = name[:40]
	}
	return "e2e-" + strings.Trim(name, "-") + "-" + strings.ToLower(rand.Text()[:5])
}

// diagnose logs what each agent holds and the tails of the mesh's logs.
func (s *scenario) diagnose(ctx context.Context) {
	var b bytes.Buffer
	for _, c := range s.env.Clusters {
		nodes, err := c.AgentNodes(ctx)
		if err != nil {
			fmt.Fprintf(&b, "%s: %v\n", c, err)
		}
		for _, n := range nodes {
			if st, err := c.AgentStatus(ctx, n); err != nil {
				fmt.Fprintf(&b, "agent of %s/%s: %v\n", c, n, err)
			} else {
				fmt.Fprintf(&b, "agent of %s/%s: %s\n", c, n, agentClusters(st))
			}
			if m, err := c.AgentMaps(ctx, n); err == nil {
				fmt.Fprintf(&b, "  services:\n")
				for _, svc := range m.Services {
					fmt.Fprintf(&b, "    %s\n", serviceLine(svc))
				}
				fmt.Fprintf(&b, "  ipcache: %d entries, identities: %d\n", len(m.IPCache), len(m.Identities))
			}
		}
		c.Diagnose(ctx, &b)
	}
	s.t.Logf("state of the mesh at the failure:\n%s", b.String())
}

// eventually polls cond until it reports done, failing the test with
// cond's last account of the state when timeout passes.
func (s *scenario) eventually(what string, timeout time.Duration, cond func() (done bool, state string)) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(s.ctx, timeout)
	defer cancel()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	begin := time.Now()
	for {
		done, state := cond()
		if done {
			s.t.Logf("%s (after %s)", what, time.Since(begin).Round(10*time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			s.t.Fatalf("waiting %s for %s: %v\nlast state:\n%s", timeout, what, context.Cause(ctx), state)
		case <-tick.C:
		}
	}
}

// must fails the test on err.
func (s *scenario) must(err error, doing string) {
	s.t.Helper()
	if err != nil {
		s.t.Fatalf("%s: %v", doing, err)
	}
}

// cli runs the isthmus CLI and fails the test unless it exits 0.
func (s *scenario) cli(args ...string) testbed.CLIResult {
	s.t.Helper()
	res, err := s.env.CLI(s.ctx, args...)
	s.must(err, "run the CLI")
	if res.Code != 0 {
		s.t.Fatalf("isthmus %s failed:\n%s", strings.Join(args, " "), res)
	}
	s.t.Logf("%s", res)
	return res
}

// clusterNames returns the names of clusters.
func clusterNames(cs ...*testbed.Cluster) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	slices.Sort(out)
	return out
}
