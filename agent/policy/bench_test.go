package policy

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// The benchmark mesh (BENCHMARKS.md describes it): 10 clusters c1..c10 (c1
// is local), 100 namespaces, 5 apps with 5 versions each, so one identity
// per (cluster, namespace, app, version): 10 × 100 × 25 = 25,000
// identities. Namespace ns-000 is "monitoring" and runs prometheus.
const (
	benchClusters   = 10
	benchNamespaces = 100
	benchVersions   = 5
)

func benchApps() []string { return []string{"frontend", "backend", "db", "cache", "worker"} }

func benchNS(i int) string {
	if i%benchNamespaces == 0 {
		return "monitoring"
	}
	return fmt.Sprintf("ns-%03d", i%benchNamespaces)
}

type benchIdentity struct {
	id     protocol.NumericIdentity
	labels protocol.Labels
}

func benchIdentities() []benchIdentity {
	var out []benchIdentity
	for c := 1; c <= benchClusters; c++ {
		cluster := fmt.Sprintf("c%d", c)
		n := uint32(0)
		for ns := range benchNamespaces {
			for _, app := range benchApps() {
				if ns == 0 && app == "worker" {
					app = "prometheus"
				}
				for v := range benchVersions {
					labels := protocol.PodSecurityLabels(cluster, benchNS(ns), app, map[string]string{"app": app, "version": fmt.Sprintf("v%d", v)}, map[string]string{"team": benchNS(ns)})
					out = append(out, benchIdentity{protocol.ComposeIdentity(uint32(c), protocol.MinLocalIdentity+n, protocol.MaxConnectedClusters255), labels})
					n++
				}
			}
		}
	}
	return out
}

// benchPolicies returns 10 policies per namespace, 1,000 in all, in five
// shapes (see BENCHMARKS.md).
func benchPolicies() []*v1alpha1.MeshNetworkPolicy {
	var out []*v1alpha1.MeshNetworkPolicy
	clusterIn := func(s metav1.LabelSelector, cs ...string) metav1.LabelSelector {
		return withExpr(s, labelCluster, in, cs...)
	}
	for i := range benchNamespaces {
		ns := benchNS(i)
		// A: per-app ingress from frontends of c2 and c3 and workers of
		// c4, on two ports. Five of them, one per app.
		for _, app := range benchApps() {
			out = append(out, mnp(ns, "ingress-"+app, v1alpha1.MeshNetworkPolicySpec{
				EndpointSelector: sel("app", app),
				Ingress: []v1alpha1.IngressRule{ingressFrom(peers(
					clusterIn(sel("app", "frontend"), "c2", "c3"),
					sel("app", "worker", labelCluster, "c4"),
				), ports("8080/TCP", "9090/TCP"))},
			}))
		}
		// B: backends may reach the db of this namespace in every cluster;
		// written twice (two teams), producing the same entries.
		for _, name := range []string{"egress-db", "egress-db-team"} {
			out = append(out, mnp(ns, name, v1alpha1.MeshNetworkPolicySpec{
				EndpointSelector: sel("app", "backend"),
				Egress: []v1alpha1.EgressRule{egressTo(peers(
					withExpr(sel("app", "db"), labelCluster, exists),
				), ports("5432/TCP"))},
			}))
		}
		// C: a port open to everyone (ports only, ANY protocol).
		out = append(out, mnp(ns, "dns", v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: sel(),
			Ingress:          []v1alpha1.IngressRule{ingressFrom(nil, ports("53/ANY"))},
		}))
		// D: prometheus of every cluster scrapes the whole namespace.
		out = append(out, mnp(ns, "monitoring", v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: sel(),
			Ingress: []v1alpha1.IngressRule{ingressFrom(peers(
				withExpr(sel(labelNS, "monitoring", "app", "prometheus"), labelCluster, exists),
			), ports("9100/TCP"))},
		}))
		// E: frontends accept the whole next namespace from c2..c5, any port.
		out = append(out, mnp(ns, "team", v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: sel("app", "frontend"),
			Ingress: []v1alpha1.IngressRule{ingressFrom(peers(
				clusterIn(sel(labelNS, benchNS(i+1)), "c2", "c3", "c4", "c5"),
			), nil)},
		}))
	}
	return out
}

