package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// labFlags are the flags every lab command shares.
type labFlags struct {
	name      string
	stateRoot string
}

func (f *labFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.name, "name", topology.DefaultName, "name of the lab")
	cmd.Flags().StringVar(&f.stateRoot, "state-root", state.DefaultRoot, "directory holding the labs' state directories")
}

func newLabCommand(_ *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run a local multi-cluster lab on this machine (needs root)",
		Long: `A lab is several Kubernetes clusters on this machine: real kube-apiserver,
kube-controller-manager and kube-scheduler per cluster, and nodes and pods
made of network namespaces, with a lab kubelet per node. Nodes of all
clusters share one bridge, but pods reach only pods of their own cluster:
traffic between clusters needs the mesh. When isthmus-apiserver and
isthmus-agent sit next to the isthmus binary (make build), each cluster runs
the mesh: one isthmus-apiserver per cluster and one agent per node.

Deployments, ReplicaSets, EndpointSlices and scheduling are the real
controllers'. No kube-proxy runs: Services get ClusterIPs and
EndpointSlices, but a ClusterIP answers only through the mesh's socket load
balancer (global services). Every container runs the lab's echo server on
its declared ports, answering with its pod, node and cluster in JSON.

State, logs and the kubeconfig of lab NAME live in /run/isthmus/lab/NAME.`,
	}
	cmd.AddCommand(newLabUp(), newLabDown(), newLabStatus(), newLabKubeconfig(), newLabEnv(), newLabExec())
	cmd.AddCommand(newLabSupervise(), newLabKubelet(), newLabWorkload())
	return cmd
}

func newLabUp() *cobra.Command {
	var f labFlags
	var cfg lab.Config
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start a lab and wait until it is ready",
		Long: `Start a lab in the background and return once every cluster and node is ready.
The first start builds the Kubernetes control-plane binaries, which takes
several minutes; later starts use the cached binaries.`,
		Example: `  isthmus lab up
  isthmus lab up --clusters 3 --nodes 1 --name demo
  kubectl --kubeconfig /run/isthmus/lab/isthmus/kubeconfig --context isthmus-c1 get nodes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Name, cfg.StateRoot = f.name, f.stateRoot
			cfg.Progress = cmd.ErrOrStderr()
			meshBinaries(&cfg)
			begin := time.Now()
			l, err := lab.Up(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "lab %q is up (%s): clusters %s\n", l.Name(), time.Since(begin).Round(100*time.Millisecond), strings.Join(l.Contexts(), ", "))
			fmt.Fprintf(out, "  kubeconfig: export KUBECONFIG=%s\n", l.KubeconfigPath())
			fmt.Fprintf(out, "  status:     isthmus lab status --name %s\n", l.Name())
			fmt.Fprintf(out, "  tear down:  isthmus lab down --name %s\n", l.Name())
			return nil
		},
	}
	f.register(cmd)
	cmd.Flags().IntVar(&cfg.Clusters, "clusters", 2, "number of clusters")
	cmd.Flags().IntVar(&cfg.NodesPerCluster, "nodes", 2, "number of nodes in each cluster")
	cmd.Flags().DurationVar(&cfg.Timeout, "timeout", 5*time.Minute, "how long the start may take once the binaries exist")
	cmd.Flags().BoolVar(&cfg.Debug, "debug", false, "debug logs in the lab's processes")
	return cmd
}

// meshBinaries picks isthmus-apiserver and isthmus-agent from next to the
// isthmus binary, where `make build` puts them.
func meshBinaries(cfg *lab.Config) {
	exe, err := os.Executable()
	if err != nil {
		return
	}
	find := func(name string) string {
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		return ""
	}
	cfg.MeshAPIServer, cfg.Agent = find("isthmus-apiserver"), find("isthmus-agent")
}

func newLabDown() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Remove a lab: every process, namespace, link, cgroup and bpffs pin it made",
		Long: `Remove a lab: its processes, network namespaces, host link, cgroups, bpffs pins
and state directory. Safe to run on a lab that is half-started, crashed or
already gone.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := lab.Down(cmd.Context(), f.stateRoot, f.name); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "lab %q is down\n", f.name)
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func newLabStatus() *cobra.Command {
	var f labFlags
	var output string
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show a lab's clusters, nodes and processes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(f.stateRoot, f.name)
			if err != nil {
				if errors.Is(err, lab.ErrNotRunning) {
					if left, lerr := lab.Leftovers(f.stateRoot, f.name); lerr == nil && len(left) > 0 {
						return fmt.Errorf("%w\nremains of it exist (%s); remove them with `isthmus lab down --name %s`", err, strings.Join(left, ", "), f.name)
					}
				}
				return err
			}
			st, err := l.Status(cmd.Context())
			if err != nil {
				return err
			}
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			case "", "text":
				printStatus(cmd.OutOrStdout(), l, st)
				return nil
			default:
				return fmt.Errorf("--output %q: want text or json", output)
			}
		},
	}
	f.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

