package policy

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// world is the state a sequence of random operations builds: the inputs a
// compiler has been fed.
type world struct {
	idents   map[protocol.NumericIdentity]protocol.Labels
	policies map[types.NamespacedName]*v1alpha1.MeshNetworkPolicy
	onNode   map[protocol.NumericIdentity]bool
	nextID   map[uint32]uint32 // per cluster ID
}

// The vocabulary random worlds are made of.
func propClusters() []string   { return []string{"c1", "c2", "c3", "c4"} }
func propNamespaces() []string { return []string{"shop", "other", "monitoring"} }
func propApps() []string       { return []string{"frontend", "backend", "db", "prometheus"} }

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func randomLabels(r *rand.Rand, cluster string) protocol.Labels {
	pod := map[string]string{"app": pick(r, propApps())}
	if r.IntN(3) == 0 {
		pod["version"] = pick(r, []string{"v1", "v2"})
	}
	ns := pick(r, propNamespaces())
	return protocol.PodSecurityLabels(cluster, ns, "default", pod, map[string]string{"team": ns})
}

func randomPeer(r *rand.Rand) metav1.LabelSelector {
	s := metav1.LabelSelector{}
	if r.IntN(4) != 0 {
		s = sel("app", pick(r, propApps()))
	}
	switch r.IntN(7) {
	case 0: // default: own cluster
	case 1:
		s = sel2(s, labelCluster, pick(r, propClusters()))
	case 2:
		s = withExpr(s, labelCluster, exists)
	case 3:
		s = withExpr(s, labelCluster, in, pick(r, propClusters()), pick(r, propClusters()))
	case 4:
		s = withExpr(s, labelCluster, notIn, pick(r, propClusters()))
	case 5:
		s = withExpr(s, labelCluster, doesNotExist)
	case 6:
		s = sel2(s, "k8s:"+labelCluster, "c9") // not in the mesh
	}
	switch r.IntN(5) {
	case 0:
		s = sel2(s, labelNS, pick(r, propNamespaces()))
	case 1:
		s = withExpr(s, labelNS, exists)
	case 2:
		s = sel2(s, protocol.LabelNamespaceLabelPrefix+"team", pick(r, propNamespaces()))
	}
	if r.IntN(6) == 0 {
		s = withExpr(s, "version", pick(r, []metav1.LabelSelectorOperator{in, notIn, exists, doesNotExist}), "v1")
	}
	return s
}

func sel2(s metav1.LabelSelector, k, v string) metav1.LabelSelector {
	out := s.DeepCopy()
	if out.MatchLabels == nil {
		out.MatchLabels = map[string]string{}
	}
	out.MatchLabels[k] = v
	return *out
}

func randomPorts(r *rand.Rand) []v1alpha1.PortRule {
	if r.IntN(3) == 0 {
		return nil
	}
	var specs []string
	for range 1 + r.IntN(3) {
		specs = append(specs, pick(r, []string{"80/TCP", "443/TCP", "53/UDP", "53/ANY", "53", "/UDP", "/ANY", "8080/SCTP"}))
	}
	return ports(specs...)
}

func randomPolicy(r *rand.Rand, ns, name string) *v1alpha1.MeshNetworkPolicy {
	spec := v1alpha1.MeshNetworkPolicySpec{}
	switch r.IntN(4) {
	case 0:
		spec.EndpointSelector = sel()
	case 1, 2:
		spec.EndpointSelector = sel("app", pick(r, propApps()))
	case 3:
		spec.EndpointSelector = withExpr(sel(), "app", notIn, pick(r, propApps()))
	}
	peerList := func() []metav1.LabelSelector {
		var ps []metav1.LabelSelector
		for range r.IntN(3) {
			ps = append(ps, randomPeer(r))
		}
		return ps
	}
	for range r.IntN(3) {
		spec.Ingress = append(spec.Ingress, ingressFrom(peerList(), randomPorts(r)))
	}
	for range r.IntN(3) {
		spec.Egress = append(spec.Egress, egressTo(peerList(), randomPorts(r)))
	}
	if r.IntN(12) == 0 { // an invalid one now and then
		switch r.IntN(3) {
		case 0:
			spec.Ingress = append(spec.Ingress, ingressFrom(nil, ports("http/TCP")))
		case 1:
			spec.Egress = append(spec.Egress, egressTo(peers(withExpr(sel(), "app", "Equals", "x")), nil))
		case 2:
			spec.EndpointSelector = withExpr(sel(), "app", "Equals", "x")
		}
	}
	return mnp(ns, name, spec)
}