// cpuTime is the CPU time this process has used. The benchmarks report it
// per operation next to wall time, because the shared development machine
// is often oversubscribed and wall time then mostly measures waiting.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// loop runs body as b.Loop does and reports CPU time per iteration.
func loop(b *testing.B, body func()) {
	start := cpuTime(b)
	for b.Loop() {
		body()
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

// benchNodeShare: with NodeScoped, one local identity in 50 is on the node.
const benchNodeShare = 50

func newBenchCompiler(b *testing.B, nodeScoped bool, ids []benchIdentity, pols []*v1alpha1.MeshNetworkPolicy) *Compiler {
	c, err := New(Config{Cluster: "c1", NodeScoped: nodeScoped})
	if err != nil {
		b.Fatal(err)
	}
	if nodeScoped {
		for i, id := range ids {
			if i%benchNodeShare == 0 {
				c.SetNodeIdentity(id.id, true)
			}
		}
	}
	for _, id := range ids {
		c.UpsertIdentity(id.id, id.labels)
	}
	for _, p := range pols {
		if err := c.UpsertPolicy(p); err != nil {
			b.Fatal(err)
		}
	}
	return c
}

// BenchmarkFullCompile compiles 1,000 policies against 25,000 identities
// from nothing. An agent then reads the result with Snapshot
// (BenchmarkSnapshot) to reconcile the maps.
func BenchmarkFullCompile(b *testing.B) {
	ids, pols := benchIdentities(), benchPolicies()
	for _, nodeScoped := range []bool{false, true} {
		b.Run(fmt.Sprintf("nodeScoped=%v", nodeScoped), func(b *testing.B) {
			var st Stats
			loop(b, func() {
				st = newBenchCompiler(b, nodeScoped, ids, pols).Stats()
			})
			b.ReportMetric(float64(st.Entries), "entries")
			b.ReportMetric(float64(st.EnforcedIdentities), "enforced")
			b.ReportMetric(float64(st.Selectors), "selectors")
		})
	}
}

// BenchmarkSnapshot measures reading the whole desired state for a full
// reconcile.
func BenchmarkSnapshot(b *testing.B) {
	c := newBenchCompiler(b, false, benchIdentities(), benchPolicies())
	loop(b, func() { c.Snapshot() })
}

// BenchmarkAbsorbIdentity measures one identity arriving and leaving again
// (two events) in the full mesh, with the changes taken each time: a
// remote one that is a peer of several rules, and a local one that is the
// subject of several policies.
func BenchmarkAbsorbIdentity(b *testing.B) {
	ids, pols := benchIdentities(), benchPolicies()
	cases := []struct {
		name    string
		cluster string
		cid     uint32
		ns      string
		app     string
	}{
		{"remote-frontend", "c2", 2, "ns-050", "frontend"},
		{"remote-prometheus", "c7", 7, "monitoring", "prometheus"},
		{"local-frontend", "c1", 1, "ns-050", "frontend"},
		{"unmatched", "c9", 9, "ns-050", "batch"},
	}
	for _, nodeScoped := range []bool{false, true} {
		c := newBenchCompiler(b, nodeScoped, ids, pols)
		c.TakeChanges()
		for _, tc := range cases {
			b.Run(fmt.Sprintf("nodeScoped=%v/%s", nodeScoped, tc.name), func(b *testing.B) {
				id := protocol.ComposeIdentity(tc.cid, 60000, protocol.MaxConnectedClusters255)
				labels := protocol.PodSecurityLabels(tc.cluster, tc.ns, tc.app, map[string]string{"app": tc.app, "version": "v9"}, map[string]string{"team": tc.ns})
				c.SetNodeIdentity(id, true)
				var upserts int
				loop(b, func() {
					c.UpsertIdentity(id, labels)
					upserts = len(c.TakeChanges().Upserts)
					c.DeleteIdentity(id)
					c.TakeChanges()
				})
				b.ReportMetric(float64(upserts), "entries/identity")
			})
		}
	}
}

// BenchmarkUpdatePolicy measures replacing one policy by a changed version
// and back, with the changes taken each time.
func BenchmarkUpdatePolicy(b *testing.B) {
	pols := benchPolicies()
	c := newBenchCompiler(b, false, benchIdentities(), pols)
	c.TakeChanges()
	p := pols[3] // an ingress-app policy
	q := p.DeepCopy()
	q.Spec.Ingress[0].ToPorts = ports("8080/TCP", "9091/TCP")
	loop(b, func() {
		if err := c.UpsertPolicy(q); err != nil {
			b.Fatal(err)
		}
		c.TakeChanges()
		if err := c.UpsertPolicy(p); err != nil {
			b.Fatal(err)
		}
		c.TakeChanges()
	})
}

// BenchmarkFullCompileBroad is the shape that explodes: every namespace
// accepts any pod of any namespace in any cluster on one port, written as
// peers ({cluster Exists, namespace Exists}) rather than as a ports-only
// rule. Entries grow as subjects × remote identities; only the node-scoped
// variant fits in memory here (see BENCHMARKS.md).
func BenchmarkFullCompileBroad(b *testing.B) {
	ids := benchIdentities()
	var pols []*v1alpha1.MeshNetworkPolicy
	for i := range benchNamespaces {
		pols = append(pols, mnp(benchNS(i), "anyone", v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: sel(),
			Ingress: []v1alpha1.IngressRule{ingressFrom(peers(
				withExpr(withExpr(sel(), labelCluster, exists), labelNS, exists),
			), ports("8080/TCP"))},
		}))
	}
	var st Stats
	loop(b, func() { st = newBenchCompiler(b, true, ids, pols).Stats() })
	b.ReportMetric(float64(st.Entries), "entries")
}
