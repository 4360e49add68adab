package wireguard

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"
)

func testKey(t *testing.T) wgtypes.Key {
	t.Helper()
	k, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k.PublicKey()
}

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestValidatePeers(t *testing.T) {
	own, k1, k2, k3 := testKey(t), testKey(t), testKey(t), testKey(t)
	ep := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	peers := []Peer{
		{Name: "c2/a", PublicKey: k1.String(), Endpoint: ep("192.168.1.2:51871"),
			// Unmasked, duplicated and v4-mapped forms are made canonical.
			AllowedIPs: prefixes("10.2.0.9/24", "10.2.0.0/24", "::ffff:10.3.0.0/112", "fd00:2::/64")},
		{Name: "c2/bad-key", PublicKey: "bm90IGEga2V5", Endpoint: ep("192.168.1.3:51871")},
		{Name: "c2/me", PublicKey: own.String(), Endpoint: ep("192.168.1.4:51871")},
		{Name: "c2/dup", PublicKey: k1.String(), Endpoint: ep("192.168.1.5:51871")},
		{Name: "c2/no-port", PublicKey: k3.String(), Endpoint: netip.AddrPortFrom(netip.MustParseAddr("192.168.1.6"), 0)},
		{PublicKey: k2.String(), Endpoint: ep("[fd00::7]:51871"),
			AllowedIPs: []netip.Prefix{
				netip.MustParsePrefix("10.2.0.0/24"),    // c2/a's
				netip.MustParsePrefix("0.0.0.0/0"),      // everything
				netip.MustParsePrefix("192.168.1.0/24"), // c2/a's endpoint
				netip.MustParsePrefix("10.4.0.7/32"),    // a pod of a node without pod CIDR
				netip.MustParsePrefix("fd00:4::7/128"),
				{}, // invalid
			}},
	}
	got, names, errs := validatePeers(own, peers, 25*time.Second)

	want := []peerState{
		{key: k1, endpoint: ep("192.168.1.2:51871"), keepalive: 25 * time.Second, allowedIPs: prefixes("10.2.0.0/24", "10.3.0.0/16", "fd00:2::/64")},
		{key: k2, endpoint: ep("[fd00::7]:51871"), keepalive: 25 * time.Second, allowedIPs: prefixes("10.4.0.7/32", "fd00:4::7/128")},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("valid peers:\n got %v\nwant %v", got, want)
	}
	if names[k1] != "c2/a" || names[k2] != k2.String() {
		t.Errorf("names = %v", names)
	}

	wantErrs := []struct {
		peer  string
		whole bool
		text  string
	}{
		{"c2/bad-key", true, "not 32 bytes of base64"},
		{"c2/me", true, "this node's own"},
		{"c2/dup", true, "also peer c2/a's"},
		{"c2/no-port", true, "not an IP address and port"},
		{k2.String(), false, "0.0.0.0/0 would send all traffic"},
		{k2.String(), false, "not a prefix"},
		{k2.String(), false, "10.2.0.0/24 is also peer c2/a's"},
		{k2.String(), false, "covers the endpoint 192.168.1.2:51871 of peer c2/a"},
	}
	if len(errs) != len(wantErrs) {
		t.Fatalf("got %d errors, want %d: %v", len(errs), len(wantErrs), errs)
	}
	for i, w := range wantErrs {
		e := errs[i]
		if e.Peer != w.peer || e.WholePeer != w.whole || !strings.Contains(e.Error(), w.text) {
			t.Errorf("error %d = {%s whole=%v %v}, want {%s whole=%v ...%s...}", i, e.Peer, e.WholePeer, e, w.peer, w.whole, w.text)
		}
	}
}

