// Package lab is the Go API of the local multi-cluster lab, used by
// `isthmus lab` and by the e2e suites: Up starts a lab (a detached
// supervisor process, see internal/lab/supervisor) and returns once it is
// ready; Open attaches to a running one; Down removes every trace of one.
//
// A lab is real where it matters: each cluster runs a real kube-apiserver,
// kube-controller-manager and kube-scheduler (internal/controlplane); each
// node is a network namespace with its own cgroup and bpffs directory, run by
// a lab kubelet (internal/lab/kubelet); pods are network namespaces running
// the echo server (internal/lab/echo). See internal/lab/topology for the
// addressing plan and internal/lab/state for the state directory. No
// kube-proxy runs, so ClusterIPs answer only through the mesh's socket load
// balancer.
//
// It must not import apiserver/, agent/ or datapath/.
package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
)

// Config says what lab to bring up. The zero value is the default lab:
// "isthmus", 2 clusters of 2 nodes.
type Config struct {
	// Name, Clusters and NodesPerCluster shape the lab (topology.Config).
	topology.Config
	// StateRoot holds the labs' state directories; empty means
	// state.DefaultRoot (/run/isthmus/lab).
	StateRoot string
	// Isthmus is the isthmus binary, which runs the supervisor, the lab
	// kubelets and the pod workloads; empty means the running executable.
	Isthmus string
	// MeshAPIServer and Agent are the isthmus-apiserver and isthmus-agent
	// binaries; empty runs the lab without the mesh.
	MeshAPIServer, Agent string
	// Kube configures the build of the control-plane binaries (cache
	// directory); its Progress is set from Progress.
	Kube kubebin.Options
	// Progress receives one line per step of the start; nil discards them.
	Progress io.Writer
	// Timeout bounds the whole start once the binaries exist. Zero means
	// five minutes.
	Timeout time.Duration
	// Debug turns on debug logs in the lab's processes.
	Debug bool
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	// Topology is the lab's names and addresses.
	Topology *topology.Lab
	// Dir is the lab's state directory.
	Dir state.Dir

	stateRoot string
}

// Name is the lab's name.
func (l *Lab) Name() string { return l.Topology.Name }

// KubeconfigPath is the lab's admin kubeconfig, with one context per
// cluster named like the cluster (<name>-c1, <name>-c2, ...).
func (l *Lab) KubeconfigPath() string { return l.Dir.Kubeconfig() }

// Contexts lists the kubeconfig contexts, one per cluster, in order.
func (l *Lab) Contexts() []string { return l.Topology.ClusterNames() }

// ErrNotRunning means no supervisor runs for the named lab.
var ErrNotRunning = errors.New("lab is not running")

// Open attaches to the running lab called name (topology.DefaultName when
// empty) under stateRoot (state.DefaultRoot when empty).
func Open(stateRoot, name string) (*Lab, error) {
	if name == "" {
		name = topology.DefaultName
	}
	dir := state.For(stateRoot, name)
	pid, err := dir.Holder()
	if err != nil {
		return nil, err
	}
	if pid == 0 {
		return nil, fmt.Errorf("%w: no lab %q runs; start it with `isthmus lab up --name %s`", ErrNotRunning, name, name)
	}
	var st state.State
	if err := state.ReadJSON(dir.StateFile(), &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: lab %q is still starting (supervisor %d); wait for `isthmus lab up` to finish", ErrNotRunning, name, pid)
		}
		return nil, err
	}
	return &Lab{Topology: st.Lab, Dir: dir, stateRoot: stateRoot}, nil
}

