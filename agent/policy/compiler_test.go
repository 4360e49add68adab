package policy

import (
	"slices"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	in           = metav1.LabelSelectorOpIn
	notIn        = metav1.LabelSelectorOpNotIn
	exists       = metav1.LabelSelectorOpExists
	doesNotExist = metav1.LabelSelectorOpDoesNotExist
)

// TestPeerSelectorDefaults checks which identities a peer selector of a
// policy in namespace shop of cluster c1 selects: the cluster and namespace
// defaults, and the ways to lift them.
func TestPeerSelectorDefaults(t *testing.T) {
	tests := []struct {
		name string
		peer metav1.LabelSelector
		want []string
	}{
		{"no cluster or namespace: own cluster and namespace", sel("app", "frontend"),
			[]string{"c1/shop/frontend"}},
		{"empty selector: all of own cluster and namespace", sel(),
			[]string{"c1/shop/frontend", "c1/shop/backend"}},
		{"cluster named in matchLabels", sel("app", "frontend", labelCluster, "c2"),
			[]string{"c2/shop/frontend"}},
		{"cluster Exists spans every cluster", withExpr(sel("app", "frontend"), labelCluster, exists),
			[]string{"c1/shop/frontend", "c2/shop/frontend", "c3/shop/frontend"}},
		{"cluster In", withExpr(sel(), labelCluster, in, "c2", "c3"),
			[]string{"c2/shop/frontend", "c2/shop/backend", "c3/shop/frontend", "c3/shop/backend"}},
		{"cluster NotIn includes the own cluster", withExpr(sel("app", "backend"), labelCluster, notIn, "c2"),
			[]string{"c1/shop/backend", "c3/shop/backend"}},
		{"cluster DoesNotExist matches nothing", withExpr(sel(), labelCluster, doesNotExist),
			nil},
		{"cluster that does not exist", sel("app", "frontend", labelCluster, "c9"),
			nil},
		{"namespace named: that namespace, own cluster", sel(labelNS, "other"),
			[]string{"c1/other/frontend"}},
		{"namespace and cluster named", sel(labelNS, "monitoring", labelCluster, "c2", "app", "prometheus"),
			[]string{"c2/monitoring/prometheus"}},
		{"namespace Exists and cluster Exists: everywhere", withExpr(withExpr(sel("app", "frontend"), labelNS, exists), labelCluster, exists),
			[]string{"c1/shop/frontend", "c2/shop/frontend", "c3/shop/frontend", "c1/other/frontend", "c2/other/frontend"}},
		{"namespace NotIn", withExpr(withExpr(sel("app", "frontend"), labelNS, notIn, "shop"), labelCluster, exists),
			[]string{"c1/other/frontend", "c2/other/frontend"}},
		{"k8s: source prefix", sel("k8s:app", "frontend", "k8s:"+labelCluster, "c3"),
			[]string{"c3/shop/frontend"}},
		{"any: source prefix", sel("any:app", "frontend", "any:"+labelCluster, "c3"),
			[]string{"c3/shop/frontend"}},
		{"namespace labels lift the namespace default", withExpr(sel(protocol.LabelNamespaceLabelPrefix+"team", "other"), labelCluster, exists),
			[]string{"c1/other/frontend", "c2/other/frontend"}},
		{"namespace labels keep the cluster default", sel("k8s:"+protocol.LabelNamespaceLabelPrefix+"team", "other"),
			[]string{"c1/other/frontend"}},
		{"app NotIn keeps the defaults", withExpr(sel(), "app", notIn, "frontend"),
			[]string{"c1/shop/backend"}},
		{"app DoesNotExist", withExpr(sel(), "app", doesNotExist),
			nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := standardMesh(t)
			c := newCompiler(t, Config{})
			m.feed(c)
			p := mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
				Ingress: []v1alpha1.IngressRule{ingressFrom(peers(tc.peer), nil)},
			})
			if err := c.UpsertPolicy(p); err != nil {
				t.Fatal(err)
			}
			s, ok := c.Selection("shop", "p")
			if !ok || len(s.Rules) != 1 {
				t.Fatalf("Selection = %+v, %v", s, ok)
			}
			checkIDs(t, m, "peers", s.Rules[0].Peers, m.ids(t, tc.want...))
		})
	}
}

