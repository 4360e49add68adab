// Package tunnel keeps the node's end of the cross-cluster tunnel: the
// WireGuard device (created or adopted at start, re-created when it goes
// away), one peer per node of every other cluster computed from the
// merged state, and the routes to their pods, reconciled after each change
// of nodes (or, where a node has no pod CIDR, of the ipcache). Whoever
// attaches programs to the device (the tunnel policy) is told each time
// the device is (re)made.
//
// Before the agent's first complete view of the mesh (AllowPrune), peers
// are only added and updated, never removed, so that a restarting agent
// leaves the traffic of clusters it has not read again alone.
//
// It must not import apiserver/, the Kubernetes client libraries, or the
// agent packages that feed the state.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/isthmus-mesh/isthmus/agent/state"
	"github.com/isthmus-mesh/isthmus/datapath/wireguard"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

// Config configures a Reconciler.
type Config struct {
	// WireGuard configures the device; StateDir is required.
	WireGuard wireguard.Config
	// State is the merged view of the mesh. Required.
	State *state.State
	// LocalCluster and NodeName name this node. Required.
	LocalCluster, NodeName string
	// OnDevice is called with the device's interface index whenever the
	// device was created, adopted or re-created, before its peers are
	// set; on error it is retried after RetryInterval. Nil means nothing.
	OnDevice func(ifindex int) error
	// Debounce is how long a change waits for more before the peers are
	// reconciled. Zero means 100ms.
	Debounce time.Duration
	// CheckInterval is how often the device is checked to still exist
	// (and re-created when it does not). Zero means 1s.
	CheckInterval time.Duration
	// RetryInterval is the wait before a failed reconcile or device
	// creation is retried. Zero means 2s.
	RetryInterval time.Duration
	// Metrics receive the reconciler's metrics; nil means none.
	Metrics *Metrics
}

func (c *Config) setDefaults() {
	if c.Debounce == 0 {
		c.Debounce = 100 * time.Millisecond
	}
	if c.CheckInterval == 0 {
		c.CheckInterval = time.Second
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 2 * time.Second
	}
}

// Status is a snapshot of the tunnel.
type Status struct {
	Device     string
	Mode       wireguard.Mode
	PublicKey  string
	ListenPort int
	MTU        int
	// Ifindex is the device's interface index, 0 while it is missing.
	Ifindex int
	// Peers is how many peers the device was last given; Kept how many
	// of them were kept from before the first complete view of the mesh.
	Peers, Kept int
	Skipped     []SkippedNode
	// Pruning is true once peers of nodes that left are removed.
	Pruning bool
	// Attached is true while OnDevice succeeded for the current device.
	Attached      bool
	LastReconcile time.Time
	LastError     string
	LastErrorTime time.Time
	// Recreations counts the times the device was found gone and made
	// again.
	Recreations int
}

// Reconciler runs the node's WireGuard device. Run does the work; the
// other methods are safe for concurrent use.
type Reconciler struct {
	logger  *slog.Logger
	cfg     Config
	nodes   *state.Changes[state.NodeName]
	ipcache *state.Changes[netip.Prefix]
	prune   atomic.Bool
	wake    chan struct{} // capacity 1: AllowPrune asks for a pass
	// skipped is the last pass's skipped nodes, for logging changes;
	// used by Run only.
	skipped map[state.NodeName]SkipReason

	mu     sync.Mutex // guards the fields below
	dev    *wireguard.Device
	status Status
}

// New creates or adopts the device (see wireguard.New) and subscribes to
// the state. On error nothing is left open.
func New(logger *slog.Logger, cfg Config) (*Reconciler, error) {
	if cfg.State == nil || cfg.LocalCluster == "" {
		return nil, errors.New("tunnel: Config.State and LocalCluster are required")
	}
	cfg.setDefaults()
	r := &Reconciler{logger: logger, cfg: cfg, wake: make(chan struct{}, 1)}
	if err := r.openDevice(); err != nil {
		return nil, err
	}
	r.nodes = cfg.State.SubscribeNodes()
	r.ipcache = cfg.State.SubscribeIPCache()
	return r, nil
}