// step applies one random operation to w and c.
func (w *world) step(t *testing.T, r *rand.Rand, c *Compiler) {
	ids := slices.Sorted(func(yield func(protocol.NumericIdentity) bool) {
		for id := range w.idents {
			if !yield(id) {
				return
			}
		}
	})
	switch op := r.IntN(10); {
	case op < 4 || len(ids) == 0: // new identity
		cluster := pick(r, propClusters())
		cid, _ := clusterID(cluster)
		id := protocol.ComposeIdentity(cid, protocol.MinLocalIdentity+w.nextID[cid], protocol.MaxConnectedClusters255)
		w.nextID[cid]++
		ls := randomLabels(r, cluster)
		w.idents[id] = ls
		c.UpsertIdentity(id, ls)
	case op < 6: // identity goes
		id := pick(r, ids)
		delete(w.idents, id)
		c.DeleteIdentity(id)
	case op == 6: // identity relabelled (same cluster)
		id := pick(r, ids)
		cluster, _ := w.idents[id].Get(labelCluster)
		ls := randomLabels(r, cluster)
		w.idents[id] = ls
		c.UpsertIdentity(id, ls)
	case op == 7: // policy added or replaced
		ref := types.NamespacedName{Namespace: pick(r, propNamespaces()), Name: fmt.Sprintf("p%d", r.IntN(6))}
		p := randomPolicy(r, ref.Namespace, ref.Name)
		w.policies[ref] = p
		err := c.UpsertPolicy(p)
		if (err == nil) != (Validate(p) == nil) {
			t.Fatalf("UpsertPolicy = %v but Validate = %v", err, Validate(p))
		}
	case op == 8: // policy deleted
		for ref := range w.policies {
			delete(w.policies, ref)
			c.DeletePolicy(ref.Namespace, ref.Name)
			break
		}
	case op == 9: // node mark flips
		var id protocol.NumericIdentity
		if r.IntN(5) == 0 {
			id = protocol.ComposeIdentity(1, protocol.MinLocalIdentity+uint32(r.IntN(50)), protocol.MaxConnectedClusters255) // maybe unknown yet
		} else {
			id = pick(r, ids)
		}
		on := !w.onNode[id]
		w.onNode[id] = on
		c.SetNodeIdentity(id, on)
	}
}

// ruleOrder returns the policies in the order of their rule IDs in c.
func ruleOrder(t *testing.T, c *Compiler, w *world) []types.NamespacedName {
	refs := make([]types.NamespacedName, 0, len(w.policies))
	ids := map[types.NamespacedName]uint32{}
	for ref := range w.policies {
		s, ok := c.Selection(ref.Namespace, ref.Name)
		if !ok {
			t.Fatalf("compiler lost policy %v", ref)
		}
		ids[ref] = s.RuleID
		refs = append(refs, ref)
	}
	slices.SortFunc(refs, func(a, b types.NamespacedName) int { return int(ids[a]) - int(ids[b]) })
	return refs
}

// fresh compiles w from scratch, feeding policies in the given order (so
// rule IDs rank the same) and identities in random order.
func (w *world) fresh(t *testing.T, r *rand.Rand, cfg Config, order []types.NamespacedName) *Compiler {
	c := newCompiler(t, cfg)
	// Half the time policies first, half the time identities first.
	policiesFirst := r.IntN(2) == 0
	feedPolicies := func() {
		for _, ref := range order {
			c.UpsertPolicy(w.policies[ref])
		}
	}
	if policiesFirst {
		feedPolicies()
	}
	ids := make([]protocol.NumericIdentity, 0, len(w.idents))
	for id := range w.idents {
		ids = append(ids, id)
	}
	r.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for _, id := range ids {
		c.UpsertIdentity(id, w.idents[id])
	}
	for id, on := range w.onNode {
		if on {
			c.SetNodeIdentity(id, true)
		}
	}
	if !policiesFirst {
		feedPolicies()
	}
	return c
}