func checkIDs(t *testing.T, m *mesh, what string, got, want []protocol.NumericIdentity) {
	t.Helper()
	got, want = slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))
	if !slices.Equal(got, want) {
		names := func(ids []protocol.NumericIdentity) []string {
			var out []string
			for _, id := range ids {
				out = append(out, m.nameOf(id))
			}
			return out
		}
		t.Errorf("%s = %v, want %v", what, names(got), names(want))
	}
}

// TestEndpointSelector checks that a policy's endpointSelector is confined
// to the local cluster and the policy's namespace.
func TestEndpointSelector(t *testing.T) {
	tests := []struct {
		name string
		sel  metav1.LabelSelector
		want []string
	}{
		{"empty: the whole namespace", sel(), []string{"c1/shop/frontend", "c1/shop/backend"}},
		{"by app", sel("app", "backend"), []string{"c1/shop/backend"}},
		{"naming another cluster selects nothing", sel(labelCluster, "c2"), nil},
		{"cluster Exists does not widen", withExpr(sel("app", "backend"), labelCluster, exists), []string{"c1/shop/backend"}},
		{"naming another namespace selects nothing", sel(labelNS, "other"), nil},
		{"NotIn", withExpr(sel(), "app", notIn, "backend"), []string{"c1/shop/frontend"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := standardMesh(t)
			c := newCompiler(t, Config{})
			m.feed(c)
			if err := c.UpsertPolicy(mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
				EndpointSelector: tc.sel,
				Ingress:          []v1alpha1.IngressRule{{}},
			})); err != nil {
				t.Fatal(err)
			}
			s, _ := c.Selection("shop", "p")
			checkIDs(t, m, "endpoints", s.Endpoints, m.ids(t, tc.want...))
			_, enf := c.Snapshot()
			var enforced []protocol.NumericIdentity
			for id, e := range enf {
				if !e.Ingress || e.Egress {
					t.Errorf("identity %s enforced %+v, want ingress only", m.nameOf(id), e)
				}
				enforced = append(enforced, id)
			}
			checkIDs(t, m, "enforced", enforced, m.ids(t, tc.want...))
		})
	}
}

// TestAllowFrontendToBackend is the example: frontend in c2 may
// call backend in c1 on 8080/TCP.
func TestAllowFrontendToBackend(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{})
	m.feed(c)
	if err := c.UpsertPolicy(mnp("shop", "backend", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress: []v1alpha1.IngressRule{
			ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("8080/TCP")),
		},
	})); err != nil {
		t.Fatal(err)
	}
	got := wantEntries(t, m, c,
		key(maps.Ingress, m.id(t, "c1/shop/backend"), m.id(t, "c2/shop/frontend"), 8080, maps.ProtoTCP))
	s, _ := c.Selection("shop", "backend")
	for k, e := range got {
		if e.Verdict != maps.Allow || e.RuleID != s.RuleID {
			t.Errorf("entry %s = %+v, want allow with rule %d", m.describe(k), e, s.RuleID)
		}
	}
	if ref, ok := c.PolicyForRule(s.RuleID); !ok || ref.Namespace != "shop" || ref.Name != "backend" {
		t.Errorf("PolicyForRule(%d) = %v, %v", s.RuleID, ref, ok)
	}
	_, enf := c.Snapshot()
	want := map[protocol.NumericIdentity]maps.Enforced{m.id(t, "c1/shop/backend"): {Ingress: true}}
	if !mapsEqual(enf, want) {
		t.Errorf("enforcement = %v, want %v", enf, want)
	}

	// A new frontend identity in c2 (say, a new version label) gets in
	// without any policy change; one in c3 does not.
	v2 := m.add(t, "c2", "shop", "frontend", "version", "v2")
	c3v2 := m.add(t, "c3", "shop", "frontend", "version", "v2")
	c.UpsertIdentity(v2.id, v2.labels)
	c.UpsertIdentity(c3v2.id, c3v2.labels)
	ch := c.TakeChanges()
	wantUp := key(maps.Ingress, m.id(t, "c1/shop/backend"), v2.id, 8080, maps.ProtoTCP)
	if len(ch.Upserts) != 1 || len(ch.Deletes) != 0 || len(ch.Enforcement) != 0 {
		t.Fatalf("changes after new identities = %+v, want one upsert", ch)
	}
	if _, ok := ch.Upserts[wantUp]; !ok {
		t.Errorf("upserts = %v, want %s", ch.Upserts, m.describe(wantUp))
	}

	// Deleting the policy restores default behaviour: nothing enforced.
	c.DeletePolicy("shop", "backend")
	ch = c.TakeChanges()
	if len(ch.Deletes) != 2 || len(ch.Upserts) != 0 {
		t.Errorf("changes after delete = %+v, want two deletes", ch)
	}
	if e, ok := ch.Enforcement[m.id(t, "c1/shop/backend")]; !ok || e != (maps.Enforced{}) {
		t.Errorf("enforcement change after delete = %v, want backend cleared", ch.Enforcement)
	}
	if entries, enf := c.Snapshot(); len(entries) != 0 || len(enf) != 0 {
		t.Errorf("after delete: %d entries, %d enforced, want none", len(entries), len(enf))
	}
}

