package demo

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"

	"github.com/isthmus-mesh/isthmus/apis/client"
	"github.com/isthmus-mesh/isthmus/apis/v1alpha1"
	"github.com/isthmus-mesh/isthmus/internal/lab/echo"
	"github.com/isthmus-mesh/isthmus/internal/protocol"
)

const (
	// policyName is the demo's MeshNetworkPolicy, in the second cluster.
	policyName = "echo-from-frontend"
	// echoPort is the port the echo pods serve (the Service's targetPort).
	echoPort = 8080
	// connectTimeout bounds one attempt's connect: a denied connection is
	// dropped silently, so curl gives up after this long.
	connectTimeout = 2 * time.Second
	// settle bounds the wait for the agents to apply a policy change.
	settle = 90 * time.Second
)

// echoPolicy lets pods labelled app=frontend of cluster frontendCluster
// reach the echo pods on their port; it selects the echo pods, so every
// other cross-cluster connection to them is denied.
func echoPolicy(frontendCluster string) *v1alpha1.MeshNetworkPolicy {
	return &v1alpha1.MeshNetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: v1alpha1.SchemeGroupVersion.String(), Kind: "MeshNetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: policyName, Namespace: Namespace},
		Spec: v1alpha1.MeshNetworkPolicySpec{
			EndpointSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "echo"}},
			Ingress: []v1alpha1.IngressRule{{
				FromEndpoints: []metav1.LabelSelector{{MatchLabels: map[string]string{
					"app": "frontend",
					// Without it the rule would name this cluster's frontends
					// only: a peer selector spans clusters only when it says so.
					protocol.LabelPolicyCluster: frontendCluster,
				}}},
				ToPorts: []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: fmt.Sprint(echoPort), Protocol: v1alpha1.ProtocolTCP}}}},
			}},
		},
	}
}

// target is the echo pod of the second cluster the attempts go to.
type target struct {
	pod, node, ip string
}

func (t target) String() string { return fmt.Sprintf("%s:%d", t.ip, echoPort) }

// attempt is the outcome of one connection from a pod to the target.
type attempt struct {
	answer echo.Response
	// timedOut is curl's exit code 28: no answer within the timeout, which
	// is what a silent drop looks like from the pod.
	timedOut bool
	err      error
}

func (a attempt) allowed() bool { return a.err == nil }
func (a attempt) denied() bool  { return a.timedOut }