func TestPlanPeers(t *testing.T) {
	k1, k2, k3, k4 := testKey(t), testKey(t), testKey(t), testKey(t)
	ep := netip.MustParseAddrPort("192.168.1.2:51871")
	st := func(k wgtypes.Key, ep netip.AddrPort, pfx ...string) peerState {
		return peerState{key: k, endpoint: ep, allowedIPs: prefixes(pfx...)}
	}
	current := []peerState{
		st(k1, ep, "10.1.0.0/24"), // unchanged
		st(k2, ep, "10.2.0.0/24"), // AllowedIPs change
		st(k3, netip.MustParseAddrPort("192.168.9.9:4444"), "10.3.0.0/24"), // roamed
		st(k4, ep, "10.4.0.0/24"), // gone
	}
	wanted := []peerState{
		st(k1, ep, "10.1.0.0/24"),
		st(k2, ep, "10.2.0.0/24", "10.2.1.0/24"),
		st(k3, ep, "10.3.0.0/24"),
		st(testKey(t), ep, "10.5.0.0/24"), // new
	}
	plan := planPeers(current, wanted)
	if len(plan.add) != 1 || plan.add[0].key != wanted[3].key {
		t.Errorf("add = %v, want the new peer", plan.add)
	}
	if len(plan.update) != 2 || plan.update[0].key != k2 || plan.update[1].key != k3 {
		t.Errorf("update = %v, want k2 and k3", plan.update)
	}
	if !slices.Equal(plan.remove, []wgtypes.Key{k4}) {
		t.Errorf("remove = %v, want k4", plan.remove)
	}

	cfg := plan.config()
	if cfg.ReplacePeers {
		t.Error("config replaces all peers")
	}
	if len(cfg.Peers) != 4 || !cfg.Peers[0].Remove || cfg.Peers[0].PublicKey != k4 {
		t.Fatalf("config peers = %+v, want the removal first", cfg.Peers)
	}
	for _, pc := range cfg.Peers[1:] {
		if pc.Remove || !pc.ReplaceAllowedIPs || pc.Endpoint == nil || pc.Endpoint.AddrPort() != ep {
			t.Errorf("peer config %+v: want replaced AllowedIPs and endpoint %s", pc, ep)
		}
	}

	if p := planPeers(wanted, wanted); !p.empty() {
		t.Errorf("plan from the wanted state = %+v, want nothing to do", p)
	}
	if p := planPeers(current, nil); len(p.remove) != 4 || len(p.add)+len(p.update) != 0 {
		t.Errorf("plan to no peers = %+v, want all four removed", p)
	}
}

func TestPlanRoutes(t *testing.T) {
	current := prefixes("10.1.0.0/24", "10.4.0.0/24", "fd00:4::/64", "10.9.0.7/32")
	wanted := prefixes("10.1.0.0/24", "10.2.0.0/24", "fd00:2::/64", "10.1.0.0/24", "10.9.0.7/32", "10.9.0.8/32")
	add, del := planRoutes(current, wanted)
	if want := prefixes("10.2.0.0/24", "10.9.0.8/32", "fd00:2::/64"); !slices.Equal(add, want) {
		t.Errorf("add = %v, want %v", add, want)
	}
	if want := prefixes("10.4.0.0/24", "fd00:4::/64"); !slices.Equal(del, want) {
		t.Errorf("del = %v, want %v", del, want)
	}
	add, del = planRoutes(wanted, wanted)
	if len(add)+len(del) != 0 {
		t.Errorf("reconciling a reconciled table: add %v del %v", add, del)
	}
}

func TestTunnelMTU(t *testing.T) {
	for _, c := range []struct {
		paths []underlayPath
		want  int
	}{
		{nil, 1420},
		{[]underlayPath{{mtu: 1500}}, 1440},
		{[]underlayPath{{mtu: 1500, ipv6: true}}, 1420},
		{[]underlayPath{{mtu: 9000}, {mtu: 1400}}, 1340},
		{[]underlayPath{{mtu: 1500}, {mtu: 1500, ipv6: true}}, 1420},
		{[]underlayPath{{mtu: 1450, ipv6: true}, {mtu: 1400}}, 1340},
	} {
		if got := tunnelMTU(c.paths); got != c.want {
			t.Errorf("tunnelMTU(%v) = %d, want %d", c.paths, got, c.want)
		}
	}
}
