// Package supervisor runs a lab: it builds the underlay, starts each
// cluster's control plane, writes the lab's kubeconfig, and runs and keeps
// running the lab's per-cluster and per-node processes (lab kubelets, and the
// mesh's isthmus-apiserver and isthmus-agent when their binaries are given).
// It runs as the detached process `isthmus lab supervise`, holding the lab's
// lock, answers the control API on the lab's control socket, and when its
// context ends (SIGTERM from `isthmus lab down`) or its start fails, it
// removes what it made, in reverse order.
//
// It must not import the CLI or the client-side lab package.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// ControlPlane is a running cluster control plane, as the supervisor uses
// it.
type ControlPlane interface {
	// Kubeconfig returns an admin kubeconfig with one context, named
	// contextName.
	Kubeconfig(contextName string) *clientcmdapi.Config
	// IssueClientCert issues a client certificate the kube-apiserver
	// accepts.
	IssueClientCert(commonName string, groups ...string) (certPEM, keyPEM []byte, err error)
	// CACertPEM is the CA the kube-apiserver's serving certificate chains
	// to.
	CACertPEM() []byte
	// Stop stops the control plane and waits for it.
	Stop(ctx context.Context) error
}

// StartControlPlaneFunc starts the control plane of cluster c, with its
// data under dir, serving on c.KubeAPIURL().
type StartControlPlaneFunc func(ctx context.Context, logger *slog.Logger, c topology.Cluster, serviceCIDR string, dir string, kube state.KubeBinaries) (ControlPlane, error)

// Config configures Run.
type Config struct {
	// Dir is the lab's state directory; its plan.json says what to run.
	Dir state.Dir
	// Cgroups is the cgroup v2 hierarchy. Required.
	Cgroups cgroup.Hierarchy
	// BPFRoot is the bpffs mount; empty means /sys/fs/bpf.
	BPFRoot string
	// StartControlPlane starts a cluster's control plane; nil means
	// StartRealControlPlane.
	StartControlPlane StartControlPlaneFunc
	// Progress, if set, receives a line for each step.
	Progress func(msg string)
	// Ready, if set, is called once the whole lab is ready.
	Ready func()
}

// Supervisor is a running lab. Its methods are safe for concurrent use.
type Supervisor struct {
	log  *slog.Logger
	cfg  Config
	plan state.Plan
	lab  *topology.Lab

	mu        sync.Mutex // guards the fields below
	processes []*process
	planes    map[string]ControlPlane
	ready     bool
}

// Run runs the lab described by cfg.Dir's plan until ctx ends, then
// removes everything it made. It returns the error that stopped the start,
// or nil after an orderly stop.
func Run(ctx context.Context, logger *slog.Logger, cfg Config) error {
	if cfg.BPFRoot == "" {
		cfg.BPFRoot = "/sys/fs/bpf"
	}
	if cfg.Progress == nil {
		cfg.Progress = func(string) {}
	}
	if cfg.StartControlPlane == nil {
		cfg.StartControlPlane = StartRealControlPlane
	}
	var plan state.Plan
	if err := state.ReadJSON(cfg.Dir.PlanFile(), &plan); err != nil {
		return fmt.Errorf("read lab plan: %w", err)
	}
	s := &Supervisor{log: logger, cfg: cfg, plan: plan, planes: map[string]ControlPlane{}}
	var undo undoStack
	defer func() {
		// Tear down with a fresh context: ctx is done by now.
		tctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := undo.run(tctx); err != nil {
			logger.Error("teardown incomplete; run `isthmus lab down` to finish it", logfields.Error, err)
		}
	}()
	stopControl, err := s.serveControl(ctx)
	if err != nil {
		return err
	}
	defer stopControl()
	if err := s.start(ctx, &undo); err != nil {
		return err
	}
	s.mu.Lock()
	s.ready = true
	s.mu.Unlock()
	if cfg.Ready != nil {
		cfg.Ready()
	}
	<-ctx.Done()
	logger.Info("stopping the lab")
	return nil
}

