package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/lab/cgroup"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/lab/kubelet"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/supervisor"
)

// The lab's own processes are hidden subcommands of isthmus, so that one
// binary runs the whole lab. Each reports readiness by writing a byte to
// file descriptor 3, where its starter passed a pipe.

const readyFD = 3

// newLogger is the logger of the lab's own processes, whose stderr is a log
// file: informational lines included, debug ones on request.
func newLogger(w io.Writer, debug bool) *slog.Logger {
	level := slog.LevelInfo
	if debug {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// signalReady writes the readiness byte once.
func signalReady() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			f := os.NewFile(readyFD, "ready")
			_, _ = f.Write([]byte{1})
			f.Close()
		})
	}
}

func newLabSupervise() *cobra.Command {
	var dir string
	var debug bool
	cmd := &cobra.Command{
		Use:    "supervise",
		Short:  "Run a lab (started by `isthmus lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// fd 3 is the lab lock `up` took, fd 4 the progress pipe.
			// Inherited descriptors lack close-on-exec; without it every
			// child would hold the lock past the supervisor's death.
			syscall.CloseOnExec(3)
			syscall.CloseOnExec(4)
			lock := os.NewFile(3, "lock")
			defer lock.Close()
			if err := state.SetLockPID(lock, os.Getpid()); err != nil {
				return err
			}
			progress := os.NewFile(4, "progress")
			var mu sync.Mutex // guards progress
			emit := func(ev state.Event) {
				mu.Lock()
				defer mu.Unlock()
				if progress == nil {
					return
				}
				b, _ := json.Marshal(ev)
				// `up` may be gone; the lab goes on without it.
				_, _ = progress.Write(append(b, '\n'))
				if ev.Ready || ev.Error != "" {
					progress.Close()
					progress = nil
				}
			}
			logger := newLogger(cmd.ErrOrStderr(), debug)
			hier, err := cgroup.Find()
			if err != nil {
				emit(state.Event{Error: err.Error()})
				return err
			}
			err = supervisor.Run(cmd.Context(), logger, supervisor.Config{
				Dir:      state.Dir(dir),
				Cgroups:  hier,
				Progress: func(msg string) { emit(state.Event{Message: msg}) },
				Ready:    func() { emit(state.Event{Ready: true}) },
			})
			if err != nil {
				emit(state.Event{Error: err.Error()})
			}
			return err
		},
	}
	cmd.Flags().StringVar(&dir, "state-dir", "", "the lab's state directory")
	cmd.Flags().BoolVar(&debug, "debug", false, "debug logs")
	_ = cmd.MarkFlagRequired("state-dir")
	return cmd
}

func newLabKubelet() *cobra.Command {
	var config string
	var debug bool
	cmd := &cobra.Command{
		Use:    "kubelet",
		Short:  "Run a lab node's kubelet (started by the lab supervisor)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fc, err := kubelet.ReadFileConfig(config)
			if err != nil {
				return err
			}
			exe, err := os.Executable()
			if err != nil {
				return err
			}
			workload := func(spec kubelet.WorkloadSpec) *exec.Cmd {
				id := spec.Identity
				args := []string{"lab", "workload", "--cluster", id.Cluster, "--node", id.Node,
					"--namespace", id.Namespace, "--pod", id.Pod, "--pod-ip", id.PodIP}
				for _, p := range spec.Ports {
					args = append(args, "--port", p.String())
				}
				cmd := exec.Command(exe, args...)
				cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
				return cmd
			}
			return kubelet.RunProcess(cmd.Context(), newLogger(cmd.ErrOrStderr(), debug), fc, workload, signalReady())
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "the kubelet's configuration file")
	cmd.Flags().BoolVar(&debug, "debug", false, "debug logs")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}

func newLabWorkload() *cobra.Command {
	var id echo.Identity
	var ports []string
	cmd := &cobra.Command{
		Use:    "workload",
		Short:  "Run a lab pod's echo server (started by the lab kubelet)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ps []echo.Port
			for _, s := range ports {
				p, err := echo.ParsePort(s)
				if err != nil {
					return err
				}
				ps = append(ps, p)
			}
			if _, err := netip.ParseAddr(id.PodIP); err != nil {
				return fmt.Errorf("--pod-ip: %w", err)
			}
			logger := newLogger(cmd.ErrOrStderr(), false).With("pod", id.Namespace+"/"+id.Pod)
			return echo.Serve(cmd.Context(), logger, id, ps, signalReady())
		},
	}
	cmd.Flags().StringVar(&id.Cluster, "cluster", "", "cluster name")
	cmd.Flags().StringVar(&id.Node, "node", "", "node name")
	cmd.Flags().StringVar(&id.Namespace, "namespace", "", "pod namespace")
	cmd.Flags().StringVar(&id.Pod, "pod", "", "pod name")
	cmd.Flags().StringVar(&id.PodIP, "pod-ip", "", "pod IP")
	cmd.Flags().StringArrayVar(&ports, "port", nil, "port to serve, [tcp|udp:]N (repeatable)")
	return cmd
}
