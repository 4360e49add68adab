package podnet

import (
	"net/netip"
	"testing"
)

func TestPool(t *testing.T) {
	p, err := NewPool(netip.MustParsePrefix("10.1.2.0/29"))
	if err != nil {
		t.Fatal(err)
	}
	alloc := func(owner, preferred string) string {
		t.Helper()
		var pref netip.Addr
		if preferred != "" {
			pref = netip.MustParseAddr(preferred)
		}
		a, err := p.Allocate(owner, pref)
		if err != nil {
			return "error"
		}
		return a.String()
	}
	steps := []struct{ owner, preferred, want string }{
		{"a", "", "10.1.2.2"},
		{"b", "10.1.2.5", "10.1.2.5"},
		{"a", "", "10.1.2.2"},         // same owner, same address
		{"c", "10.1.2.5", "10.1.2.3"}, // preferred taken
		{"d", "10.1.2.1", "10.1.2.4"}, // router address never handed out
		{"e", "10.9.9.9", "10.1.2.6"}, // outside the CIDR
		{"f", "", "error"},            // .7 is broadcast
	}
	for _, s := range steps {
		if got := alloc(s.owner, s.preferred); got != s.want {
			t.Errorf("Allocate(%s, %q) = %s, want %s", s.owner, s.preferred, got, s.want)
		}
	}
	p.Release("c")
	if got := alloc("f", ""); got != "10.1.2.3" {
		t.Errorf("after release: %s", got)
	}
	if _, err := NewPool(netip.MustParsePrefix("fd00::/64")); err == nil {
		t.Error("IPv6 pool accepted")
	}
}