func mapsEqual[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRuleForms covers each shape of rule and the port expansion.
func TestRuleForms(t *testing.T) {
	m := standardMesh(t)
	be := m.id(t, "c1/shop/backend")
	fe2, fe3 := m.id(t, "c2/shop/frontend"), m.id(t, "c3/shop/frontend")
	allFE := withExpr(sel("app", "frontend"), labelCluster, exists)
	tests := []struct {
		name string
		spec v1alpha1.MeshNetworkPolicySpec
		want []maps.PolicyEntryKey
		enf  maps.Enforced
	}{
		{
			name: "peers without ports: every port and protocol",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(allFE), nil)}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 0, maps.ProtoAny), key(maps.Ingress, be, fe3, 0, maps.ProtoAny)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "ports without peers: any peer",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(nil, ports("53/UDP"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, 0, 53, maps.ProtoUDP)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "empty rule: nothing allowed, still enforced",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{{}}},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "empty peer list and empty ports: same as empty rule",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{{FromEndpoints: []metav1.LabelSelector{}}}},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "fromEndpoints [{}] is local only: nothing cross-cluster",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel()), ports("80/TCP"))}},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "ANY with a port: TCP, UDP and SCTP",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("53/ANY"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 53, maps.ProtoTCP), key(maps.Ingress, be, fe2, 53, maps.ProtoUDP), key(maps.Ingress, be, fe2, 53, maps.ProtoSCTP)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "no protocol means ANY",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("53"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 53, maps.ProtoTCP), key(maps.Ingress, be, fe2, 53, maps.ProtoUDP), key(maps.Ingress, be, fe2, 53, maps.ProtoSCTP)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "protocol without port: every port of it; covered ports dropped",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("/TCP", "8080/TCP", "53/UDP", "53/UDP"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 0, maps.ProtoTCP), key(maps.Ingress, be, fe2, 53, maps.ProtoUDP)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "ANY without port covers everything",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("/ANY", "8080/TCP"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 0, maps.ProtoAny)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "egress",
			spec: v1alpha1.MeshNetworkPolicySpec{Egress: []v1alpha1.EgressRule{egressTo(peers(sel("app", "frontend", labelCluster, "c3")), ports("443/TCP"))}},
			want: []maps.PolicyEntryKey{key(maps.Egress, be, fe3, 443, maps.ProtoTCP)},
			enf:  maps.Enforced{Egress: true},
		},
		{
			name: "both directions, two peers in one rule, duplicate peer",
			spec: v1alpha1.MeshNetworkPolicySpec{
				Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2"), sel("app", "frontend", labelCluster, "c3"), sel("app", "frontend", labelCluster, "c2")), ports("80/TCP"))},
				Egress:  []v1alpha1.EgressRule{egressTo(nil, ports("53/UDP"))},
			},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 80, maps.ProtoTCP), key(maps.Ingress, be, fe3, 80, maps.ProtoTCP), key(maps.Egress, be, 0, 53, maps.ProtoUDP)},
			enf:  maps.Enforced{Ingress: true, Egress: true},
		},
		{
			name: "overlapping selectors in one rule",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(allFE, sel("app", "frontend", labelCluster, "c2")), ports("80/TCP"))}},
			want: []maps.PolicyEntryKey{key(maps.Ingress, be, fe2, 80, maps.ProtoTCP), key(maps.Ingress, be, fe3, 80, maps.ProtoTCP)},
			enf:  maps.Enforced{Ingress: true},
		},
		{
			name: "no rules: selects but enforces nothing",
			spec: v1alpha1.MeshNetworkPolicySpec{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := newCompiler(t, Config{})
			m.feed(c)
			tc.spec.EndpointSelector = sel("app", "backend")
			if err := c.UpsertPolicy(mnp("shop", "p", tc.spec)); err != nil {
				t.Fatal(err)
			}
			wantEntries(t, m, c, tc.want...)
			_, enf := c.Snapshot()
			if got := enf[be]; got != tc.enf {
				t.Errorf("enforcement of backend = %+v, want %+v", got, tc.enf)
			}
			if len(enf) > 1 {
				t.Errorf("enforcement = %v, want backend only", enf)
			}
			// Removing the policy leaves nothing behind.
			c.DeletePolicy("shop", "p")
			if entries, enf := c.Snapshot(); len(entries) != 0 || len(enf) != 0 {
				t.Errorf("after delete: %d entries, %d enforced", len(entries), len(enf))
			}
			if st := c.Stats(); st.Selectors != 0 || st.Policies != 0 {
				t.Errorf("after delete: stats %+v", st)
			}
		})
	}
}

