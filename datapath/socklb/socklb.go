// Package socklb loads and attaches the socket load balancer for global
// services: cgroup v2 hooks on connect, sendmsg, recvmsg and getpeername
// (IPv4 and IPv6) that rewrite a connection to a global service's address
// into one of its backends, chosen by the service's affinity, and show the
// service address back to the application. The services come from
// datapath/maps (Maps.Services); the programs are in datapath/bpf/socklb.c.
//
// It must not import apiserver/ or agent/.
package socklb

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/isthmus-mesh/isthmus/datapath/internal/pinnedlink"
	"github.com/isthmus-mesh/isthmus/datapath/maps"
)

// hook is one cgroup attach point and the program for it.
type hook struct {
	name   string // pin name suffix
	attach ebpf.AttachType
	prog   func(*socklbPrograms) *ebpf.Program
}

var hooks = [...]hook{
	{"connect4", ebpf.AttachCGroupInet4Connect, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusConn4 }},
	{"connect6", ebpf.AttachCGroupInet6Connect, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusConn6 }},
	{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusSend4 }},
	{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusSend6 }},
	{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusRecv4 }},
	{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusRecv6 }},
	{"getpeername4", ebpf.AttachCgroupInet4GetPeername, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusPeer4 }},
	{"getpeername6", ebpf.AttachCgroupInet6GetPeername, func(p *socklbPrograms) *ebpf.Program { return p.IsthmusPeer6 }},
}

// LinkDir is the directory under the maps root where attachments are
// pinned; each hook's link is pinned there as socklb_<hook>.
const LinkDir = "links"

// LoadBalancer is the loaded socket LB programs, bound to the pinned maps.
//
// Attachments are pinned links, so they outlive the process: a restarted
// agent calls New and Attach again, which takes the existing attachments
// over and swaps in the new programs atomically. Close releases this
// process's handles and leaves the attachments working; Detach removes
// them. Safe for concurrent use.
type LoadBalancer struct {
	objs    socklbObjects
	linkDir string

	mu    sync.Mutex           // guards links
	links map[string]link.Link // by hook name, while this process holds them
}

// New loads the programs against the maps in m. The programs are not
// attached anywhere yet.
func New(m *maps.Maps) (*LoadBalancer, error) {
	spec, err := loadSocklb()
	if err != nil {
		return nil, err
	}
	opts, err := m.CollectionOptions(spec)
	if err != nil {
		return nil, err
	}
	lb := &LoadBalancer{linkDir: filepath.Join(m.Root(), LinkDir), links: make(map[string]link.Link)}
	if err := spec.LoadAndAssign(&lb.objs, opts); err != nil {
		return nil, fmt.Errorf("load socket LB programs: %w", err)
	}
	return lb, nil
}

func (lb *LoadBalancer) pinPath(h hook) string {
	return filepath.Join(lb.linkDir, "socklb_"+h.name)
}

// Attach attaches every hook to the cgroup v2 directory cgroupPath (the
// hooks apply to sockets created by processes in it and its descendants).
// It is idempotent and takes over attachments pinned by an earlier process;
// attaching to another cgroup moves them. On error, hooks attached so far
// stay attached; calling Attach again completes the job.
func (lb *LoadBalancer) Attach(cgroupPath string) error {
	cgid, err := cgroupID(cgroupPath)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(lb.linkDir, 0o700); err != nil {
		return fmt.Errorf("create link pin directory: %w", err)
	}
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, h := range hooks {
		prog := h.prog(&lb.objs.socklbPrograms)
		matches := func(info *link.Info) bool {
			ci := info.Cgroup()
			return info.Type == link.CgroupType && ci != nil && ci.CgroupId == cgid &&
				ebpf.AttachType(ci.AttachType) == h.attach
		}
		create := func() (link.Link, error) {
			l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: h.attach, Program: prog})
			if err != nil {
				return nil, fmt.Errorf("attach %s to cgroup %s: %w", h.name, cgroupPath, err)
			}
			return l, nil
		}
		l, err := pinnedlink.Ensure(lb.pinPath(h), prog, matches, create)
		if err != nil {
			return err
		}
		if prev := lb.links[h.name]; prev != nil && prev != l {
			prev.Close()
		}
		lb.links[h.name] = l
	}
	return nil
}

// Detach removes the attachments, whichever process made them.
func (lb *LoadBalancer) Detach() error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	var errs []error
	for _, h := range hooks {
		if l := lb.links[h.name]; l != nil {
			l.Close()
			delete(lb.links, h.name)
		}
		if err := pinnedlink.Remove(lb.pinPath(h)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Close releases the handles; attachments stay in place.
func (lb *LoadBalancer) Close() error {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for name, l := range lb.links {
		l.Close()
		delete(lb.links, name)
	}
	return lb.objs.Close()
}

// cgroupID returns the ID of the cgroup v2 directory path (its inode), which
// is what the kernel reports for a cgroup link.
func cgroupID(path string) (uint64, error) {
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup %s: not a cgroup v2 directory (the socket LB needs cgroup v2, e.g. under /sys/fs/cgroup/unified)", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup %s: %w", path, err)
	}
	return st.Ino, nil
}