// policy shows MeshNetworkPolicy at work: a frontend pod of the first
// cluster reaches an echo pod of the second, the client pod does not, the
// agent of the echo pod's node shows the drops, and deleting the policy
// brings the default back. Every verdict printed is a real connection's.
func (w *walkthrough) policy(ctx context.Context) error {
	c1, c2 := w.lab.Contexts()[0], w.lab.Contexts()[1]
	k1, err := w.lab.Client(c1)
	if err != nil {
		return err
	}
	k2, err := w.lab.Client(c2)
	if err != nil {
		return err
	}
	cfg, err := w.lab.RESTConfig(c2)
	if err != nil {
		return err
	}
	mesh, err := client.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("isthmus.dev client for %s: %w", c2, err)
	}
	policies := mesh.MeshNetworkPolicies(Namespace)

	w.step("Cross-cluster policy: before")
	w.say("An endpoint that no MeshNetworkPolicy selects accepts cross-cluster traffic. Add a pod `frontend`\n"+
		"(label app=frontend) next to `client` (app=client) in %s, and let both call one echo pod of %s directly.", c1, c2)
	// A policy left by an interrupted run would spoil the "before".
	if err := policies.Delete(ctx, policyName, metav1.DeleteOptions{}); err == nil {
		w.say("(removed the policy %s/%s an earlier run left behind)", Namespace, policyName)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete MeshNetworkPolicy %s/%s in %s: %w", Namespace, policyName, c2, err)
	}
	if err := applyPod(ctx, k1, "frontend"); err != nil {
		return err
	}
	if err := waitReady(ctx, k1, "app=frontend", 1); err != nil {
		return err
	}
	tgt, err := echoTarget(ctx, k2)
	if err != nil {
		return fmt.Errorf("%s: %w", c2, err)
	}
	w.showCurl("frontend", tgt, "then the same from "+Namespace+"/client")
	for _, pod := range []string{"frontend", "client"} {
		if err := w.expect(ctx, pod, tgt, true); err != nil {
			return err
		}
	}

	w.step("Apply a MeshNetworkPolicy in %s: only frontend pods of %s may call echo, on port %d", c2, c1, echoPort)
	w.say("A policy lives with the pods it protects. Applied with the Go client, as `kubectl --context %s apply -f -` would:\n", c2)
	fmt.Fprintf(w.out, "%s\n\n", indent(manifestYAML(echoPolicy(c1)), "    "))
	p, err := policies.Create(ctx, echoPolicy(c1), metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create MeshNetworkPolicy %s/%s in %s: %w", Namespace, policyName, c2, err)
	}
	cond, err := waitAccepted(ctx, policies, p.Generation)
	if err != nil {
		return fmt.Errorf("%s: %w", c2, err)
	}
	w.say("%s's mesh apiserver set its status: %s=%s, %q. The agents of %s compile it into their policy maps;\n"+
		"the tunnel program on the echo pod's node checks each new connection from another cluster against them.",
		c2, cond.Type, cond.Status, cond.Message, c2)
	w.showCurl("client", tgt, "then the same from "+Namespace+"/frontend")
	// The deny is the change to wait for; frontend is then checked once
	// it holds (and, being allowed all along, needs no wait).
	if err := w.expect(ctx, "client", tgt, false); err != nil {
		return err
	}
	if err := w.expect(ctx, "frontend", tgt, true); err != nil {
		return err
	}

	w.step("See the drops at the agent of %s, the echo pod's node", tgt.node)
	w.say("Each dropped packet is a flow event naming the verdict's reason and the policy; the latest two:")
	socket := agentSocket(w.lab, tgt.node)
	if err := w.run(ctx, "isthmus-agent", "flows", "--dropped", "--last", "2", "--address", tgt.ip, "--port", fmt.Sprint(echoPort), "--api-socket", socket); err != nil {
		w.say("%v", err)
	}
	w.policyStatus(ctx, socket)

	w.step("Delete the policy: the default is back")
	w.say("%s", w.paint("36", fmt.Sprintf("$ kubectl --context %s -n %s delete meshnetworkpolicy %s", c2, Namespace, policyName))+"    # done with the Go client")
	if err := policies.Delete(ctx, policyName, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete MeshNetworkPolicy %s/%s in %s: %w", Namespace, policyName, c2, err)
	}
	w.showCurl("client", tgt, "")
	return w.expect(ctx, "client", tgt, true)
}

// showCurl prints the command that connects from pod to the target, with
// a comment when there is one.
func (w *walkthrough) showCurl(pod string, t target, comment string) {
	shown, _ := w.command("isthmus", w.curlArgs(pod, t)...)
	line := w.paint("36", "$ "+shown)
	if comment != "" {
		line += "    # " + comment
	}
	fmt.Fprintln(w.out, line)
}

// policyStatus shows the policy section of the agent's status.
func (w *walkthrough) policyStatus(ctx context.Context, socket string) {
	shown, _ := w.command("isthmus-agent", "status", "--api-socket", socket)
	fmt.Fprintln(w.out, w.paint("36", "$ "+shown+" | grep -A1 MeshNetworkPolicy:"))
	out, err := w.output(ctx, "isthmus-agent", "status", "--api-socket", socket)
	if err != nil {
		w.say("%v", err)
		return
	}
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "MeshNetworkPolicy:") {
			w.say("%s", strings.Join(lines[i:min(i+2, len(lines))], "\n"))
			return
		}
	}
	w.say("(the agent's status has no MeshNetworkPolicy section)")
}

// curlArgs is the isthmus command that connects from pod of the first
// cluster to the target.
func (w *walkthrough) curlArgs(pod string, t target) []string {
	return w.labCommand("exec", w.lab.Contexts()[0], Namespace+"/"+pod, "--",
		"curl", "-sS", "--connect-timeout", fmt.Sprint(connectTimeout.Seconds()), "--max-time", "5", "http://"+t.String()+"/")
}

