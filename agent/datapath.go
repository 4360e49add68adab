package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/isthmus-mesh/isthmus/agent/flows"
	"github.com/isthmus-mesh/isthmus/agent/nodekey"
	"github.com/isthmus-mesh/isthmus/agent/tunnel"
	"github.com/isthmus-mesh/isthmus/datapath/socklb"
	"github.com/isthmus-mesh/isthmus/datapath/tunnelpolicy"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// datapath is what the agent runs beside the maps: the socket load
// balancer, the WireGuard tunnel with the tunnel policy programs on it,
// the publication of the node's key, and the flow events. Each part is
// nil when the Config leaves it out.
type datapath struct {
	socklb   *socklb.LoadBalancer
	enforcer *tunnelpolicy.Enforcer
	tunnel   *tunnel.Reconciler
	keys     *nodekey.Publisher
	reader   *tunnelpolicy.FlowReader
	flows    *flows.Hub
}

// newDatapath loads the programs, attaches the socket LB (taking over the
// attachments of an earlier agent) and sets up the WireGuard device. The
// tunnel policy programs are attached by the tunnel each time it has a
// device.
func (a *Agent) newDatapath() (err error) {
	dp := &a.dp
	defer func() {
		if err != nil {
			a.closeDatapath()
		}
	}()
	cfg := a.cfg
	if err := cfg.Registry.Register(flows.NewCounterCollector(func() (map[tunnelpolicy.Reason]tunnelpolicy.Counter, error) {
		return tunnelpolicy.ReadCounters(a.maps)
	})); err != nil {
		return err
	}
	if cfg.SocketLBCgroup != "" {
		if dp.socklb, err = socklb.New(a.maps); err != nil {
			return fmt.Errorf("load the socket load balancer: %w", err)
		}
		if err := dp.socklb.Attach(cfg.SocketLBCgroup); err != nil {
			return fmt.Errorf("attach the socket load balancer: %w", err)
		}
		a.logger.Info("Socket load balancer attached", "cgroup", cfg.SocketLBCgroup)
	}
	if cfg.WireGuard == nil {
		a.logger.Warn("Running without WireGuard: no tunnel to other clusters and no cross-cluster policy; pods of other clusters are reached only if the network routes them")
		return nil
	}
	pcfg := cfg.TunnelPolicy
	pcfg.Ethernet = false // WireGuard is an L3 device
	if dp.enforcer, err = tunnelpolicy.New(a.maps, pcfg); err != nil {
		return fmt.Errorf("load the tunnel policy programs: %w", err)
	}
	if dp.reader, err = tunnelpolicy.NewFlowReader(a.maps); err != nil {
		return err
	}
	if dp.flows, err = flows.New(a.logger, flows.Config{Source: dp.reader, History: cfg.FlowHistory, Metrics: flows.NewMetrics(cfg.Registry)}); err != nil {
		return err
	}
	dp.tunnel, err = tunnel.New(a.logger, tunnel.Config{
		WireGuard:    *cfg.WireGuard,
		State:        a.state,
		LocalCluster: cfg.ClusterName,
		NodeName:     cfg.NodeName,
		OnDevice: func(ifindex int) error {
			if err := dp.enforcer.Attach(ifindex); err != nil {
				return err
			}
			a.logger.Info("Tunnel policy attached to the WireGuard device", "ifindex", ifindex)
			return nil
		},
		Metrics: tunnel.NewMetrics(cfg.Registry),
	})
	if err != nil {
		return err
	}
	dp.keys, err = nodekey.New(a.logger, nodekey.Config{Client: cfg.Client, NodeName: cfg.NodeName, Key: dp.tunnel.PublicKey(), Registry: cfg.Registry})
	return err
}

// runDatapath starts the datapath's goroutines on wg.
func (a *Agent) runDatapath(ctx context.Context, wg *sync.WaitGroup) {
	dp := &a.dp
	if dp.tunnel != nil {
		wg.Go(func() { dp.tunnel.Run(ctx) })
		wg.Go(func() { dp.keys.Run(ctx) })
	}
	if dp.flows != nil {
		wg.Go(func() { dp.flows.Run(ctx) })
	}
}

// closeDatapath releases the datapath's handles. Attachments (socket LB,
// tunnel policy) and a kernel or helper-served WireGuard device stay, so
// that traffic flows on while the agent restarts.
func (a *Agent) closeDatapath() {
	dp := &a.dp
	var errs []error
	if dp.tunnel != nil {
		dp.tunnel.Close()
	}
	if dp.reader != nil {
		errs = append(errs, dp.reader.Close())
	}
	if dp.enforcer != nil {
		errs = append(errs, dp.enforcer.Close())
	}
	if dp.socklb != nil {
		errs = append(errs, dp.socklb.Close())
	}
	if err := errors.Join(errs...); err != nil {
		a.logger.Warn("Closing the datapath's handles", logfields.Error, err)
	}
}
