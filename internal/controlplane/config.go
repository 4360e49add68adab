package controlplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
)

// Config says what to run. Only Binaries and DataDir are required.
type Config struct {
	// Binaries are the control-plane binaries, from kubebin.Ensure.
	Binaries kubebin.Binaries
	// DataDir holds everything the control plane writes; created if
	// missing. Starting on a DataDir used before keeps etcd's data but
	// issues new certificates and keys.
	DataDir string
	// Name names the cluster in the kubeconfig and to the controller
	// manager (--cluster-name). Empty means "isthmus".
	Name string
	// ContextName is the admin kubeconfig's context. Empty means Name.
	ContextName string

	// BindAddress is where kube-apiserver listens, and the address
	// clients are given unless it is unspecified (0.0.0.0 or ::), in which
	// case they are given 127.0.0.1. Zero means 127.0.0.1.
	BindAddress netip.Addr
	// SecurePort is kube-apiserver's port. Zero means a free port.
	SecurePort int
	// AdvertiseAddress is where the default/kubernetes Service's endpoint
	// points, i.e. how pods reach the apiserver; it must be a non-loopback
	// unicast address. Zero means BindAddress when that is such an
	// address, and otherwise 192.0.2.1 (RFC 5737 TEST-NET-1, routed
	// nowhere): fine for tests, where no pod talks to the apiserver.
	AdvertiseAddress netip.Addr
	// SANs are extra names and addresses (DNS names or IP literals) the
	// apiserver's serving certificate is valid for, beyond localhost,
	// 127.0.0.1, the bind and advertise addresses, the kubernetes Service
	// names and its ClusterIP.
	SANs []string
	// ServiceClusterIPRange is the Service ClusterIP range. Zero means
	// 10.96.0.0/16.
	ServiceClusterIPRange netip.Prefix

	// ControllerManager runs kube-controller-manager.
	ControllerManager bool
	// Scheduler runs kube-scheduler.
	Scheduler bool
	// ClusterCIDR, when valid and ControllerManager is set, makes the
	// controller manager allocate each Node a spec.podCIDR of
	// NodeCIDRMaskSize bits from it (--allocate-node-cidrs). Zero leaves
	// pod CIDRs to whoever registers the Nodes.
	ClusterCIDR netip.Prefix
	// NodeCIDRMaskSize is the prefix length of each Node's pod CIDR. Zero
	// means 24.
	NodeCIDRMaskSize int

	// StartTimeout bounds each component's wait for readiness, on top of
	// the context given to Start. Zero means two minutes.
	StartTimeout time.Duration
	// StopGracePeriod is how long Stop waits after SIGTERM before it
	// kills a component. Zero means ten seconds.
	StopGracePeriod time.Duration
}

const defaultName = "isthmus"

var (
	defaultServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	loopback           = netip.MustParseAddr("127.0.0.1")
	unroutedAdvertise  = netip.MustParseAddr("192.0.2.1")
)

// withDefaults validates c and fills in its zero fields.
func (c Config) withDefaults() (Config, error) {
	var errs []error
	if c.Binaries.APIServer == "" {
		errs = append(errs, errors.New("Config.Binaries is empty; get it from kubebin.Ensure"))
	}
	if c.ControllerManager && c.Binaries.ControllerManager == "" || c.Scheduler && c.Binaries.Scheduler == "" {
		errs = append(errs, errors.New("Config.Binaries lacks the controller-manager or scheduler path"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("Config.DataDir is empty; give it a directory"))
	}
	if c.Name == "" {
		c.Name = defaultName
	}
	if c.ContextName == "" {
		c.ContextName = c.Name
	}
	if !c.BindAddress.IsValid() {
		c.BindAddress = loopback
	}
	if c.SecurePort < 0 || c.SecurePort > 65535 {
		errs = append(errs, fmt.Errorf("Config.SecurePort %d is not a port", c.SecurePort))
	}
	if !c.AdvertiseAddress.IsValid() {
		c.AdvertiseAddress = unroutedAdvertise
		if a := c.BindAddress; !a.IsUnspecified() && !a.IsLoopback() {
			c.AdvertiseAddress = a
		}
	}
	if a := c.AdvertiseAddress; a.IsLoopback() || a.IsUnspecified() || a.IsLinkLocalUnicast() {
		errs = append(errs, fmt.Errorf("Config.AdvertiseAddress %s cannot be an endpoint of the kubernetes Service; give a unicast, non-loopback address", a))
	}
	if !c.ServiceClusterIPRange.IsValid() {
		c.ServiceClusterIPRange = defaultServiceCIDR
	}
	c.ServiceClusterIPRange = c.ServiceClusterIPRange.Masked()
	if c.NodeCIDRMaskSize == 0 {
		c.NodeCIDRMaskSize = 24
	}
	if c.ClusterCIDR.IsValid() {
		c.ClusterCIDR = c.ClusterCIDR.Masked()
		if c.ClusterCIDR.Overlaps(c.ServiceClusterIPRange) {
			errs = append(errs, fmt.Errorf("Config.ClusterCIDR %s overlaps the service range %s; pick disjoint ranges", c.ClusterCIDR, c.ServiceClusterIPRange))
		}
		if c.NodeCIDRMaskSize <= c.ClusterCIDR.Bits() || c.NodeCIDRMaskSize > c.ClusterCIDR.Addr().BitLen() {
			errs = append(errs, fmt.Errorf("Config.NodeCIDRMaskSize %d must be longer than ClusterCIDR %s's prefix", c.NodeCIDRMaskSize, c.ClusterCIDR))
		}
		if !c.ControllerManager {
			errs = append(errs, errors.New("Config.ClusterCIDR is set but ControllerManager is not: nothing would allocate pod CIDRs"))
		}
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = 2 * time.Minute
	}
	if c.StopGracePeriod <= 0 {
		c.StopGracePeriod = 10 * time.Second
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("invalid control plane config: %w", errors.Join(errs...))
	}
	return c, nil
}

// clientHost is the address clients dial.
func (c Config) clientHost() netip.Addr {
	if c.BindAddress.IsUnspecified() {
		if c.BindAddress.Is6() {
			return netip.IPv6Loopback()
		}
		return loopback
	}
	return c.BindAddress
}

// kubernetesServiceIP is the first address of the service range, which
// kube-apiserver gives the default/kubernetes Service.
func (c Config) kubernetesServiceIP() netip.Addr {
	return c.ServiceClusterIPRange.Addr().Next()
}