// try connects once from pod to the target.
func (w *walkthrough) try(ctx context.Context, pod string, t target) attempt {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	out, err := w.output(ctx, "isthmus", w.curlArgs(pod, t)...)
	if err != nil {
		var exit *exec.ExitError
		return attempt{err: err, timedOut: errors.As(err, &exit) && exit.ExitCode() == 28}
	}
	var r echo.Response
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		return attempt{err: fmt.Errorf("answer %q is not the echo server's: %w", out, err)}
	}
	if r.PodIP != t.ip {
		return attempt{answer: r, err: fmt.Errorf("answered by %s (%s), not the target", r.Pod, r.PodIP)}
	}
	return attempt{answer: r}
}

// expect connects from pod to the target until the connection is allowed
// (or denied) as wanted, at most for settle, and prints the last attempt.
// It fails when the verdict never comes.
func (w *walkthrough) expect(ctx context.Context, pod string, t target, allowed bool) error {
	begin := time.Now()
	deadline := begin.Add(settle)
	tries := 0
	var a attempt
	for {
		tries++
		a = w.try(ctx, pod, t)
		if (allowed && a.allowed()) || (!allowed && a.denied()) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	var verdict string
	switch {
	case a.allowed():
		verdict = fmt.Sprintf("%s, answered by %s in %s", w.paint("32", "allowed"), a.answer.Pod, a.answer.Cluster)
	case a.denied():
		verdict = fmt.Sprintf("%s, no answer: curl gave up after %s (exit 28)", w.paint("31", "denied"), connectTimeout)
	default:
		verdict = fmt.Sprintf("%s: %v", w.paint("33", "failed"), a.err)
	}
	note := ""
	if tries > 1 {
		note = fmt.Sprintf("    (attempt %d, %s after the first)", tries, time.Since(begin).Round(time.Second))
	}
	w.say("  %-8s -> %s %s: %s%s", pod, t.pod, t, verdict, note)
	if err := ctx.Err(); err != nil {
		return err
	}
	if allowed != a.allowed() || (!allowed && !a.denied()) {
		want := "allowed"
		if !allowed {
			want = "denied (a timeout)"
		}
		return fmt.Errorf("%s -> %s: want %s, still not so after %s; see what the agent of %s saw: %s flows --address %s --api-socket %s",
			pod, t, want, settle, t.node, filepath.Join(w.shown, "isthmus-agent"), t.ip, agentSocket(w.lab, t.node))
	}
	return nil
}

// echoTarget picks the running echo pod first by name.
func echoTarget(ctx context.Context, k kubernetes.Interface) (target, error) {
	list, err := k.CoreV1().Pods(Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		return target{}, fmt.Errorf("list the echo pods: %w", err)
	}
	pods := slices.DeleteFunc(list.Items, func(p corev1.Pod) bool {
		return p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil
	})
	if len(pods) == 0 {
		return target{}, errors.New("no running echo pod")
	}
	slices.SortFunc(pods, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	return target{pod: pods[0].Name, node: pods[0].Spec.NodeName, ip: pods[0].Status.PodIP}, nil
}

// waitAccepted waits until the mesh apiserver has set the policy's
// Accepted condition for generation, and returns it; a policy found
// invalid is an error naming the reason.
func waitAccepted(ctx context.Context, policies client.MeshNetworkPolicyInterface, generation int64) (metav1.Condition, error) {
	var cond metav1.Condition
	last := "no status yet"
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := policies.Get(ctx, policyName, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionAccepted)
		if c == nil || c.ObservedGeneration != generation {
			return false, nil
		}
		if c.Status != metav1.ConditionTrue {
			return false, fmt.Errorf("MeshNetworkPolicy %s/%s is not accepted: %s: %s", Namespace, policyName, c.Reason, c.Message)
		}
		cond = *c
		return true, nil
	})
	if err != nil {
		return cond, fmt.Errorf("waiting for MeshNetworkPolicy %s/%s to be accepted: %w (last: %s)", Namespace, policyName, err, last)
	}
	return cond, nil
}