func (r *Reconciler) openDevice() error {
	dev, err := wireguard.New(r.logger, r.cfg.WireGuard)
	if err != nil {
		return fmt.Errorf("set up the WireGuard device: %w", err)
	}
	link, err := netlink.LinkByName(dev.Name())
	if err != nil {
		dev.Close()
		return fmt.Errorf("find WireGuard device %s: %w", dev.Name(), err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dev = dev
	r.status.Device, r.status.Mode, r.status.PublicKey = dev.Name(), dev.Mode(), dev.PublicKey()
	r.status.ListenPort, r.status.MTU, r.status.Ifindex = dev.ListenPort(), dev.MTU(), link.Attrs().Index
	r.status.Attached = false
	return nil
}

// PublicKey is the node's WireGuard public key, to publish on its Node.
func (r *Reconciler) PublicKey() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.status.PublicKey
}

// Status returns a snapshot.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.status
	st.Skipped = append([]SkippedNode(nil), st.Skipped...)
	st.Pruning = r.prune.Load()
	return st
}

// Peers reports the device's peers as the device has them.
func (r *Reconciler) Peers() ([]wireguard.PeerStatus, error) {
	r.mu.Lock()
	dev := r.dev
	r.mu.Unlock()
	if dev == nil {
		return nil, errors.New("no WireGuard device")
	}
	return dev.Peers()
}

// AllowPrune lets passes remove the peers of nodes the state no longer
// holds. Call it once the initial state is complete.
func (r *Reconciler) AllowPrune() {
	r.prune.Store(true)
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// Run reconciles until ctx is done, then closes the device handle: a
// kernel device or one served by a helper process stays, with its peers
// and routes, for the next agent to adopt.
func (r *Reconciler) Run(ctx context.Context) {
	defer r.close()
	check := time.NewTicker(r.cfg.CheckInterval)
	defer check.Stop()
	usesIPCache := false
	var retry <-chan time.Time
	for {
		if err := r.pass(ctx, &usesIPCache); err != nil {
			if ctx.Err() != nil {
				return
			}
			r.fail(err)
			retry = time.After(r.cfg.RetryInterval)
		} else {
			retry = nil
		}
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-r.nodes.Notify():
				break wait
			case <-r.ipcache.Notify():
				// The changes themselves are not needed: the pass reads
				// the state. Drop them unless they matter.
				r.ipcache.Take(0)
				if usesIPCache {
					break wait
				}
			case <-r.wake:
				break wait
			case <-retry:
				break wait
			case <-check.C:
				if r.deviceChanged() {
					break wait
				}
			}
		}
		debounce := time.NewTimer(r.cfg.Debounce)
		select {
		case <-ctx.Done():
			debounce.Stop()
			return
		case <-debounce.C:
		}
	}
}

// deviceChanged reports whether the device is gone or was replaced.
func (r *Reconciler) deviceChanged() bool {
	r.mu.Lock()
	name, index := r.status.Device, r.status.Ifindex
	r.mu.Unlock()
	link, err := netlink.LinkByName(name)
	return err != nil || link.Attrs().Index != index
}