// TestInvalidPolicies checks each kind of mistake is named with its field,
// allows nothing, and fails closed.
func TestInvalidPolicies(t *testing.T) {
	fe2 := sel("app", "frontend", labelCluster, "c2")
	tests := []struct {
		name      string
		spec      v1alpha1.MeshNetworkPolicySpec
		namespace string
		wantErr   []string // substrings of the error
		enforced  bool     // backend still goes into default deny
	}{
		{
			name:     "bad operator",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(withExpr(sel(), "app", "Equals", "x")), nil)}},
			wantErr:  []string{`spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: Unsupported value: "Equals"`, `"In"`},
			enforced: true,
		},
		{
			name:     "In without values",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(withExpr(sel(), labelCluster, in)), nil)}},
			wantErr:  []string{"spec.ingress[0].fromEndpoints[0].matchExpressions[0].values: Required value: operator In needs at least one value"},
			enforced: true,
		},
		{
			name:     "Exists with values",
			spec:     v1alpha1.MeshNetworkPolicySpec{Egress: []v1alpha1.EgressRule{egressTo(peers(withExpr(sel(), labelCluster, exists, "c2")), nil)}},
			wantErr:  []string{"spec.egress[0].toEndpoints[0].matchExpressions[0].values: Forbidden: operator Exists takes no values"},
			enforced: true,
		},
		{
			name:     "named port",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), ports("http/TCP"))}},
			wantErr:  []string{`spec.ingress[0].toPorts[0].ports[0].port: Invalid value: "http": named ports are not supported`},
			enforced: true,
		},
		{
			name:     "port 0",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), ports("0/TCP"))}},
			wantErr:  []string{"port must be a number from 1 to 65535"},
			enforced: true,
		},
		{
			name:     "port too large",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), ports("65536/TCP"))}},
			wantErr:  []string{`"65536": port must be a number from 1 to 65535`},
			enforced: true,
		},
		{
			name:     "unknown protocol",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), ports("80/ICMP"))}},
			wantErr:  []string{`spec.ingress[0].toPorts[0].ports[0].protocol: Unsupported value: "ICMP"`},
			enforced: true,
		},
		{
			name:     "empty ports list",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{{FromEndpoints: peers(fe2), ToPorts: []v1alpha1.PortRule{{}}}}},
			wantErr:  []string{"spec.ingress[0].toPorts[0].ports: Required value"},
			enforced: true,
		},
		{
			name:     "unsupported label source",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("reserved:world", "")), nil)}},
			wantErr:  []string{`label source "reserved" is not supported`},
			enforced: true,
		},
		{
			name:     "bad label value",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "front end")), nil)}},
			wantErr:  []string{`spec.ingress[0].fromEndpoints[0].matchLabels[app]: Invalid value: "front end"`},
			enforced: true,
		},
		{
			name:     "bad label key",
			spec:     v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("my app", "x")), nil)}},
			wantErr:  []string{"label key holds ' '"},
			enforced: true,
		},
		{
			// Pruned by an old CRD, fromCIDR would leave "any peer on
			// port 80"; refused, the rule allows nothing.
			name: "unsupported CiliumNetworkPolicy peer",
			spec: v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{{
				ToPorts:                  ports("80/TCP"),
				UnsupportedIngressFields: v1alpha1.UnsupportedIngressFields{FromCIDR: []string{"10.0.0.0/8"}},
			}}},
			wantErr:  []string{"spec.ingress[0].fromCIDR: Forbidden: fromCIDR is not supported"},
			enforced: true,
		},
		{
			name:    "invalid endpointSelector: no effect at all",
			spec:    v1alpha1.MeshNetworkPolicySpec{EndpointSelector: withExpr(sel(), "app", "Equals", "backend"), Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), nil)}},
			wantErr: []string{"spec.endpointSelector.matchExpressions[0].operator"},
		},
		{
			name:      "no namespace",
			spec:      v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), nil)}},
			namespace: "-",
			wantErr:   []string{"metadata.namespace: Required value"},
		},
		{
			name: "every problem is named",
			spec: v1alpha1.MeshNetworkPolicySpec{
				Ingress: []v1alpha1.IngressRule{ingressFrom(peers(fe2), ports("http"))},
				Egress:  []v1alpha1.EgressRule{egressTo(peers(withExpr(sel(), "app", "Equals")), nil)},
			},
			wantErr:  []string{"spec.ingress[0].toPorts[0].ports[0].port", "spec.egress[0].toEndpoints[0].matchExpressions[0].operator"},
			enforced: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := standardMesh(t)
			c := newCompiler(t, Config{})
			m.feed(c)
			if tc.spec.EndpointSelector.Size() == 0 {
				tc.spec.EndpointSelector = sel("app", "backend")
			}
			ns := "shop"
			if tc.namespace == "-" {
				ns = ""
			}
			p := mnp(ns, "p", tc.spec)
			err := c.UpsertPolicy(p)
			if err == nil || !IsInvalid(err) {
				t.Fatalf("UpsertPolicy = %v, want an InvalidPolicyError", err)
			}
			if verr := Validate(p); verr == nil || verr.Error() != err.Error() {
				t.Errorf("Validate = %v, want the same error as UpsertPolicy (%v)", verr, err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			cond := AcceptedCondition(7, err)
			if cond.Status != metav1.ConditionFalse || cond.Reason != v1alpha1.ReasonInvalid || cond.ObservedGeneration != 7 ||
				!strings.Contains(cond.Message, tc.wantErr[0]) || !strings.Contains(cond.Message, "allows nothing") {
				t.Errorf("AcceptedCondition = %+v", cond)
			}
			entries, enf := c.Snapshot()
			if len(entries) != 0 {
				t.Errorf("invalid policy produced %d entries", len(entries))
			}
			want := map[protocol.NumericIdentity]maps.Enforced{}
			if tc.enforced {
				want[m.id(t, "c1/shop/backend")] = maps.Enforced{Ingress: len(tc.spec.Ingress) > 0, Egress: len(tc.spec.Egress) > 0}
			}
			if !mapsEqual(enf, want) {
				t.Errorf("enforcement = %v, want %v", enf, want)
			}
			if st := c.Stats(); st.InvalidPolicies != 1 {
				t.Errorf("stats %+v, want one invalid policy", st)
			}

			// Fixing the policy brings it into force.
			fixed := mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
				EndpointSelector: sel("app", "backend"),
				Ingress:          []v1alpha1.IngressRule{ingressFrom(peers(fe2), nil)},
			})
			if err := c.UpsertPolicy(fixed); err != nil {
				t.Fatal(err)
			}
			wantEntries(t, m, c, key(maps.Ingress, m.id(t, "c1/shop/backend"), m.id(t, "c2/shop/frontend"), 0, maps.ProtoAny))
		})
	}
}