func (s *Supervisor) start(ctx context.Context, undo *undoStack) error {
	begin := time.Now()
	p := s.cfg.Progress
	name := s.plan.Config.WithDefaults().Name

	p("building the underlay network")
	undo.push("underlay", func(context.Context) error { return underlay.Teardown(name) })
	lab, err := underlay.BuildInFreeSlot(func(slot int) (*topology.Lab, error) {
		return topology.New(s.plan.Config, slot)
	})
	if err != nil {
		return fmt.Errorf("build the underlay: %w", err)
	}
	s.lab = lab
	s.log.Info("underlay ready", "subnet", lab.Underlay, "hostLink", lab.HostLink)

	// Runs after the node cgroups are removed (which kills the processes
	// serving userspace WireGuard devices, leaving their sockets).
	undo.push("WireGuard sockets", func(context.Context) error { return underlay.RemoveWireGuard(lab) })
	for _, n := range lab.Nodes() {
		if err := s.cfg.Cgroups.Create(n.Cgroup); err != nil {
			return err
		}
		undo.push("cgroup "+n.Cgroup, func(ctx context.Context) error { return s.cfg.Cgroups.Remove(ctx, n.Cgroup) })
		bpf := filepath.Join(s.cfg.BPFRoot, n.BPFDir)
		if err := os.MkdirAll(bpf, 0o700); err != nil {
			return fmt.Errorf("create bpffs directory: %w", err)
		}
		if err := os.MkdirAll(s.cfg.Dir.NodeDir(n.Name), 0o700); err != nil {
			return err
		}
	}
	undo.push("bpffs", func(context.Context) error { return os.RemoveAll(filepath.Join(s.cfg.BPFRoot, lab.BPFDir)) })

	if err := s.startControlPlanes(ctx, undo); err != nil {
		return err
	}
	if err := s.writeKubeconfig(); err != nil {
		return err
	}
	undo.push("processes", func(context.Context) error { s.stopProcesses(); return nil })
	p(fmt.Sprintf("starting %d lab kubelets", len(lab.Nodes())))
	specs, err := s.nodeProcesses()
	if err != nil {
		return err
	}
	if err := s.startProcesses(ctx, specs); err != nil {
		return err
	}
	if s.meshEnabled() {
		if err := s.startMesh(ctx); err != nil {
			return err
		}
	}
	st := state.State{Lab: lab, SupervisorPID: os.Getpid(), Ready: time.Now(), Mesh: s.meshEnabled()}
	if err := state.WriteJSON(s.cfg.Dir.StateFile(), st); err != nil {
		return err
	}
	s.log.Info("lab ready", logfields.Duration, time.Since(begin))
	return nil
}

// startMesh starts one isthmus-apiserver per cluster, then one
// isthmus-agent per node.
func (s *Supervisor) startMesh(ctx context.Context) error {
	s.cfg.Progress(fmt.Sprintf("starting %d mesh apiservers", len(s.lab.Clusters)))
	specs, err := s.meshAPIServers(ctx)
	if err != nil {
		return err
	}
	if err := s.startProcesses(ctx, specs); err != nil {
		return err
	}
	s.cfg.Progress(fmt.Sprintf("starting %d mesh agents", len(s.lab.Nodes())))
	if specs, err = s.agents(); err != nil {
		return err
	}
	return s.startProcesses(ctx, specs)
}

// startControlPlanes starts every cluster's control plane side by side.
func (s *Supervisor) startControlPlanes(ctx context.Context, undo *undoStack) error {
	s.cfg.Progress(fmt.Sprintf("starting %d control planes (kube-apiserver, kube-controller-manager, kube-scheduler)", len(s.lab.Clusters)))
	var wg sync.WaitGroup
	errs := make([]error, len(s.lab.Clusters))
	for i, c := range s.lab.Clusters {
		wg.Go(func() {
			begin := time.Now()
			cp, err := s.cfg.StartControlPlane(ctx, s.log.With(logfields.Cluster, c.Name), c, s.lab.ServiceCIDR.String(), s.cfg.Dir.ControlPlaneDir(c.Name), s.plan.Kube)
			if err != nil {
				errs[i] = fmt.Errorf("start the control plane of %s: %w", c.Name, err)
				return
			}
			s.mu.Lock()
			s.planes[c.Name] = cp
			s.mu.Unlock()
			s.cfg.Progress(fmt.Sprintf("control plane of %s ready at %s (%s)", c.Name, c.KubeAPIURL(), time.Since(begin).Round(100*time.Millisecond)))
		})
	}
	wg.Wait()
	// Whatever started is stopped on the way out, also when another failed.
	undo.push("control planes", func(ctx context.Context) error {
		s.mu.Lock()
		planes := s.planes
		s.mu.Unlock()
		var errs []error
		for _, cp := range planes {
			errs = append(errs, cp.Stop(ctx))
		}
		return errors.Join(errs...)
	})
	return errors.Join(errs...)
}

func (s *Supervisor) startProcesses(ctx context.Context, specs []ProcessSpec) error {
	var wg sync.WaitGroup
	errs := make([]error, len(specs))
	for i, spec := range specs {
		pr := newProcess(spec, s.cfg.Cgroups, s.log)
		s.mu.Lock()
		s.processes = append(s.processes, pr)
		s.mu.Unlock()
		wg.Go(func() { errs[i] = pr.Start(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// stopProcesses stops the supervised processes, the last started first.
func (s *Supervisor) stopProcesses() {
	s.mu.Lock()
	procs := slices.Clone(s.processes)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, pr := range slices.Backward(procs) {
		wg.Go(pr.Stop)
	}
	wg.Wait()
}

// process returns the supervised process called name.
func (s *Supervisor) process(name string) (*process, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.processes {
		if p.spec.Name == name {
			return p, true
		}
	}
	return nil, false
}

// undoStack holds the steps that take back what a start did.
type undoStack struct {
	mu    sync.Mutex // guards steps
	steps []undoStep
}

type undoStep struct {
	what string
	fn   func(context.Context) error
}

func (u *undoStack) push(what string, fn func(context.Context) error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.steps = append(u.steps, undoStep{what, fn})
}

// run undoes every step, the last first, and goes on past failures.
func (u *undoStack) run(ctx context.Context) error {
	u.mu.Lock()
	steps := u.steps
	u.steps = nil
	u.mu.Unlock()
	var errs []error
	for _, s := range slices.Backward(steps) {
		if err := s.fn(ctx); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.what, err))
		}
	}
	return errors.Join(errs...)
}
