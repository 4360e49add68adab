package controlplane

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/kubebin"
)

func TestConfigDefaultsAndValidation(t *testing.T) {
	bins := kubebin.Binaries{APIServer: "a", ControllerManager: "c", Scheduler: "s"}
	c, err := Config{Binaries: bins, DataDir: "d"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != "isthmus" || c.ContextName != "isthmus" || c.BindAddress != loopback ||
		c.AdvertiseAddress != unroutedAdvertise || c.ServiceClusterIPRange != defaultServiceCIDR ||
		c.kubernetesServiceIP() != netip.MustParseAddr("10.96.0.1") {
		t.Errorf("defaults = %+v", c)
	}
	c, err = Config{Binaries: bins, DataDir: "d", BindAddress: netip.MustParseAddr("10.77.0.2")}.withDefaults()
	if err != nil || c.AdvertiseAddress != netip.MustParseAddr("10.77.0.2") || c.clientHost() != netip.MustParseAddr("10.77.0.2") {
		t.Errorf("bind 10.77.0.2: advertise %s, client host %s, err %v; want both 10.77.0.2", c.AdvertiseAddress, c.clientHost(), err)
	}
	c, err = Config{Binaries: bins, DataDir: "d", BindAddress: netip.IPv4Unspecified()}.withDefaults()
	if err != nil || c.clientHost() != loopback {
		t.Errorf("bind 0.0.0.0: client host %s, err %v; want 127.0.0.1", c.clientHost(), err)
	}

	for name, bad := range map[string]Config{
		"no binaries":             {DataDir: "d"},
		"no data dir":             {Binaries: bins},
		"loopback advertise":      {Binaries: bins, DataDir: "d", AdvertiseAddress: loopback},
		"cluster CIDR overlaps":   {Binaries: bins, DataDir: "d", ControllerManager: true, ClusterCIDR: netip.MustParsePrefix("10.96.0.0/12")},
		"mask shorter than CIDR":  {Binaries: bins, DataDir: "d", ControllerManager: true, ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), NodeCIDRMaskSize: 16},
		"CIDR without allocator":  {Binaries: bins, DataDir: "d", ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16")},
		"port out of range":       {Binaries: bins, DataDir: "d", SecurePort: 70000},
		"controller-manager path": {Binaries: kubebin.Binaries{APIServer: "a"}, DataDir: "d", ControllerManager: true},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%s: config accepted", name)
		}
	}
}

// TestStartFailureCarriesLogTail: a component that dies at start fails
// Start with its own last words.
func TestStartFailureCarriesLogTail(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	dir := t.TempDir()
	fake := filepath.Join(dir, "kube-apiserver")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\necho 'E1121 flag provided but not defined: -bogus' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), nil, Config{Binaries: kubebin.Binaries{APIServer: fake}, DataDir: filepath.Join(dir, "data")})
	if err == nil {
		t.Fatal("Start succeeded with an apiserver that exits")
	}
	for _, want := range []string{"kube-apiserver exited", "flag provided but not defined: -bogus", "kube-apiserver.log"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
}

func ensureBinaries(t testing.TB) kubebin.Binaries {
	t.Helper()
	if testing.Short() {
		t.Skip("runs a real control plane; not part of the unit tier (-short)")
	}
	ctx := context.Background()
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if deadline, ok := d.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, deadline.Add(-time.Minute))
			defer cancel()
		}
	}
	bins, err := kubebin.Ensure(ctx, kubebin.Options{Progress: os.Stderr})
	if err != nil {
		t.Fatalf("control-plane binaries: %v (`make kube` builds them)", err)
	}
	return bins
}

// TestStartStop runs every component, checks each answers as itself, and
// that Stop leaves no process or goroutine behind.
func TestStartStop(t *testing.T) {
	bins := ensureBinaries(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	start := time.Now()
	cp, err := Start(ctx, nil, Config{
		Binaries:          bins,
		DataDir:           t.TempDir(),
		Name:              "c1",
		ContextName:       "lab-c1",
		SANs:              []string{"api.c1.lab", "10.77.0.2"},
		ControllerManager: true,
		Scheduler:         true,
		ClusterCIDR:       netip.MustParsePrefix("10.244.0.0/16"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane with controller manager and scheduler ready in %s", time.Since(start).Round(time.Millisecond))
	stopped := false
	defer func() {
		if !stopped {
			_ = cp.Stop(context.Background())
		}
	}()

	// The admin kubeconfig file works on its own, under the given context.
	kc, err := clientcmd.LoadFromFile(cp.KubeconfigPath())
	if err != nil {
		t.Fatal(err)
	}
	if kc.CurrentContext != "lab-c1" {
		t.Errorf("kubeconfig context %q, want lab-c1", kc.CurrentContext)
	}
	restCfg, err := clientcmd.NewDefaultClientConfig(*kc, nil).ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}
	v, err := client.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != bins.Version {
		t.Errorf("apiserver reports %s, want %s", v.GitVersion, bins.Version)
	}

	// The controller manager works: its service-account controller
	// creates the default ServiceAccount.
	admin, err := kubernetes.NewForConfig(cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := admin.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("the controller manager did not create the default/default ServiceAccount: %v", err)
	}

	// The serving certificate holds the extra SANs.
	block, _ := pem.Decode(cp.pki.apiServer.CertPEM)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.VerifyHostname("api.c1.lab"); err != nil {
		t.Errorf("serving certificate: %v", err)
	}
	if err := cert.VerifyHostname("10.77.0.2"); err != nil {
		t.Errorf("serving certificate: %v", err)
	}

	// IssueClientCert: a user in no group is authenticated but not
	// authorized.
	certPEM, keyPEM, err := cp.IssueClientCert("jane", "devs")
	if err != nil {
		t.Fatal(err)
	}
	janeCfg := cp.RESTConfig()
	janeCfg.CertData, janeCfg.KeyData = certPEM, keyPEM
	jane, err := kubernetes.NewForConfig(janeCfg)
	if err != nil {
		t.Fatal(err)
	}
	_, err = jane.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
	if err == nil || !strings.Contains(err.Error(), `User "jane" cannot list`) {
		t.Errorf("jane listing secrets: %v, want forbidden for user jane", err)
	}

	cp.mu.Lock()
	var pids []int
	for _, p := range cp.procs {
		pids = append(pids, p.cmd.Process.Pid)
	}
	cp.mu.Unlock()
	if len(pids) != 3 {
		t.Fatalf("%d processes running, want 3", len(pids))
	}
	if err := cp.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	stopped = true
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d still exists after Stop (kill 0: %v)", pid, err)
		}
	}
	if err := cp.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// BenchmarkStart measures how long a control plane takes to become ready,
// binaries cached: what every integration-test binary and each lab cluster
// pays. Stopping is not timed.
func BenchmarkStart(b *testing.B) {
	bins := ensureBinaries(b)
	for _, bc := range []struct {
		name        string
		controllers bool
	}{{"apiserver", false}, {"with-controllers", true}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				cp, err := Start(context.Background(), nil, Config{
					Binaries: bins, DataDir: b.TempDir(),
					ControllerManager: bc.controllers, Scheduler: bc.controllers,
				})
				if err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				if err := cp.Stop(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