// TestValidPolicyCondition checks the Accepted=True condition and
// SetAccepted's change detection.
func TestValidPolicyCondition(t *testing.T) {
	p := mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{Ingress: []v1alpha1.IngressRule{{}}})
	p.Generation = 3
	if !SetAccepted(p, Validate(p)) {
		t.Fatal("first SetAccepted reported no change")
	}
	c := p.Status.Conditions
	if len(c) != 1 || c[0].Type != "Accepted" || c[0].Status != metav1.ConditionTrue || c[0].Reason != "Accepted" || c[0].ObservedGeneration != 3 || p.Status.ObservedGeneration != 3 {
		t.Errorf("status = %+v", p.Status)
	}
	if SetAccepted(p, Validate(p)) {
		t.Error("SetAccepted with nothing new reported a change")
	}
	p.Generation = 4
	p.Spec.Ingress = []v1alpha1.IngressRule{ingressFrom(nil, ports("x"))}
	if !SetAccepted(p, Validate(p)) || p.Status.Conditions[0].Status != metav1.ConditionFalse || p.Status.ObservedGeneration != 4 {
		t.Errorf("status after a bad update = %+v", p.Status)
	}
}

// TestRuleIDs checks rule IDs: stable across updates, lowest wins where
// policies overlap, and entries switch to the other policy's ID when the
// lower one goes.
func TestRuleIDs(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{})
	m.feed(c)
	be, fe2 := m.id(t, "c1/shop/backend"), m.id(t, "c2/shop/frontend")
	spec := v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress:          []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("80/TCP"))},
	}
	for _, name := range []string{"a", "b"} {
		if err := c.UpsertPolicy(mnp("shop", name, spec)); err != nil {
			t.Fatal(err)
		}
	}
	sa, _ := c.Selection("shop", "a")
	sb, _ := c.Selection("shop", "b")
	if sa.RuleID == 0 || sb.RuleID == 0 || sa.RuleID == sb.RuleID {
		t.Fatalf("rule IDs %d, %d", sa.RuleID, sb.RuleID)
	}
	k := key(maps.Ingress, be, fe2, 80, maps.ProtoTCP)
	entries, _ := c.Snapshot()
	if e := entries[k]; e.RuleID != min(sa.RuleID, sb.RuleID) {
		t.Errorf("shared entry has rule %d, want the lower of %d and %d", e.RuleID, sa.RuleID, sb.RuleID)
	}

	// An update keeps the ID.
	spec2 := *spec.DeepCopy()
	spec2.Ingress[0].ToPorts = ports("80/TCP", "81/TCP")
	if err := c.UpsertPolicy(mnp("shop", "a", spec2)); err != nil {
		t.Fatal(err)
	}
	if sa2, _ := c.Selection("shop", "a"); sa2.RuleID != sa.RuleID {
		t.Errorf("rule ID after update %d, want %d", sa2.RuleID, sa.RuleID)
	}
	ch := c.TakeChanges()
	if len(ch.Upserts) != 1 || len(ch.Deletes) != 0 {
		t.Errorf("changes after adding a port = %+v, want one upsert", ch)
	}

	// Deleting the lower one hands the shared entry to the other.
	c.DeletePolicy("shop", "a")
	ch = c.TakeChanges()
	if e, ok := ch.Upserts[k]; !ok || e.RuleID != sb.RuleID {
		t.Errorf("changes after delete = %+v, want %s re-written with rule %d", ch, m.describe(k), sb.RuleID)
	}
	if len(ch.Deletes) != 1 || ch.Deletes[0] != key(maps.Ingress, be, fe2, 81, maps.ProtoTCP) {
		t.Errorf("deletes = %v, want port 81", ch.Deletes)
	}
	if _, ok := c.PolicyForRule(sa.RuleID); ok {
		t.Error("PolicyForRule still knows the deleted policy")
	}

	// A new policy never reuses a live ID, nor (before wrapping) an old one.
	if err := c.UpsertPolicy(mnp("shop", "c", spec)); err != nil {
		t.Fatal(err)
	}
	if sc, _ := c.Selection("shop", "c"); sc.RuleID == sa.RuleID || sc.RuleID == sb.RuleID {
		t.Errorf("new policy got rule %d, used before", sc.RuleID)
	}
}