func printStatus(w io.Writer, l *lab.Lab, st state.Status) {
	t := l.Topology
	readiness := "starting"
	if st.Ready {
		readiness = "ready"
	}
	fmt.Fprintf(w, "lab %q: %s; underlay %s, host link %s (%s)\n", st.Name, readiness, t.Underlay, t.HostLink, t.HostAddr)
	fmt.Fprintf(w, "kubeconfig: %s\n\n", l.KubeconfigPath())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	health := map[string]string{}
	for _, c := range st.Clusters {
		health[c.Name] = c.KubeAPIServer
	}
	fmt.Fprintln(tw, "CLUSTER\tID\tKUBE-APISERVER\tHEALTH\tMESH ETCD\tPOD CIDR\tSERVICE CIDR")
	for _, c := range t.Clusters {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t%s\n", c.Name, c.ID, c.KubeAPIURL(), health[c.Name], c.MeshEndpoint(), c.PodCIDR, t.ServiceCIDR)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "NODE\tIP\tPOD CIDR\tNETNS\tCGROUP\tWIREGUARD")
	for _, n := range t.Nodes() {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", n.Name, n.IP, n.PodCIDR, n.Netns, n.Cgroup, n.WireGuardDevice)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PROCESS\tSTATE\tPID\tRESTARTS\tSINCE\tLOG")
	for _, p := range st.Processes {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", p.Name, p.State, p.PID, p.Restarts, p.Since.Format(time.TimeOnly), p.LogFile)
	}
	tw.Flush()
}

func newLabKubeconfig() *cobra.Command {
	var f labFlags
	var out string
	var pathOnly bool
	cmd := &cobra.Command{
		Use:   "kubeconfig",
		Short: "Print a lab's kubeconfig (contexts <name>-c1, <name>-c2, ...) or write it to a file",
		Example: `  isthmus lab kubeconfig > lab.kubeconfig
  isthmus lab kubeconfig --output ~/.kube/isthmus-lab
  export KUBECONFIG=$(isthmus lab kubeconfig --path)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.Open(f.stateRoot, f.name)
			if err != nil {
				return err
			}
			if pathOnly {
				fmt.Fprintln(cmd.OutOrStdout(), l.KubeconfigPath())
				return nil
			}
			b, err := os.ReadFile(l.KubeconfigPath())
			if err != nil {
				return err
			}
			if out == "" {
				_, err = cmd.OutOrStdout().Write(b)
				return err
			}
			return os.WriteFile(out, b, 0o600)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVarP(&out, "output", "o", "", "write the kubeconfig to this file instead of printing it")
	cmd.Flags().BoolVar(&pathOnly, "path", false, "print the path of the lab's kubeconfig instead")
	return cmd
}

var contextRE = regexp.MustCompile(`^(.+)-c[0-9]+$`)

// labOfContext is the lab a context belongs to: --name when given,
// otherwise the context name without its "-cN".
func labOfContext(cmd *cobra.Command, f labFlags, kubeContext string) string {
	if cmd.Flags().Changed("name") {
		return f.name
	}
	if m := contextRE.FindStringSubmatch(kubeContext); m != nil {
		return m[1]
	}
	return f.name
}

func newLabEnv() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "env CONTEXT",
		Short: "Print ETCDCTL_* exports for a lab cluster's mesh etcd",
		Example: `  eval "$(isthmus lab env isthmus-c1)"
  etcdctl get --prefix cilium/ --keys-only`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(f.stateRoot, labOfContext(cmd, f, args[0]))
			if err != nil {
				return err
			}
			env, err := l.EtcdEnv(args[0])
			if err != nil {
				return err
			}
			for _, kv := range env {
				k, v, _ := strings.Cut(kv, "=")
				fmt.Fprintf(cmd.OutOrStdout(), "export %s=%q\n", k, v)
			}
			return nil
		},
	}
	f.register(cmd)
	return cmd
}

func newLabExec() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "exec CONTEXT NAMESPACE/POD -- COMMAND [ARG...]",
		Short: "Run a command inside a lab pod's network namespace and its node's cgroup",
		Long: `Run a command of this machine inside a lab pod: in the pod's network namespace
and its node's cgroup, so the node's socket load balancer applies to it.
Standard input, output and the exit code pass through.`,
		Example: `  isthmus lab exec isthmus-c1 default/echo-5d4f7-abcde -- curl -s http://10.1.2.3:8080/
  isthmus lab exec isthmus-c1 default/echo-5d4f7-abcde -- ip addr`,
		Args: cobra.MinimumNArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.ArgsLenAtDash() != 2 {
				return errors.New("put the command after --: isthmus lab exec CONTEXT NAMESPACE/POD -- COMMAND")
			}
			ns, pod, ok := strings.Cut(args[1], "/")
			if !ok || ns == "" || pod == "" {
				return fmt.Errorf("pod %q: write it as NAMESPACE/POD", args[1])
			}
			l, err := lab.Open(f.stateRoot, labOfContext(cmd, f, args[0]))
			if err != nil {
				return err
			}
			err = l.Exec(cmd.Context(), args[0], ns, pod, args[2:], lab.Stdio{
				Stdin: cmd.InOrStdin(), Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr(),
			})
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				code := exit.ExitCode()
				if code < 0 {
					code = 128 + int(exit.Sys().(syscall.WaitStatus).Signal())
				}
				return &ExitError{Code: code, Err: fmt.Errorf("command terminated with exit code %d", code)}
			}
			return err
		},
	}
	f.register(cmd)
	return cmd
}
