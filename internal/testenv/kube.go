package testenv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/controlplane"
	"github.com/isthmus-mesh/isthmus/internal/kubebin"
)

// Options configure an Env.
type Options struct {
	// Controllers also runs kube-controller-manager (every default
	// controller: Deployments, ReplicaSets, EndpointSlices, service
	// accounts, namespace deletion, garbage collection, node lifecycle)
	// and kube-scheduler. Without it only the apiserver runs, and Kube
	// creates each namespace's default ServiceAccount itself so pods can
	// be created.
	Controllers bool
	// ClusterCIDR, with Controllers, has the controller manager allocate
	// Nodes' pod CIDRs from it; see controlplane.Config.ClusterCIDR.
	ClusterCIDR netip.Prefix
}

// Env is a Kubernetes control plane shared by the tests of one test
// binary. Create it with New in a package-level variable, pass it to Main
// from TestMain, and call Kube from tests. Safe for concurrent use.
type Env struct {
	opts Options

	startOnce sync.Once
	// Set once inside startOnce, read-only afterwards.
	cp       *controlplane.ControlPlane
	startErr error
	dataDir  string
	startup  time.Duration

	mu      sync.Mutex // guards inMain
	inMain  bool
	stopped bool
}

// New returns an Env that starts its control plane on the first Kube call.
func New(opts Options) *Env { return &Env{opts: opts} }

// Main runs the tests, stops every env's control plane and exits. Call it
// from TestMain.
func Main(m *testing.M, envs ...*Env) {
	os.Exit(Run(m, envs...))
}

// Run is Main without the exit, for a TestMain that checks more after the
// tests (goroutine leaks, say). It returns the exit code, which is 1 when
// the tests passed but a control-plane component died under them.
func Run(m *testing.M, envs ...*Env) int {
	for _, e := range envs {
		e.mu.Lock()
		e.inMain = true
		e.mu.Unlock()
	}
	code := m.Run()
	for _, e := range envs {
		if err := e.stop(); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// Kube is one test's view of the shared control plane.
type Kube struct {
	// Config authenticates as the cluster admin (system:masters). It is
	// the test's own copy.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// Kubeconfig is the path of an admin kubeconfig, private to the test,
	// whose current context ("testenv") defaults to Namespace.
	Kubeconfig string
	// Namespace was created for this test and is deleted after it.
	Namespace string
	// ControlPlane is the shared control plane, e.g. to issue client
	// certificates for other users. Do not stop it.
	ControlPlane *controlplane.ControlPlane
}

// Kube returns the shared control plane, starting it on first use, and a
// fresh namespace for t. It fails t when the control plane cannot run; it
// skips t only under -short, the unit tier, which runs no kube-apiserver.
func (e *Env) Kube(t testing.TB) *Kube {
	t.Helper()
	if testing.Short() {
		t.Skip("testenv: runs a real kube-apiserver; not part of the unit tier (-short)")
	}
	e.mu.Lock()
	inMain, stopped := e.inMain, e.stopped
	e.mu.Unlock()
	if !inMain {
		t.Fatal("testenv: pass this Env to testenv.Main(m, env) in TestMain, which stops its control plane after the tests")
	}
	if stopped {
		t.Fatal("testenv: the control plane was already stopped")
	}
	e.startOnce.Do(func() { e.start(t) })
	if e.startErr != nil {
		t.Fatalf("testenv: %v", e.startErr)
	}

	cfg := e.cp.RESTConfig()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("testenv: create client: %v", err)
	}
	ns := namespaceFor(t.Name())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("testenv: create namespace %s: %v", ns, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("testenv: delete namespace %s: %v", ns, err)
		}
	})
	if !e.opts.Controllers {
		// The service-account controller is not running; without the
		// default ServiceAccount the apiserver refuses pods.
		sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
		if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("testenv: create default service account in %s: %v", ns, err)
		}
	}

	kc := e.cp.Kubeconfig("testenv")
	kc.Contexts["testenv"].Namespace = ns
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatalf("testenv: write kubeconfig: %v", err)
	}
	return &Kube{Config: cfg, Client: client, Kubeconfig: path, Namespace: ns, ControlPlane: e.cp}
}

// StartupTime returns how long the shared control plane took to start,
// binaries included. Call it after Kube.
func (e *Env) StartupTime() time.Duration { return e.startup }

// startMargin is kept between the start's deadline and the test's, so a
// start that runs out of time fails with a message rather than the test
// binary's timeout panic.
const startMargin = 30 * time.Second

func (e *Env) start(t testing.TB) {
	begin := time.Now()
	ctx := context.Background()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline.Add(-startMargin))
			defer cancel()
		}
	}
	bins, err := kubebin.Ensure(ctx, kubebin.Options{Progress: os.Stderr})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w\nthe control-plane binaries were not built before the test deadline: run `make kube` once (it caches them), or raise go test -timeout", err)
		}
		e.startErr = err
		return
	}
	built := time.Since(begin)
	e.dataDir, err = os.MkdirTemp("", "isthmus-testenv-")
	if err != nil {
		e.startErr = err
		return
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	e.cp, err = controlplane.Start(ctx, logger, controlplane.Config{
		Binaries:          bins,
		DataDir:           e.dataDir,
		Name:              "testenv",
		ControllerManager: e.opts.Controllers,
		Scheduler:         e.opts.Controllers,
		ClusterCIDR:       e.opts.ClusterCIDR,
	})
	if err != nil {
		e.startErr = fmt.Errorf("start the control plane (files kept in %s): %w", e.dataDir, err)
		return
	}
	e.startup = time.Since(begin)
	t.Logf("testenv: control plane (Kubernetes %s, controllers %t) ready in %s (binaries %s) at %s",
		bins.Version, e.opts.Controllers, e.startup.Round(time.Millisecond), built.Round(time.Millisecond), e.cp.Endpoint())
}

func (e *Env) stop() error {
	e.mu.Lock()
	e.stopped = true
	e.mu.Unlock()
	// Wait for a start in progress, and stop further ones.
	e.startOnce.Do(func() {})
	if e.cp == nil {
		return nil
	}
	if err := e.cp.Stop(context.Background()); err != nil {
		return fmt.Errorf("control plane failed during the tests (files kept in %s): %w", e.dataDir, err)
	}
	return os.RemoveAll(e.dataDir)
}

var nonNameChars = regexp.MustCompile(`[^a-z0-9-]+`)

// namespaceFor derives a unique, valid namespace name from a test name.
func namespaceFor(testName string) string {
	base := strings.Trim(nonNameChars.ReplaceAllString(strings.ToLower(testName), "-"), "-")
	if len(base) > 50 {
		base = strings.TrimRight(base[:50], "-")
	}
	if base == "" {
		base = "test"
	}
	return base + "-" + randomSuffix(6)
}

// randomSuffix returns n random characters valid in Kubernetes names.
func randomSuffix(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, n)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}
