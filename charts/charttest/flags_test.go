package charttest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

// images are the binaries of the container image, built as `make build`
// builds them (static, ./cmd/...), once per test binary.
func images(t *testing.T) map[string]string {
	t.Helper()
	if testing.Short() {
		t.Skip("charttest: builds the binaries; not part of the unit tier (-short)")
	}
	binOnce.Do(func() {
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		binDir, binErr = os.MkdirTemp("", "isthmus-charttest-bin-")
		if binErr != nil {
			return
		}
		// Executable by a container's user, which may not be the test's.
		if binErr = os.Chmod(binDir, 0o755); binErr != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", binDir+"/", "./cmd/...")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = &buildError{err: err, out: string(out)}
		}
	})
	if binErr != nil {
		t.Fatalf("build the image's binaries: %v", binErr)
	}
	return map[string]string{
		"isthmus":           filepath.Join(binDir, "isthmus"),
		"isthmus-apiserver": filepath.Join(binDir, "isthmus-apiserver"),
		"isthmus-agent":     filepath.Join(binDir, "isthmus-agent"),
	}
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// helpParses runs argv with --help appended: cobra parses every flag (name
// and value) before it looks at --help, so this exits 0 only when the
// binary knows every flag and can parse every value.
func helpParses(bin string, args []string) (string, error) {
	cmd := exec.Command(bin, append(append([]string{}, args...), "--help")...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// fakeEnv resolves a container's environment without a cluster: values
// as given, the cluster identity and downward API fields with plausible
// stand-ins; flags only need the right types.
func fakeEnv(ctr corev1.Container) map[string]string {
	vars := map[string]string{}
	for _, e := range ctr.Env {
		switch {
		case e.ValueFrom == nil:
			vars[e.Name] = e.Value
		case e.ValueFrom.FieldRef != nil:
			vars[e.Name] = "node-1"
		case e.ValueFrom.ConfigMapKeyRef != nil:
			vars[e.Name] = map[string]string{"cluster-name": "c1", "cluster-id": "1", "max-connected-clusters": "255"}[e.ValueFrom.ConfigMapKeyRef.Key]
		}
	}
	return vars
}

// TestContainerArgsAreTheBinariesFlags parses every rendered container's
// command line, and its exec probes, with the real binary.
func TestContainerArgsAreTheBinariesFlags(t *testing.T) {
	bins := images(t)
	if _, err := helpParses(bins["isthmus-agent"], []string{"--no-such-flag=1"}); err == nil {
		t.Fatal("an unknown flag parsed: this check would pass anything")
	}
	if _, err := helpParses(bins["isthmus-apiserver"], []string{"--cluster-id=one"}); err == nil {
		t.Fatal("a bad flag value parsed: this check would pass anything")
	}
	for _, tc := range valueCases {
		t.Run(tc.name, func(t *testing.T) {
			objs := render(t, tc.values)
			specs := map[string]corev1.PodSpec{
				"Deployment/isthmus-apiserver": toTyped[appsv1.Deployment](t, mustFind(t, objs, "Deployment", "isthmus-apiserver")).Spec.Template.Spec,
				"DaemonSet/isthmus-agent":      toTyped[appsv1.DaemonSet](t, mustFind(t, objs, "DaemonSet", "isthmus-agent")).Spec.Template.Spec,
			}
			for owner, spec := range specs {
				for _, ctr := range append(append([]corev1.Container{}, spec.InitContainers...), spec.Containers...) {
					vars := fakeEnv(ctr)
					lines := map[string][]string{"command": append(append([]string{}, ctr.Command...), ctr.Args...)}
					for probe, p := range map[string]*corev1.Probe{"readinessProbe": ctr.ReadinessProbe, "livenessProbe": ctr.LivenessProbe, "startupProbe": ctr.StartupProbe} {
						if p != nil && p.Exec != nil {
							lines[probe] = p.Exec.Command
						}
					}
					for what, argv := range lines {
						if len(argv) == 0 {
							t.Errorf("%s container %s: empty %s", owner, ctr.Name, what)
							continue
						}
						bin, ok := bins[argv[0]]
						if !ok {
							t.Errorf("%s container %s: %s runs %q, which the image does not have", owner, ctr.Name, what, argv[0])
							continue
						}
						var args []string
						for _, a := range argv[1:] {
							args = append(args, expand(a, vars))
						}
						out, err := helpParses(bin, args)
						if err != nil {
							t.Errorf("%s container %s: %s %s does not parse: %v\n%s", owner, ctr.Name, what, strings.Join(argv, " "), err, out)
						}
					}
				}
			}
		})
	}
}
