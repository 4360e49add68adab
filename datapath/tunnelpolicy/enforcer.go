// Package tunnelpolicy loads and attaches the cross-cluster policy programs
// on the tunnel device (WireGuard): tc programs on ingress and egress that
// identify both ends through the ipcache, apply the policy maps, track
// allowed flows so replies and established flows pass, count every outcome
// per reason and report new flows and drops as flow events. The maps come
// from datapath/maps; the programs are in datapath/bpf/tunnel_policy.c.
//
// It must not import apiserver/ or agent/.
package tunnelpolicy

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/isthmus-mesh/isthmus/datapath/internal/pinnedlink"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// AttachMode chooses how programs are attached to a device.
type AttachMode int

const (
	// AttachAuto uses tcx links where the kernel has them (6.6+) and a
	// clsact qdisc with bpf filters otherwise.
	AttachAuto AttachMode = iota
	// AttachTCX requires tcx.
	AttachTCX
	// AttachClsact uses clsact filters even where tcx exists.
	AttachClsact
)

// Config configures the programs at load time.
type Config struct {
	// Ethernet says packets on the device start with an Ethernet header.
	// False, the default, is for L3 devices such as WireGuard and TUN,
	// whose packets start at the IP header. One Enforcer serves devices
	// of one kind.
	Ethernet bool
	// CTLifetimeTCP and CTLifetimeOther are how long an idle tracked flow
	// keeps passing without a new policy check. Zero means 6h and 60s.
	CTLifetimeTCP, CTLifetimeOther time.Duration
	// Mode chooses tcx or clsact; the zero value is AttachAuto.
	Mode AttachMode
}

// LinkDir is the directory under the maps root where tcx attachments are
// pinned, as tcx_<device>_<ingress|egress>.
const LinkDir = "links"

// Enforcer is the loaded tunnel policy programs, bound to the pinned maps.
//
// tcx attachments are pinned links and clsact filters live on the device,
// so both outlive the process: Close releases this process's handles and
// leaves enforcement running across an agent restart, and a new Enforcer's
// Attach takes the attachments over with its own programs. Detach removes
// them. Safe for concurrent use.
type Enforcer struct {
	cfg     Config
	objs    tunnelObjects
	linkDir string

	mu    sync.Mutex           // guards links
	links map[string]link.Link // by pin name, while this process holds them
}

// New loads the programs against the maps in m, configured by cfg. They are
// not attached anywhere yet.
func New(m *maps.Maps, cfg Config) (*Enforcer, error) {
	if cfg.Mode < AttachAuto || cfg.Mode > AttachClsact {
		return nil, fmt.Errorf("attach mode %d: unknown", cfg.Mode)
	}
	spec, err := loadTunnel()
	if err != nil {
		return nil, err
	}
	l2 := uint32(0)
	if cfg.Ethernet {
		l2 = 14
	}
	tcp, other := cfg.CTLifetimeTCP, cfg.CTLifetimeOther
	if tcp == 0 {
		tcp = 6 * time.Hour
	}
	if other == 0 {
		other = 60 * time.Second
	}
	if tcp < 0 || other < 0 {
		return nil, errors.New("connection tracking lifetimes must not be negative")
	}
	for name, v := range map[string]any{
		"l2_len":               l2,
		"ct_lifetime_tcp_ns":   uint64(tcp.Nanoseconds()),
		"ct_lifetime_other_ns": uint64(other.Nanoseconds()),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
	}
	opts, err := m.CollectionOptions(spec)
	if err != nil {
		return nil, err
	}
	e := &Enforcer{cfg: cfg, linkDir: filepath.Join(m.Root(), LinkDir), links: make(map[string]link.Link)}
	if err := spec.LoadAndAssign(&e.objs, opts); err != nil {
		return nil, fmt.Errorf("load tunnel policy programs: %w", err)
	}
	return e, nil
}

// Ingress returns the ingress program (for BPF_PROG_TEST_RUN and
// benchmarks); the Enforcer owns it.
func (e *Enforcer) Ingress() *ebpf.Program { return e.objs.IsthmusTunIn }