// TestNoOpUpdate checks an update that changes nothing the compiler uses
// produces no changes.
func TestNoOpUpdate(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{})
	m.feed(c)
	p := mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress:          []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("80/TCP"))},
	})
	if err := c.UpsertPolicy(p); err != nil {
		t.Fatal(err)
	}
	c.TakeChanges()
	q := p.DeepCopy()
	q.Generation = 2
	q.Labels = map[string]string{"new": "label"}
	// Same meaning, different spelling.
	q.Spec.Ingress[0].FromEndpoints[0] = sel("k8s:app", "frontend", labelCluster, "c2")
	if err := c.UpsertPolicy(q); err != nil {
		t.Fatal(err)
	}
	if ch := c.TakeChanges(); !ch.Empty() {
		t.Errorf("no-op update changed %+v", ch)
	}
}

// TestNodeScoped checks that with NodeScoped only identities marked as on
// this node are subjects.
func TestNodeScoped(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{NodeScoped: true})
	m.feed(c)
	be, fe := m.id(t, "c1/shop/backend"), m.id(t, "c1/shop/frontend")
	fe2 := m.id(t, "c2/shop/frontend")
	if err := c.UpsertPolicy(mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
		Ingress: []v1alpha1.IngressRule{ingressFrom(peers(sel("app", "frontend", labelCluster, "c2")), ports("80/TCP"))},
	})); err != nil {
		t.Fatal(err)
	}
	wantEntries(t, m, c) // nothing on this node yet
	c.SetNodeIdentity(be, true)
	c.SetNodeIdentity(be, true)  // twice is once
	c.SetNodeIdentity(fe2, true) // a remote identity is never a subject
	wantEntries(t, m, c, key(maps.Ingress, be, fe2, 80, maps.ProtoTCP))
	c.SetNodeIdentity(fe, true)
	ch := c.TakeChanges()
	if len(ch.Upserts) != 1 || ch.Enforcement[fe] != (maps.Enforced{Ingress: true}) {
		t.Errorf("changes after marking frontend = %+v", ch)
	}
	c.SetNodeIdentity(be, false)
	ch = c.TakeChanges()
	if len(ch.Deletes) != 1 || ch.Enforcement[be] != (maps.Enforced{}) {
		t.Errorf("changes after unmarking backend = %+v", ch)
	}
	wantEntries(t, m, c, key(maps.Ingress, fe, fe2, 80, maps.ProtoTCP))
	// A mark set before the identity is known takes effect when it comes.
	late := m.add(t, "c1", "shop", "late")
	c.SetNodeIdentity(late.id, true)
	c.UpsertIdentity(late.id, late.labels)
	wantEntries(t, m, c, key(maps.Ingress, fe, fe2, 80, maps.ProtoTCP), key(maps.Ingress, late.id, fe2, 80, maps.ProtoTCP))
}

