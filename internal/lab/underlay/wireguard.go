package underlay

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// WireGuardSocketDir holds the control (UAPI) sockets of userspace
// WireGuard devices: one per device name, machine-wide, outside every
// network namespace.
const WireGuardSocketDir = "/var/run/wireguard"

// WireGuardSocket is the control socket of node n's userspace WireGuard
// device.
func WireGuardSocket(n topology.Node) string {
	return filepath.Join(WireGuardSocketDir, n.WireGuardDevice+".sock")
}

// RemoveWireGuard removes what the WireGuard devices of l's nodes leave
// outside the nodes' namespaces: the control sockets of userspace
// devices, which stay behind when the process serving a device is killed.
// The devices themselves, kernel or userspace, go with their node's
// namespace once no process holds it. Call it after the lab's processes
// are gone.
func RemoveWireGuard(l *topology.Lab) error {
	var errs []error
	for _, n := range l.Nodes() {
		if err := os.Remove(WireGuardSocket(n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove WireGuard socket of %s: %w", n.Name, err))
		}
	}
	return errors.Join(errs...)
}

// WireGuardLeftovers lists the WireGuard control sockets of l's nodes that
// exist.
func WireGuardLeftovers(l *topology.Lab) []string {
	var found []string
	for _, n := range l.Nodes() {
		if _, err := os.Stat(WireGuardSocket(n)); err == nil {
			found = append(found, "WireGuard socket "+WireGuardSocket(n))
		}
	}
	return found
}