// Up starts the lab cfg describes and returns once every cluster and node
// is ready. A lab of that name that is running is an error; the remains of
// one whose supervisor died are removed first. When the start fails or ctx
// ends before the lab is ready, everything started is removed again.
func Up(ctx context.Context, cfg Config) (*Lab, error) {
	cfg.Config = cfg.Config.WithDefaults()
	if err := cfg.Config.Validate(); err != nil {
		return nil, err
	}
	if err := requireRoot(); err != nil {
		return nil, err
	}
	name := cfg.Name
	progress := cfg.Progress
	if progress == nil {
		progress = io.Discard
	}
	say := func(format string, args ...any) { fmt.Fprintf(progress, format+"\n", args...) }
	dir := state.For(cfg.StateRoot, name)

	if pid, err := dir.Holder(); err != nil {
		return nil, err
	} else if pid != 0 {
		return nil, fmt.Errorf("lab %q is already running (supervisor pid %d); see `isthmus lab status --name %s`, or remove it with `isthmus lab down --name %s`", name, pid, name, name)
	}
	hier, err := cgroup.Find()
	if err != nil {
		return nil, err
	}
	if left, err := Leftovers(cfg.StateRoot, name); err != nil {
		return nil, err
	} else if len(left) > 0 {
		say("removing the remains of lab %q, whose supervisor is gone: %s", name, strings.Join(left, ", "))
		if err := Down(ctx, cfg.StateRoot, name); err != nil {
			return nil, fmt.Errorf("remove the remains of lab %q: %w; try `isthmus lab down --name %s`", name, err, name)
		}
	}

	isthmus := cfg.Isthmus
	if isthmus == "" {
		if isthmus, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the isthmus binary: %w", err)
		}
	}
	kubeOpts := cfg.Kube
	kubeOpts.Progress = progress
	kube, err := kubebin.Ensure(ctx, kubeOpts)
	if err != nil {
		return nil, err
	}

	if err := os.MkdirAll(string(dir), 0o700); err != nil {
		return nil, fmt.Errorf("create the lab's state directory: %w", err)
	}
	lock, err := dir.Lock(os.Getpid())
	if errors.Is(err, state.ErrLocked) {
		return nil, fmt.Errorf("lab %q is being started by another process; see `isthmus lab status --name %s`", name, name)
	}
	if err != nil {
		return nil, err
	}
	plan := state.Plan{
		Config:        cfg.Config,
		Isthmus:       isthmus,
		Kube:          state.KubeBinaries{Version: kube.Version, APIServer: kube.APIServer, ControllerManager: kube.ControllerManager, Scheduler: kube.Scheduler},
		MeshAPIServer: cfg.MeshAPIServer,
		Agent:         cfg.Agent,
		Debug:         cfg.Debug,
	}
	if err := state.WriteJSON(dir.PlanFile(), plan); err != nil {
		lock.Close()
		return nil, err
	}

	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = 5 * time.Minute
	}
	uctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err = startSupervisor(uctx, hier, dir, name, isthmus, lock, say)
	// From here on the supervisor alone holds the lock, so it ends with it.
	lock.Close()
	if err == nil {
		var l *Lab
		if l, err = Open(cfg.StateRoot, name); err == nil {
			return l, nil
		}
	}
	// Roll back, whatever the supervisor managed to undo itself.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer dcancel()
	tail := logTail(dir.LogFile(), 30)
	if derr := Down(dctx, cfg.StateRoot, name); derr != nil {
		err = errors.Join(err, fmt.Errorf("roll back: %w", derr))
	}
	return nil, fmt.Errorf("lab %q did not come up: %w%s", name, err, tail)
}

// startSupervisor starts `isthmus lab supervise` detached (its own session,
// in the lab's supervisor cgroup, sharing the lab lock), relays its progress
// and returns once it reports the lab ready.
func startSupervisor(ctx context.Context, hier cgroup.Hierarchy, dir state.Dir, name, isthmus string, lock *os.File, say func(string, ...any)) error {
	sup := topology.CgroupDir(name) + "/supervisor"
	if err := hier.Create(sup); err != nil {
		return err
	}
	cg, err := hier.Open(sup)
	if err != nil {
		return err
	}
	defer cg.Close()
	logf, err := os.OpenFile(dir.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open the supervisor log: %w", err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	cmd := exec.Command(isthmus, "lab", "supervise", "--state-dir", string(dir))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lock, pw} // fd 3: the lab lock; fd 4: progress
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("start the lab supervisor: %w", err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it ends while we live

	events := make(chan state.Event)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var ev state.Event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				events <- ev
			}
		}
	}()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the lab: %w", context.Cause(ctx))
		case ev, ok := <-events:
			switch {
			case !ok:
				return errors.New("the lab supervisor exited before the lab was ready")
			case ev.Error != "":
				return errors.New(ev.Error)
			case ev.Ready:
				return nil
			default:
				say("%s", ev.Message)
			}
		}
	}
}

// Leftovers lists what exists of lab name: its state directory, cgroups,
// bpffs directory, network namespaces and host link. A running lab has
// leftovers too; check it is not running first.
func Leftovers(stateRoot, name string) ([]string, error) {
	var found []string
	if _, err := os.Stat(string(state.For(stateRoot, name))); err == nil {
		found = append(found, "state directory "+string(state.For(stateRoot, name)))
	}
	if hier, err := cgroup.Find(); err == nil && hier.Exists(topology.CgroupDir(name)) {
		found = append(found, "cgroup "+hier.Path(topology.CgroupDir(name)))
	}
	if _, err := os.Stat(filepath.Join(BPFRoot, topology.BPFDir(name))); err == nil {
		found = append(found, "bpffs directory "+filepath.Join(BPFRoot, topology.BPFDir(name)))
	}
	if topo, err := plannedTopology(state.For(stateRoot, name)); err == nil {
		found = append(found, underlay.WireGuardLeftovers(topo)...)
	}
	net, err := networkLeftovers(name)
	return append(found, net...), err
}

// BPFRoot is where bpffs is mounted.
const BPFRoot = "/sys/fs/bpf"

func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "\nlast lines of " + path + ":\n  " + strings.Join(lines, "\n  ")
}

// requireRoot says clearly that the lab needs root, before anything fails
// with a bare "operation not permitted".
func requireRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, cgroups, bpffs); run it as root, e.g. with sudo")
	}
	return nil
}