// byPolicy turns rule IDs into policy names, so that two compilers can be
// compared.
func byPolicy(t *testing.T, c *Compiler, entries map[maps.PolicyEntryKey]maps.PolicyEntry) map[maps.PolicyEntryKey]types.NamespacedName {
	out := make(map[maps.PolicyEntryKey]types.NamespacedName, len(entries))
	for k, e := range entries {
		ref, ok := c.PolicyForRule(e.RuleID)
		if !ok || e.Verdict != maps.Allow {
			t.Fatalf("entry %+v = %+v: unknown rule or not allow", k, e)
		}
		out[k] = ref
	}
	return out
}

// reference computes the desired state by brute force from the package
// doc's rules, sharing only the spec compiler and selector matching with
// the Compiler: every policy against every identity, no index, no counts.
// It returns, per entry, the policies that produce it.
func (w *world) reference(cluster string, nodeScoped bool) (map[maps.PolicyEntryKey][]types.NamespacedName, map[protocol.NumericIdentity]maps.Enforced) {
	entries := map[maps.PolicyEntryKey][]types.NamespacedName{}
	enf := map[protocol.NumericIdentity]maps.Enforced{}
	for ref, p := range w.policies {
		spec := compilePolicy(p, cluster)
		if spec.subject == nil {
			continue
		}
		for id, ls := range w.idents {
			set := ls.Map()
			if set[labelCluster] != cluster || nodeScoped && !w.onNode[id] || !spec.subject.matches(set) {
				continue
			}
			e := enf[id]
			e.Ingress = e.Ingress || spec.ingress
			e.Egress = e.Egress || spec.egress
			if e.Ingress || e.Egress {
				enf[id] = e
			}
			for _, rs := range spec.rules {
				var remotes []protocol.NumericIdentity
				if rs.anyPeer {
					remotes = append(remotes, 0)
				}
				for rid, rls := range w.idents {
					rset := rls.Map()
					if rset[labelCluster] == cluster {
						continue
					}
					if slices.ContainsFunc(rs.peers, func(s selectorSpec) bool { return s.matches(rset) }) {
						remotes = append(remotes, rid)
					}
				}
				for _, remote := range remotes {
					for _, q := range rs.ports {
						k := maps.PolicyEntryKey{Direction: rs.dir, LocalIdentity: id, RemoteIdentity: remote, Port: q.port, Protocol: q.proto}
						if !slices.Contains(entries[k], ref) {
							entries[k] = append(entries[k], ref)
						}
					}
				}
			}
		}
	}
	return entries, enf
}

// TestIncrementalEqualsFullCompile runs random sequences of identity,
// policy and node changes through one Compiler and checks, at random
// points, that (1) its Snapshot equals a from-scratch compile of the same
// inputs, (2) equals a brute-force reference, and (3) the changes it handed
// out, applied in order to an empty map, add up to the same state.
func TestIncrementalEqualsFullCompile(t *testing.T) {
	seeds, steps := 60, 400
	if testing.Short() {
		seeds, steps = 15, 200
	}
	for seed := range seeds {
		for _, nodeScoped := range []bool{false, true} {
			t.Run(fmt.Sprintf("seed=%d/nodeScoped=%v", seed, nodeScoped), func(t *testing.T) {
				r := rand.New(rand.NewPCG(uint64(seed), 0x15_7_4_0_5))
				cfg := Config{Cluster: "c1", NodeScoped: nodeScoped}
				c := newCompiler(t, cfg)
				w := &world{
					idents:   map[protocol.NumericIdentity]protocol.Labels{},
					policies: map[types.NamespacedName]*v1alpha1.MeshNetworkPolicy{},
					onNode:   map[protocol.NumericIdentity]bool{},
					nextID:   map[uint32]uint32{},
				}
				applied := map[maps.PolicyEntryKey]maps.PolicyEntry{}
				appliedEnf := map[protocol.NumericIdentity]maps.Enforced{}
				for i := range steps {
					w.step(t, r, c)
					if r.IntN(4) == 0 {
						applyChanges(c.TakeChanges(), applied, appliedEnf)
					}
					if r.IntN(50) != 0 && i != steps-1 {
						continue
					}
					applyChanges(c.TakeChanges(), applied, appliedEnf)
					check(t, r, c, w, cfg, applied, appliedEnf)
					if t.Failed() {
						t.Fatalf("diverged after step %d", i)
					}
				}
				if st := c.Stats(); st.Policies != len(w.policies) || st.Identities != len(w.idents) {
					t.Errorf("stats %+v, want %d policies, %d identities", st, len(w.policies), len(w.idents))
				}
				// Tear everything down: nothing may be left.
				for ref := range w.policies {
					c.DeletePolicy(ref.Namespace, ref.Name)
				}
				for id := range w.idents {
					c.DeleteIdentity(id)
				}
				if st := c.Stats(); st != (Stats{}) {
					t.Errorf("after removing everything: %+v", st)
				}
			})
		}
	}
}

