// Package demo is `make demo`: a newcomer's first five minutes. It brings
// up the local lab, connects its two clusters, deploys an echo Deployment
// in both as one global service, sends requests from a pod of the first
// cluster and shows which cluster answered each; then it applies a
// MeshNetworkPolicy in the second cluster that admits only the first
// cluster's frontend pods, shows a frontend allowed, another pod denied and
// the drops at the node agent, deletes the policy and shows the default
// back; then it says how to explore and how to tear down. Every step that
// a user could type is run as the command itself (the isthmus CLI and the
// node agent's CLI) and printed first; every verdict shown is a real
// connection's; only the workloads and the policy are applied with the Go
// client, as kubectl apply would, so that the demo needs no kubectl.
//
// It must not import apiserver/, agent/, datapath/ or internal/cli.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/internal/lab"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// Config says how to run the demo.
type Config struct {
	// Bin holds isthmus, isthmus-apiserver and isthmus-agent (`make
	// build`'s bin/). Commands are shown with it relative to the working
	// directory when it is below it.
	Bin string
	// Out receives the walkthrough.
	Out io.Writer
	// Requests is how many requests to send; zero means 10.
	Requests int
	// Lab names the lab to run on (or bring up); empty means the default
	// lab, and the commands shown then carry no --name.
	Lab string
}

// Namespace holds the demo's workloads in each cluster.
const Namespace = "demo"

// walkthrough is one run of the demo.
type walkthrough struct {
	cfg Config
	out io.Writer
	// shown is how commands name the bin directory.
	shown string
	// env is the environment of the commands run: KUBECONFIG set.
	env   []string
	lab   *lab.Lab
	steps int
	// color is set when the output is a terminal.
	color bool
}

// paint wraps s in an ANSI style (1 bold, 33 yellow, 36 cyan) on a
// terminal.
func (w *walkthrough) paint(style, s string) string {
	if !w.color {
		return s
	}
	return "\033[" + style + "m" + s + "\033[0m"
}

// Run runs the demo.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Requests == 0 {
		cfg.Requests = 10
	}
	if cfg.Lab == "" {
		cfg.Lab = topology.DefaultName
	}
	w := &walkthrough{cfg: cfg, out: cfg.Out, shown: cfg.Bin, env: os.Environ()}
	if f, ok := cfg.Out.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			w.color = true
		}
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, cfg.Bin); err == nil && !strings.HasPrefix(rel, "..") {
			w.shown = rel
		}
	}
	if err := w.preflight(); err != nil {
		return err
	}
	begin := time.Now()
	if err := w.labUp(ctx); err != nil {
		return err
	}
	if err := w.connect(ctx); err != nil {
		return err
	}
	vip, err := w.deploy(ctx)
	if err != nil {
		return err
	}
	if err := w.requests(ctx, vip); err != nil {
		w.agentMaps(ctx)
		return err
	}
	w.agentMaps(ctx)
	if err := w.policy(ctx); err != nil {
		return err
	}
	w.status(ctx)
	w.explore(vip, time.Since(begin))
	return nil
}

// preflight checks what the demo needs before it starts anything.
func (w *walkthrough) preflight() error {
	if os.Geteuid() != 0 {
		return errors.New("the demo runs the local lab, which needs root (network namespaces, cgroups, BPF): run `sudo make demo`")
	}
	for _, b := range []string{"isthmus", "isthmus-apiserver", "isthmus-agent"} {
		if _, err := os.Stat(filepath.Join(w.cfg.Bin, b)); err != nil {
			return fmt.Errorf("%s is missing from %s: run `make build` first (make demo does): %w", b, w.cfg.Bin, err)
		}
	}
	if _, err := exec.LookPath("curl"); err != nil {
		return errors.New("curl is not installed: the demo sends its requests with it (apt-get install curl)")
	}
	return nil
}

// step prints a step's title.
func (w *walkthrough) step(format string, args ...any) {
	w.steps++
	fmt.Fprintf(w.out, "\n%s\n", w.paint("1", fmt.Sprintf("== %d. %s", w.steps, fmt.Sprintf(format, args...))))
}

// say prints an explanation.
func (w *walkthrough) say(format string, args ...any) {
	fmt.Fprintf(w.out, format+"\n", args...)
}

// labCommand is `isthmus lab sub args...` for the demo's lab: the --name
// flag is there only when the lab is not the default one.
func (w *walkthrough) labCommand(sub string, args ...string) []string {
	out := []string{"lab", sub}
	if w.cfg.Lab != topology.DefaultName {
		out = append(out, "--name", w.cfg.Lab)
	}
	return append(out, args...)
}

// command is a command line of our binaries as shown to the user.
func (w *walkthrough) command(bin string, args ...string) (shown string, cmd *exec.Cmd) {
	shown = filepath.Join(w.shown, bin) + " " + strings.Join(args, " ")
	cmd = exec.Command(filepath.Join(w.cfg.Bin, bin), args...)
	cmd.Env = w.env
	return shown, cmd
}

