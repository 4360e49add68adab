package tunnelpolicy

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The clsact fallback for kernels without tcx: one direct-action bpf filter
// per direction, recognised by its priority and name so that it can be
// replaced in place on restart and removed without touching other filters.
const (
	clsactPriority = 0x6973 // "is"
	clsactHandle   = 1
)

func clsactName(d direction) string { return "isthmus_tun_" + d.name }

func clsactParent(d direction) uint32 {
	if d.tcx == ebpf.AttachTCXIngress {
		return netlink.HANDLE_MIN_INGRESS
	}
	return netlink.HANDLE_MIN_EGRESS
}

func attachClsact(ifindex int, d direction, prog *ebpf.Program) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    clsactParent(d),
			Handle:    clsactHandle,
			Protocol:  unix.ETH_P_ALL,
			Priority:  clsactPriority,
		},
		Fd:           prog.FD(),
		Name:         clsactName(d),
		DirectAction: true,
	}
	// Replace swaps the program in place: no moment without a filter.
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("replace bpf filter: %w", err)
	}
	return nil
}

// removeClsact deletes this package's filters from the device, leaving the
// qdisc (other tools may use it) and other filters alone.
func removeClsact(ifindex int) error {
	dev, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return fmt.Errorf("tunnel device %d: %w", ifindex, err)
	}
	var errs []error
	for _, d := range directions {
		filters, err := netlink.FilterList(dev, clsactParent(d))
		if err != nil {
			// No clsact qdisc: nothing of ours to remove.
			if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				continue
			}
			errs = append(errs, fmt.Errorf("list filters: %w", err))
			continue
		}
		for _, f := range filters {
			bf, ok := f.(*netlink.BpfFilter)
			if !ok || bf.Priority != clsactPriority || bf.Name != clsactName(d) {
				continue
			}
			if err := netlink.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete filter %s: %w", bf.Name, err))
			}
		}
	}
	return errors.Join(errs...)
}
