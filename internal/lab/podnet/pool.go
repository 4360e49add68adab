package podnet

import (
	"fmt"
	"net/netip"
	"sync"
)

// Pool hands out pod addresses from a node's pod CIDR. The network address,
// the first host address (kept for the node's own use, as CNIs keep a router
// address) and the broadcast address are never handed out. It is safe for
// concurrent use.
type Pool struct {
	cidr netip.Prefix

	mu   sync.Mutex // guards used
	used map[netip.Addr]string
}

// NewPool returns an empty pool over cidr (IPv4).
func NewPool(cidr netip.Prefix) (*Pool, error) {
	if !cidr.Addr().Is4() || cidr.Bits() > 30 {
		return nil, fmt.Errorf("pod CIDR %s: want an IPv4 prefix of at most /30", cidr)
	}
	return &Pool{cidr: cidr.Masked(), used: map[netip.Addr]string{}}, nil
}

// Allocate reserves an address for owner: preferred when it is usable and
// free (so a restarted kubelet keeps a pod's address), otherwise the lowest
// free one. Allocating again for the same owner returns its address.
func (p *Pool) Allocate(owner string, preferred netip.Addr) (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, o := range p.used {
		if o == owner {
			return a, nil
		}
	}
	if p.usable(preferred) && p.used[preferred] == "" {
		p.used[preferred] = owner
		return preferred, nil
	}
	for a := p.cidr.Addr().Next().Next(); p.usable(a); a = a.Next() {
		if p.used[a] == "" {
			p.used[a] = owner
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s is exhausted (%d pods)", p.cidr, len(p.used))
}

// Release frees owner's address, if it has one.
func (p *Pool) Release(owner string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, o := range p.used {
		if o == owner {
			delete(p.used, a)
		}
	}
}

func (p *Pool) usable(a netip.Addr) bool {
	if !a.IsValid() || !p.cidr.Contains(a) {
		return false
	}
	first := p.cidr.Addr()
	return a != first && a != first.Next() && a.Next().IsValid() && p.cidr.Contains(a.Next())
}