// TestChangesCoalesce checks TakeChanges reports net changes only.
func TestChangesCoalesce(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{})
	m.feed(c)
	if err := c.UpsertPolicy(mnp("shop", "p", v1alpha1.MeshNetworkPolicySpec{
		EndpointSelector: sel("app", "backend"),
		Ingress:          []v1alpha1.IngressRule{ingressFrom(peers(withExpr(sel("app", "frontend"), labelCluster, exists)), nil)},
	})); err != nil {
		t.Fatal(err)
	}
	first := c.TakeChanges()
	if len(first.Upserts) != 2 || len(first.Enforcement) != 1 {
		t.Errorf("first changes = %+v, want everything", first)
	}
	// A remote identity that comes and goes between two takes is no change.
	x := m.add(t, "c3", "shop", "frontend", "version", "v9")
	c.UpsertIdentity(x.id, x.labels)
	c.DeleteIdentity(x.id)
	c.DeleteIdentity(x.id) // unknown: ignored
	if ch := c.TakeChanges(); !ch.Empty() {
		t.Errorf("changes = %+v, want none", ch)
	}
	// Relabelling an identity moves it between selectors.
	fe2 := m.byName["c2/shop/frontend"]
	relabelled := protocol.PodSecurityLabels("c2", "shop", "default", map[string]string{"app": "db"}, nil)
	c.UpsertIdentity(fe2.id, relabelled)
	ch := c.TakeChanges()
	if len(ch.Deletes) != 1 || ch.Deletes[0].RemoteIdentity != fe2.id || len(ch.Upserts) != 0 {
		t.Errorf("changes after relabel = %+v", ch)
	}
	c.UpsertIdentity(fe2.id, relabelled) // same labels: nothing
	if ch := c.TakeChanges(); !ch.Empty() {
		t.Errorf("changes = %+v, want none", ch)
	}
}