func applyChanges(ch Changes, entries map[maps.PolicyEntryKey]maps.PolicyEntry, enf map[protocol.NumericIdentity]maps.Enforced) {
	for k, e := range ch.Upserts {
		entries[k] = e
	}
	for _, k := range ch.Deletes {
		delete(entries, k)
	}
	for id, e := range ch.Enforcement {
		if e == (maps.Enforced{}) {
			delete(enf, id)
		} else {
			enf[id] = e
		}
	}
}

func check(t *testing.T, r *rand.Rand, c *Compiler, w *world, cfg Config,
	applied map[maps.PolicyEntryKey]maps.PolicyEntry, appliedEnf map[protocol.NumericIdentity]maps.Enforced) {
	t.Helper()
	entries, enf := c.Snapshot()
	if !mapsEqual(entries, applied) {
		t.Errorf("changes applied in order give %d entries, Snapshot %d", len(applied), len(entries))
	}
	if !mapsEqual(enf, appliedEnf) {
		t.Errorf("changes applied in order give enforcement %v, Snapshot %v", appliedEnf, enf)
	}

	order := ruleOrder(t, c, w)
	f := w.fresh(t, r, cfg, order)
	fEntries, fEnf := f.Snapshot()
	if got, want := byPolicy(t, c, entries), byPolicy(t, f, fEntries); !mapsEqual(got, want) {
		t.Errorf("incremental has %d entries, a fresh compile %d", len(got), len(want))
		for k, ref := range want {
			if got[k] != ref {
				t.Logf("  fresh %s by %v, incremental by %v", keyString(k), ref, got[k])
			}
		}
		for k, ref := range got {
			if _, ok := want[k]; !ok {
				t.Logf("  incremental only %s by %v", keyString(k), ref)
			}
		}
	}
	if !mapsEqual(enf, fEnf) {
		t.Errorf("enforcement: incremental %v, fresh %v", enf, fEnf)
	}

	refEntries, refEnf := w.reference(cfg.Cluster, cfg.NodeScoped)
	if len(refEntries) != len(entries) {
		t.Errorf("reference has %d entries, compiler %d", len(refEntries), len(entries))
	}
	rank := map[types.NamespacedName]int{}
	for i, ref := range order {
		rank[ref] = i
	}
	for k, refs := range refEntries {
		e, ok := entries[k]
		if !ok {
			t.Errorf("missing entry %s (from %v)", keyString(k), refs)
			continue
		}
		lowest := slices.MinFunc(refs, func(a, b types.NamespacedName) int { return rank[a] - rank[b] })
		if got, _ := c.PolicyForRule(e.RuleID); got != lowest {
			t.Errorf("entry %s names %v, want %v (lowest rule ID of %v)", keyString(k), got, lowest, refs)
		}
	}
	if !mapsEqual(enf, refEnf) {
		t.Errorf("enforcement %v, reference %v", enf, refEnf)
	}
}