// Egress returns the egress program; the Enforcer owns it.
func (e *Enforcer) Egress() *ebpf.Program { return e.objs.IsthmusTunOut }

type direction struct {
	name string
	tcx  ebpf.AttachType
	prog func(*tunnelPrograms) *ebpf.Program
}

var directions = [...]direction{
	{"ingress", ebpf.AttachTCXIngress, func(p *tunnelPrograms) *ebpf.Program { return p.IsthmusTunIn }},
	{"egress", ebpf.AttachTCXEgress, func(p *tunnelPrograms) *ebpf.Program { return p.IsthmusTunOut }},
}

func (e *Enforcer) pinPath(dev string, d direction) string {
	// bpffs reserves dots in names; interface names may hold them.
	return filepath.Join(e.linkDir, "tcx_"+strings.ReplaceAll(dev, ".", "_")+"_"+d.name)
}

// Attach attaches the programs to both directions of the device with index
// ifindex in the calling thread's network namespace. It is idempotent, takes
// over attachments left by an earlier process, and replaces tcx pins left
// for an older device of the same name. Using tcx removes this package's
// clsact filters from the device, and the other way round.
func (e *Enforcer) Attach(ifindex int) error {
	iface, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("tunnel device %d: %w", ifindex, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()

	useTCX := e.cfg.Mode != AttachClsact
	if useTCX {
		err := e.attachTCX(iface)
		switch {
		case err == nil:
			return removeClsact(ifindex)
		case errors.Is(err, ebpf.ErrNotSupported) && e.cfg.Mode == AttachAuto:
			// Older kernel: fall back to clsact.
		default:
			return err
		}
	}
	for _, d := range directions {
		if err := attachClsact(ifindex, d, d.prog(&e.objs.tunnelPrograms)); err != nil {
			return fmt.Errorf("attach %s to %s: %w", d.name, iface.Name, err)
		}
	}
	return e.removeTCX(iface.Name)
}

func (e *Enforcer) attachTCX(iface *net.Interface) error {
	if err := os.MkdirAll(e.linkDir, 0o700); err != nil {
		return fmt.Errorf("create link pin directory: %w", err)
	}
	for _, d := range directions {
		prog := d.prog(&e.objs.tunnelPrograms)
		matches := func(info *link.Info) bool {
			ti := info.TCX()
			return info.Type == link.TCXType && ti != nil && int(ti.Ifindex) == iface.Index &&
				ebpf.AttachType(ti.AttachType) == d.tcx
		}
		create := func() (link.Link, error) {
			l, err := link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: prog, Attach: d.tcx})
			if err != nil {
				return nil, fmt.Errorf("attach tcx %s to %s: %w", d.name, iface.Name, err)
			}
			return l, nil
		}
		path := e.pinPath(iface.Name, d)
		l, err := pinnedlink.Ensure(path, prog, matches, create)
		if err != nil {
			return err
		}
		if prev := e.links[path]; prev != nil && prev != l {
			prev.Close()
		}
		e.links[path] = l
	}
	return nil
}

func (e *Enforcer) removeTCX(dev string) error {
	var errs []error
	for _, d := range directions {
		path := e.pinPath(dev, d)
		if l := e.links[path]; l != nil {
			l.Close()
			delete(e.links, path)
		}
		if err := pinnedlink.Remove(path); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Detach removes the programs from the device (tcx links and clsact
// filters alike), whichever process attached them.
func (e *Enforcer) Detach(ifindex int) error {
	iface, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("tunnel device %d: %w", ifindex, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return errors.Join(e.removeTCX(iface.Name), removeClsact(ifindex))
}

// DetachName removes the tcx pins left for a device that no longer exists
// (tcx detaches by itself when its device goes away, but the pins stay).
func (e *Enforcer) DetachName(dev string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.removeTCX(dev)
}

// Close releases the handles; attachments stay in place.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for path, l := range e.links {
		l.Close()
		delete(e.links, path)
	}
	return e.objs.Close()
}