type recordingWriter struct{ ops []string }

func (w *recordingWriter) Upsert(k maps.PolicyEntryKey, e maps.PolicyEntry) error {
	w.ops = append(w.ops, "upsert")
	return nil
}
func (w *recordingWriter) Delete(k maps.PolicyEntryKey) error {
	w.ops = append(w.ops, "delete")
	return nil
}
func (w *recordingWriter) Set(id protocol.NumericIdentity, e maps.Enforced) error {
	w.ops = append(w.ops, "enforce")
	return nil
}

// TestApplyOrder checks Changes.Apply writes upserts, then enforcement,
// then deletes.
func TestApplyOrder(t *testing.T) {
	ch := Changes{
		Upserts:     map[maps.PolicyEntryKey]maps.PolicyEntry{key(maps.Ingress, 300, 0, 80, maps.ProtoTCP): {Verdict: maps.Allow, RuleID: 1}, key(maps.Ingress, 300, 0, 81, maps.ProtoTCP): {Verdict: maps.Allow, RuleID: 1}},
		Deletes:     []maps.PolicyEntryKey{key(maps.Ingress, 301, 0, 80, maps.ProtoTCP)},
		Enforcement: map[protocol.NumericIdentity]maps.Enforced{300: {Ingress: true}, 301: {}},
	}
	w := &recordingWriter{}
	if err := ch.Apply(w, w); err != nil {
		t.Fatal(err)
	}
	want := []string{"upsert", "upsert", "enforce", "enforce", "delete"}
	if !slices.Equal(w.ops, want) {
		t.Errorf("Apply wrote %v, want %v", w.ops, want)
	}
}

func TestNewRejectsBadCluster(t *testing.T) {
	for _, name := range []string{"", "Bad_Name", strings.Repeat("a", 40)} {
		if _, err := New(Config{Cluster: name}); err == nil {
			t.Errorf("New(%q) succeeded", name)
		}
	}
}

// TestPoliciesEnforcing checks the policies named for a drop no entry
// allowed: those that select the local identity, in force for it on this
// node, with rules for the direction.
func TestPoliciesEnforcing(t *testing.T) {
	m := standardMesh(t)
	c := newCompiler(t, Config{NodeScoped: true})
	m.feed(c)
	be, fe := m.id(t, "c1/shop/backend"), m.id(t, "c1/shop/frontend")
	fe2 := m.id(t, "c2/shop/frontend")
	ingressOnly := v1alpha1.MeshNetworkPolicySpec{EndpointSelector: sel("app", "backend"), Ingress: []v1alpha1.IngressRule{{}}}
	egressOnly := v1alpha1.MeshNetworkPolicySpec{Egress: []v1alpha1.EgressRule{{}}} // the whole namespace
	for name, spec := range map[string]v1alpha1.MeshNetworkPolicySpec{"b-ingress": ingressOnly, "a-ingress": ingressOnly, "egress": egressOnly} {
		if err := c.UpsertPolicy(mnp("shop", name, spec)); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.PoliciesEnforcing(be, maps.Ingress); len(got) != 0 {
		t.Errorf("before backend is on this node: %v", got)
	}
	c.SetNodeIdentity(be, true)
	c.SetNodeIdentity(fe, true)
	names := func(refs []types.NamespacedName) string {
		var s []string
		for _, r := range refs {
			s = append(s, r.String())
		}
		return strings.Join(s, ",")
	}
	for _, tc := range []struct {
		id   protocol.NumericIdentity
		dir  maps.Direction
		want string
	}{
		{be, maps.Ingress, "shop/a-ingress,shop/b-ingress"},
		{be, maps.Egress, "shop/egress"},
		{fe, maps.Ingress, ""},
		{fe, maps.Egress, "shop/egress"},
		{fe2, maps.Ingress, ""}, // remote: never a subject
		{12345, maps.Ingress, ""},
	} {
		if got := names(c.PoliciesEnforcing(tc.id, tc.dir)); got != tc.want {
			t.Errorf("PoliciesEnforcing(%s, %s) = %q, want %q", m.nameOf(tc.id), tc.dir, got, tc.want)
		}
	}
}