// pass makes sure the device exists with programs attached, and gives it
// the desired peers.
func (r *Reconciler) pass(ctx context.Context, usesIPCache *bool) error {
	if r.deviceChanged() {
		if err := r.recreate(); err != nil {
			return err
		}
	}
	r.mu.Lock()
	dev, attached, ifindex := r.dev, r.status.Attached, r.status.Ifindex
	r.mu.Unlock()
	if !attached && r.cfg.OnDevice != nil {
		if err := r.cfg.OnDevice(ifindex); err != nil {
			return fmt.Errorf("attach to WireGuard device %s: %w", dev.Name(), err)
		}
		r.mu.Lock()
		r.status.Attached = true
		r.mu.Unlock()
	}

	r.nodes.Take(0)
	desired := DesiredPeers(r.cfg.State, r.cfg.LocalCluster, uint16(dev.ListenPort()), r.prefersIPv4())
	*usesIPCache = desired.UsesIPCache
	peers := desired.Peers
	pruning := r.prune.Load()
	if !pruning {
		current, err := dev.Peers()
		if err != nil {
			return err
		}
		peers = keepCurrent(peers, current)
	}
	refused, err := dev.SetPeers(ctx, peers)
	skipped := desired.Skipped
	refusedPeers := 0
	for _, e := range refused {
		if !e.WholePeer {
			continue // a prefix left out; the peer stands
		}
		refusedPeers++
		var name state.NodeName
		if c, n, ok := strings.Cut(e.Peer, "/"); ok {
			name = state.NodeName{Cluster: c, Name: n}
		} else {
			name.Name = e.Peer
		}
		skipped = append(skipped, SkippedNode{Node: name, Reason: SkipRefused, Detail: e.Err.Error()})
	}
	r.mu.Lock()
	r.status.Peers = len(peers) - refusedPeers
	r.status.Kept = len(peers) - len(desired.Peers)
	r.status.Skipped = skipped
	r.status.MTU = dev.MTU()
	if err == nil {
		r.status.LastReconcile = time.Now()
	}
	st := r.status
	r.mu.Unlock()
	r.cfg.Metrics.observe(st, err)
	r.logSkipped(skipped)
	return err
}

// logSkipped logs each node that newly has no peer, or for another
// reason, once, and each that has one again.
func (r *Reconciler) logSkipped(skipped []SkippedNode) {
	now := make(map[state.NodeName]SkipReason, len(skipped))
	for _, s := range skipped {
		now[s.Node] = s.Reason
		if r.skipped[s.Node] != s.Reason {
			r.logger.Warn("Node of another cluster gets no WireGuard peer", logfields.Node, s.Node.String(), "reason", string(s.Reason), "detail", s.Detail)
		}
	}
	for n := range r.skipped {
		if _, still := now[n]; !still {
			r.logger.Info("Node of another cluster no longer lacks a WireGuard peer (it has one, or it left)", logfields.Node, n.String())
		}
	}
	r.skipped = now
}

// prefersIPv4 says which family of a remote node's InternalIP to send to:
// this node's, IPv4 where it has both or is not known yet.
func (r *Reconciler) prefersIPv4() bool {
	v4, v6 := false, false
	r.cfg.State.Nodes(func(n *protocol.Node) {
		if n.Cluster == r.cfg.LocalCluster && n.Name == r.cfg.NodeName {
			v4 = n.InternalIP(true).IsValid()
			v6 = n.InternalIP(false).IsValid()
		}
	})
	return v4 || !v6
}

// recreate replaces a device that went away.
func (r *Reconciler) recreate() error {
	r.mu.Lock()
	old := r.dev
	r.dev = nil
	r.status.Ifindex = 0
	r.status.Attached = false
	r.mu.Unlock()
	if old != nil {
		old.Close()
	}
	r.logger.Warn("WireGuard device is gone; creating it again", logfields.Device, r.cfg.WireGuard.DeviceName)
	if err := r.openDevice(); err != nil {
		return err
	}
	r.mu.Lock()
	r.status.Recreations++
	r.mu.Unlock()
	r.cfg.Metrics.recreated()
	return nil
}

func (r *Reconciler) fail(err error) {
	r.logger.Error("WireGuard reconcile failed; retrying", logfields.Error, err, logfields.Duration, r.cfg.RetryInterval)
	r.mu.Lock()
	r.status.LastError, r.status.LastErrorTime = err.Error(), time.Now()
	r.mu.Unlock()
}

func (r *Reconciler) close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.dev != nil {
		r.dev.Close()
		r.dev = nil
	}
}

// Close releases the device handle if Run never ran (Run closes it when it
// returns). It leaves the device as Run does.
func (r *Reconciler) Close() { r.close() }
