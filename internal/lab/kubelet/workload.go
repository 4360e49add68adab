package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
)

// workload is one running workload process.
type workload struct {
	cmd     *exec.Cmd
	exited  chan struct{} // closed once the process has exited
	exitErr error         // set before exited closes
}

func (w *workload) hasExited() bool {
	select {
	case <-w.exited:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, then SIGKILL if the process outlives grace, and waits
// for it to exit.
func (w *workload) stop(grace time.Duration) {
	if w.hasExited() {
		return
	}
	sig := syscall.SIGTERM
	if grace <= 0 {
		sig = syscall.SIGKILL
	}
	_ = w.cmd.Process.Signal(sig)
	if grace > 0 {
		select {
		case <-w.exited:
			return
		case <-time.After(grace):
			_ = w.cmd.Process.Kill()
		}
	}
	<-w.exited
}

// startWorkload starts cmd where w says and waits until it reports ready on
// file descriptor 3.
func startWorkload(ctx context.Context, cmd *exec.Cmd, where nsexec.Where, timeout time.Duration) (*workload, error) {
	r, wr, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("ready pipe: %w", err)
	}
	defer r.Close()
	cmd.ExtraFiles = append([]*os.File{wr}, cmd.ExtraFiles...)
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Workloads die with their kubelet; a restarted kubelet starts them
	// again.
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	err = nsexec.Start(cmd, where)
	wr.Close()
	if err != nil {
		return nil, err
	}
	w := &workload{cmd: cmd, exited: make(chan struct{})}
	go func() {
		w.exitErr = cmd.Wait()
		close(w.exited)
	}()

	readyc := make(chan error, 1)
	go func() {
		var b [1]byte
		_, err := r.Read(b[:]) // EOF when the process exits without writing
		readyc <- err
	}()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case err = <-readyc:
		if err != nil {
			<-w.exited
			err = fmt.Errorf("workload exited before serving: %w", errors.Join(w.exitErr, err))
		}
	case <-timer.C:
		err = fmt.Errorf("workload did not serve within %s", timeout)
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		w.stop(0)
		return nil, err
	}
	return w, nil
}

func workloadSpec(pod *corev1.Pod, node, cluster string, ip netip.Addr) WorkloadSpec {
	spec := WorkloadSpec{Identity: echo.Identity{
		Cluster: cluster, Node: node, Namespace: pod.Namespace, Pod: pod.Name, PodIP: ip.String(),
	}}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			port := echo.Port{Protocol: proto, Number: int(p.ContainerPort)}
			if (proto == "TCP" || proto == "UDP") && !slices.Contains(spec.Ports, port) {
				spec.Ports = append(spec.Ports, port)
			}
		}
	}
	return spec
}
