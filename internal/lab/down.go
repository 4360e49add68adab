package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
	"github.com/isthmus-mesh/isthmus/internal/lab/underlay"
)

// Down removes lab name: it asks its supervisor to stop (which stops every
// process and removes what it made), then removes whatever is left whoever
// made it — processes of the lab's cgroups, network namespaces and the host
// link, bpffs pins, cgroups and the state directory. It is safe to run on a
// lab that is not running, half-started or already gone.
func Down(ctx context.Context, stateRoot, name string) error {
	if name == "" {
		name = topology.DefaultName
	}
	if err := topology.ValidateName(name); err != nil {
		return err
	}
	if err := requireRoot(); err != nil {
		return err
	}
	dir := state.For(stateRoot, name)
	var errs []error
	if err := stopSupervisor(ctx, dir); err != nil {
		errs = append(errs, err)
	}
	hier, err := cgroup.Find()
	if err != nil {
		return err
	}
	// Anything still running in the lab's cgroups, the supervisor
	// included, is killed; namespaces then go with their mounts.
	cg := topology.CgroupDir(name)
	if err := hier.Kill(ctx, cg); err != nil {
		errs = append(errs, err)
	}
	if err := underlay.Teardown(name); err != nil {
		errs = append(errs, err)
	}
	// The nodes' WireGuard control sockets, left when the processes
	// serving userspace devices were killed.
	if topo, err := plannedTopology(dir); err == nil {
		if err := underlay.RemoveWireGuard(topo); err != nil {
			errs = append(errs, err)
		}
	}
	bpf := filepath.Join(BPFRoot, topology.BPFDir(name))
	if err := os.RemoveAll(bpf); err != nil {
		errs = append(errs, fmt.Errorf("remove bpffs directory: %w", err))
	}
	removeIfEmpty(filepath.Dir(bpf))
	if err := hier.Remove(ctx, cg); err != nil {
		errs = append(errs, err)
	}
	removeIfEmpty(filepath.Dir(hier.Path(cg)))
	if err := os.RemoveAll(string(dir)); err != nil {
		errs = append(errs, fmt.Errorf("remove the state directory: %w", err))
	}
	return errors.Join(errs...)
}

// stopSupervisor sends the lab's supervisor SIGTERM and waits until it has
// released the lab lock, which it does only when it exits; a supervisor
// that takes longer than a minute is left to the cgroup kill.
func stopSupervisor(ctx context.Context, dir state.Dir) error {
	pid, err := dir.Holder()
	if err != nil || pid == 0 {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop the lab supervisor (pid %d): %w", pid, err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if pid, err := dir.Holder(); err == nil && pid == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil // the cgroup kill finishes the job
		case <-tick.C:
		}
	}
}

// plannedTopology computes the names of the lab in dir from its plan (the
// underlay slot aside, which names do not depend on).
func plannedTopology(dir state.Dir) (*topology.Lab, error) {
	var plan state.Plan
	if err := state.ReadJSON(dir.PlanFile(), &plan); err != nil {
		return nil, err
	}
	return topology.New(plan.Config, 0)
}

func removeIfEmpty(dir string) {
	_ = syscall.Rmdir(dir) // fails while other labs use it, as it should
}

func networkLeftovers(name string) ([]string, error) { return underlay.Leftovers(name) }