// run shows a command, runs it with its output going to the user, and
// returns its error.
func (w *walkthrough) run(ctx context.Context, bin string, args ...string) error {
	shown, cmd := w.command(bin, args...)
	fmt.Fprintln(w.out, w.paint("36", "$ "+shown))
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env, c.Stdout, c.Stderr = cmd.Env, w.out, w.out
	if err := c.Run(); err != nil {
		return fmt.Errorf("%s: %w", shown, err)
	}
	return nil
}

// output runs a command quietly and returns its standard output.
func (w *walkthrough) output(ctx context.Context, bin string, args ...string) (string, error) {
	shown, cmd := w.command(bin, args...)
	c := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	c.Env = cmd.Env
	var stderr strings.Builder
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", shown, err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

func (w *walkthrough) labUp(ctx context.Context) error {
	w.step("Bring up the local lab: two Kubernetes clusters of two nodes on this machine")
	if l, err := lab.Open("", w.cfg.Lab); err == nil {
		w.say("Lab %q is already running; the demo uses it as it is (`%s` removes it, for a fresh start).", l.Name(), w.shownLab("down"))
		w.lab = l
	} else {
		w.say("Each cluster runs a real kube-apiserver, controller-manager and scheduler; each node is a network\n" +
			"namespace with a lab kubelet, the cluster's isthmus-agent, and pods that run an echo server.\n" +
			"The first run on a machine builds the Kubernetes control plane from source: 5 to 10 minutes on\n" +
			"2 idle cores, with a progress line every 30 seconds. Later runs start in about a minute.")
		if err := w.run(ctx, "isthmus", w.labCommand("up")...); err != nil {
			return err
		}
		if w.lab, err = lab.Open("", w.cfg.Lab); err != nil {
			return err
		}
	}
	w.env = append(w.env, "KUBECONFIG="+w.lab.KubeconfigPath())
	fmt.Fprintf(w.out, "%s    # %s, contexts %s\n", w.paint("36", "$ export KUBECONFIG=$("+w.shownLab("kubeconfig")+" --path)"),
		w.lab.KubeconfigPath(), strings.Join(w.lab.Contexts(), ", "))
	return nil
}

func (w *walkthrough) connect(ctx context.Context) error {
	c1, c2 := w.lab.Contexts()[0], w.lab.Contexts()[1]
	w.step("Connect the clusters")
	w.say("The lab ran `isthmus enable` on each cluster (mesh CA, certificates, cluster name and ID).\n" +
		"connect checks the two are compatible, issues each a client certificate signed by the other's CA,\n" +
		"and writes the isthmus-clustermesh Secret entries that the agents read. Running it again changes nothing.")
	if err := w.run(ctx, "isthmus", "connect", "--context", c1, "--destination-context", c2); err != nil {
		return err
	}
	w.say("\nWait until every agent of %s reads both clusters:", c1)
	if err := w.run(ctx, "isthmus", "status", "--context", c1, "--wait", "--wait-duration", "2m"); err != nil {
		w.say("%s", w.paint("33", "The status is not ready (see above); the demo goes on, but expect the requests to show why."))
	}
	return nil
}

func (w *walkthrough) deploy(ctx context.Context) (vip string, err error) {
	w.step("Deploy an echo server in both clusters, as one global service")
	w.say("In each cluster: a Deployment of 2 echo pods, and a Service `echo` annotated %s.\n"+
		"Applied with the Go client, as `kubectl apply -f -` would; the Service is:\n", globalAnnotation)
	fmt.Fprintf(w.out, "%s\n\n", indent(serviceYAML(), "    "))
	clients := make([]kubernetes.Interface, 0, 2)
	for _, ctxName := range w.lab.Contexts()[:2] {
		k, err := w.lab.Client(ctxName)
		if err != nil {
			return "", err
		}
		clients = append(clients, k)
		if err := apply(ctx, k, ctxName); err != nil {
			return "", err
		}
	}
	w.say("And in %s a pod `client` to send requests from.", w.lab.Contexts()[0])
	if err := applyClient(ctx, clients[0]); err != nil {
		return "", err
	}
	for i, k := range clients {
		w.say("waiting for the echo pods of %s ...", w.lab.Contexts()[i])
		if err := waitReady(ctx, k, "app=echo", 2); err != nil {
			return "", fmt.Errorf("%s: %w", w.lab.Contexts()[i], err)
		}
	}
	if err := waitReady(ctx, clients[0], "app=client", 1); err != nil {
		return "", err
	}
	return serviceIP(ctx, clients[0])
}

// requests sends requests from the client pod to the global service and
// shows who answered each.
func (w *walkthrough) requests(ctx context.Context, vip string) error {
	c1 := w.lab.Contexts()[0]
	w.step("Send %d requests from a pod of %s to the service's ClusterIP", w.cfg.Requests, c1)
	w.say("No kube-proxy runs in the lab: the ClusterIP %s answers only through the mesh's socket load balancer,\n"+
		"which picks a backend in either cluster. Each answer names the pod, node and cluster that served it.", vip)
	args := w.labCommand("exec", c1, Namespace+"/client", "--", "curl", "-sS", "--max-time", "3", "http://"+vip+"/")
	shown, _ := w.command("isthmus", args...)
	fmt.Fprintln(w.out, w.paint("36", "$ "+shown))

	// The agents program the service within seconds of the Service's
	// creation; wait for a first answer before counting.
	deadline := time.Now().Add(2 * time.Minute)
	var lastErr error
	for {
		if _, err := w.ask(ctx, args); err == nil {
			break
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer from http://%s/ within 2 minutes: %v\n"+
				"see what the node agents programmed: %s dump services --api-socket %s",
				vip, lastErr, filepath.Join(w.shown, "isthmus-agent"), agentSocket(w.lab, w.lab.Topology.Clusters[0].Nodes[0].Name))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	count := map[string]int{}
	for i := 1; i <= w.cfg.Requests; i++ {
		who, err := w.ask(ctx, args)
		if err != nil {
			w.say("  request %2d: failed: %v", i, err)
			continue
		}
		count[who.Cluster]++
		w.say("  request %2d: answered by %-28s on %-16s in cluster %s", i, who.Pod, who.Node, w.paint("1", who.Cluster))
	}
	var parts []string
	for _, c := range w.lab.Contexts() {
		if count[c] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", c, count[c]))
		}
	}
	w.say("Answers by cluster: %s.", strings.Join(parts, ", "))
	return nil
}

// agentMaps shows what one node agent programmed for the service.
func (w *walkthrough) agentMaps(ctx context.Context) {
	node := w.lab.Topology.Clusters[0].Nodes[0].Name
	w.step("See what the node agent of %s programmed", node)
	w.say("Each node's agent merges what every cluster exports and writes it into BPF maps; its local API shows them:")
	if err := w.run(ctx, "isthmus-agent", "dump", "services", "--api-socket", agentSocket(w.lab, node)); err != nil {
		w.say("%v", err)
	}
}

func (w *walkthrough) status(ctx context.Context) {
	w.step("Ask the mesh how it is")
	if err := w.run(ctx, "isthmus", "status", "--context", w.lab.Contexts()[0]); err != nil {
		w.say("%v", err)
	}
}

func (w *walkthrough) explore(vip string, took time.Duration) {
	isthmus := filepath.Join(w.shown, "isthmus")
	c1, c2 := w.lab.Contexts()[0], w.lab.Contexts()[1]
	n1, n2 := w.lab.Topology.Clusters[0].Nodes[0].Name, w.lab.Topology.Clusters[1].Nodes[0].Name
	nameFlag, down := "", " (or: make demo-down)"
	if w.cfg.Lab != topology.DefaultName {
		nameFlag, down = " --name "+w.cfg.Lab, ""
	}
	w.step("Explore (the demo took %s)", took.Round(time.Second))
	w.say(`The lab keeps running. Try:
  export KUBECONFIG=$(%[1]s lab kubeconfig%[9]s --path)     # contexts %[2]s and %[3]s
  %[1]s lab status%[9]s                                     # clusters, nodes, processes and their logs
  %[1]s lab exec%[9]s %[2]s %[4]s/client -- curl -s http://%[5]s/
  %[1]s status --context %[3]s
  %[6]s status --api-socket %[7]s
  %[6]s dump ipcache --api-socket %[7]s
  %[6]s flows --follow --api-socket %[8]s    # cross-cluster flows at a node of %[3]s
  eval "$(%[1]s lab env%[9]s %[2]s)"; etcdctl get --prefix cilium/state/ --keys-only    # a mesh etcd (package etcd-client)
  kubectl --kubeconfig $(%[1]s lab kubeconfig%[9]s --path) --context %[2]s get pods -A    # if you have kubectl
  %[1]s disconnect --context %[2]s --destination-context %[3]s    # and watch the answers stay local

Tear down: %[1]s lab down%[9]s%[10]s`,
		isthmus, c1, c2, Namespace, vip, filepath.Join(w.shown, "isthmus-agent"), agentSocket(w.lab, n1), agentSocket(w.lab, n2), nameFlag, down)
}

// shownLab is `isthmus lab sub` as shown to the user, for the demo's lab.
func (w *walkthrough) shownLab(sub string) string {
	return filepath.Join(w.shown, "isthmus") + " " + strings.Join(w.labCommand(sub), " ")
}

// agentSocket is where the lab's agent of node serves its local API (see
// internal/lab/state).
func agentSocket(l *lab.Lab, node string) string {
	return filepath.Join(l.Dir.NodeDir(node), "agent", "agent.sock")
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return strings.Join(lines, "\n")
}
