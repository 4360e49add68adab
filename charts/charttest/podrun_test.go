package charttest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Running a container of a rendered pod spec as a local process, as a
// kubelet would run it, as far as the chart's wiring goes: each volume is
// materialised in a directory (Secret and ConfigMap volumes from the
// cluster's objects, so a wrong Secret name or key fails here as the pod
// would fail to start), every absolute path in the command line is moved
// to where its volume is, the environment is resolved (values, downward
// API fields, ConfigMap and Secret keys) and $(VAR) references in the
// arguments are expanded. What a kubelet would refuse is an error.

// podEnv is what the pod sees of the world.
type podEnv struct {
	client    kubernetes.Interface
	namespace string
	// fields are the downward API fields, e.g. "spec.nodeName".
	fields map[string]string
	// hostPaths maps hostPath volume paths to local directories; a host
	// path not listed gets a fresh temporary directory.
	hostPaths map[string]string
	// commands maps a container command to a local binary.
	commands map[string]string
	// root holds the volumes, traversable by any user (the container may
	// run as one other than the test's).
	root string
}

// newPodEnv returns a podEnv whose volumes live under a new directory,
// removed when t ends.
func newPodEnv(t *testing.T, client kubernetes.Interface, namespace string) *podEnv {
	t.Helper()
	root, err := os.MkdirTemp("", "isthmus-charttest-pod-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(root) })
	return &podEnv{client: client, namespace: namespace, root: root, fields: map[string]string{}, hostPaths: map[string]string{}}
}

// dir is a new directory under the pod's root.
func (p *podEnv) dir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp(p.root, "vol-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// identity is who a container runs as: the pod's and container's
// security contexts, as a kubelet applies them.
type identity struct {
	uid, gid, fsGroup *int64
}

func identityOf(spec corev1.PodSpec, ctr *corev1.Container) identity {
	var id identity
	if sc := spec.SecurityContext; sc != nil {
		id.uid, id.gid, id.fsGroup = sc.RunAsUser, sc.RunAsGroup, sc.FSGroup
	}
	if sc := ctr.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			id.uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			id.gid = sc.RunAsGroup
		}
	}
	return id
}

// applies reports whether the identity can be taken here: switching
// users needs root; otherwise the container runs as the test's user.
func (id identity) applies() bool { return os.Geteuid() == 0 && id.uid != nil }

// localContainer is a container ready to run here.
type localContainer struct {
	name string
	// argv is the command and arguments, paths moved and $(VAR) expanded.
	argv []string
	env  []string
	// mounts maps mount paths to local directories, longest first.
	mounts []mount
	id     identity
}

type mount struct{ path, dir string }

// prepare materialises container name of spec.
func (p *podEnv) prepare(t *testing.T, spec corev1.PodSpec, name string) *localContainer {
	t.Helper()
	lc, err := p.tryPrepare(t, spec, name)
	if err != nil {
		t.Fatalf("container %s: %v", name, err)
	}
	return lc
}

func (p *podEnv) tryPrepare(t *testing.T, spec corev1.PodSpec, name string) (*localContainer, error) {
	t.Helper()
	var ctr *corev1.Container
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			ctr = &spec.Containers[i]
		}
	}
	if ctr == nil {
		return nil, fmt.Errorf("no container %s in the pod", name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	volumes := map[string]corev1.Volume{}
	for _, v := range spec.Volumes {
		volumes[v.Name] = v
	}
	lc := &localContainer{name: name, id: identityOf(spec, ctr)}
	for _, m := range ctr.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("volume mount %s: no volume %s", m.MountPath, m.Name)
		}
		dir, err := p.volume(ctx, t, v, lc.id)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		lc.mounts = append(lc.mounts, mount{path: filepath.Clean(m.MountPath), dir: dir})
	}
	sort.Slice(lc.mounts, func(i, j int) bool { return len(lc.mounts[i].path) > len(lc.mounts[j].path) })

	vars := map[string]string{}
	for _, e := range ctr.Env {
		val, err := p.envValue(ctx, e)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		vars[e.Name] = val
		lc.env = append(lc.env, e.Name+"="+val)
	}
	readOnlyRoot := ctr.SecurityContext != nil && ctr.SecurityContext.ReadOnlyRootFilesystem != nil && *ctr.SecurityContext.ReadOnlyRootFilesystem
	argv := append(append([]string{}, ctr.Command...), ctr.Args...)
	if len(argv) == 0 {
		return nil, errors.New("no command: the image has no entrypoint for it")
	}
	bin, ok := p.commands[argv[0]]
	if !ok {
		return nil, fmt.Errorf("command %q is not one of the image's binaries", argv[0])
	}
	lc.argv = []string{bin}
	for _, a := range argv[1:] {
		a = expand(a, vars)
		moved, err := lc.move(a, readOnlyRoot)
		if err != nil {
			return nil, err
		}
		lc.argv = append(lc.argv, moved)
	}
	return lc, nil
}

// volume materialises v in a directory, owned as a kubelet would make it
// for a container running as id.
func (p *podEnv) volume(ctx context.Context, t *testing.T, v corev1.Volume, id identity) (string, error) {
	switch {
	case v.Secret != nil:
		s, err := p.client.CoreV1().Secrets(p.namespace).Get(ctx, v.Secret.SecretName, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("Secret %s (the pod would not start): %w", v.Secret.SecretName, err)
		}
		return p.writeFiles(t, s.Data, v.Secret.Items, v.Secret.DefaultMode, id)
	case v.ConfigMap != nil:
		cm, err := p.client.CoreV1().ConfigMaps(p.namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("ConfigMap %s (the pod would not start): %w", v.ConfigMap.Name, err)
		}
		data := map[string][]byte{}
		for k, s := range cm.Data {
			data[k] = []byte(s)
		}
		return p.writeFiles(t, data, v.ConfigMap.Items, v.ConfigMap.DefaultMode, id)
	case v.EmptyDir != nil, v.PersistentVolumeClaim != nil:
		// A kubelet makes an emptyDir world-writable, and hands a volume to
		// the pod's fsGroup (group-writable, setgid).
		dir := p.dir(t)
		if err := os.Chmod(dir, 0o777); err != nil {
			return "", err
		}
		if id.applies() && id.fsGroup != nil {
			if err := os.Chown(dir, 0, int(*id.fsGroup)); err != nil {
				return "", err
			}
			if err := os.Chmod(dir, 0o775|os.ModeSetgid); err != nil {
				return "", err
			}
		}
		return dir, nil
	case v.HostPath != nil:
		if dir, ok := p.hostPaths[v.HostPath.Path]; ok {
			return dir, nil
		}
		return p.dir(t), nil
	}
	return "", errors.New("a volume type these tests do not run")
}

// writeFiles writes a Secret's or ConfigMap's keys (or the listed items)
// into a new directory, as a kubelet's volume does: files of mode
// defaultMode, and with an fsGroup, of that group and readable by it.
func (p *podEnv) writeFiles(t *testing.T, data map[string][]byte, items []corev1.KeyToPath, mode *int32, id identity) (string, error) {
	dir := p.dir(t)
	perm := os.FileMode(0o644)
	if mode != nil {
		perm = os.FileMode(*mode)
	}
	gid := -1
	if id.applies() && id.fsGroup != nil {
		gid = int(*id.fsGroup)
		perm |= 0o440
	}
	if len(items) == 0 {
		for k := range data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		b, ok := data[it.Key]
		if !ok {
			return "", fmt.Errorf("no key %s", it.Key)
		}
		path := filepath.Join(dir, it.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(path, b, perm); err != nil {
			return "", err
		}
		if err := os.Chmod(path, perm); err != nil { // past the umask
			return "", err
		}
		if gid >= 0 {
			if err := os.Chown(path, 0, gid); err != nil {
				return "", err
			}
		}
	}
	return dir, nil
}

func (p *podEnv) envValue(ctx context.Context, e corev1.EnvVar) (string, error) {
	switch src := e.ValueFrom; {
	case src == nil:
		return e.Value, nil
	case src.FieldRef != nil:
		v, ok := p.fields[src.FieldRef.FieldPath]
		if !ok {
			return "", fmt.Errorf("field %s is not known to these tests", src.FieldRef.FieldPath)
		}
		return v, nil
	case src.ConfigMapKeyRef != nil:
		cm, err := p.client.CoreV1().ConfigMaps(p.namespace).Get(ctx, src.ConfigMapKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("ConfigMap %s (CreateContainerConfigError): %w", src.ConfigMapKeyRef.Name, err)
		}
		v, ok := cm.Data[src.ConfigMapKeyRef.Key]
		if !ok {
			return "", fmt.Errorf("ConfigMap %s has no key %s (CreateContainerConfigError)", src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
		}
		return v, nil
	case src.SecretKeyRef != nil:
		s, err := p.client.CoreV1().Secrets(p.namespace).Get(ctx, src.SecretKeyRef.Name, metav1.GetOptions{})
		if err != nil {
			return "", fmt.Errorf("Secret %s (CreateContainerConfigError): %w", src.SecretKeyRef.Name, err)
		}
		v, ok := s.Data[src.SecretKeyRef.Key]
		if !ok {
			return "", fmt.Errorf("Secret %s has no key %s (CreateContainerConfigError)", src.SecretKeyRef.Name, src.SecretKeyRef.Key)
		}
		return string(v), nil
	}
	return "", errors.New("a value source these tests do not resolve")
}

// expand replaces $(VAR) with the variable's value, as Kubernetes does in
// container commands and arguments: an undefined variable is left as it
// is, and $$ is a literal $.
func expand(s string, vars map[string]string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				b.WriteString(s[i:])
				return b.String()
			}
			name := s[i+2 : i+2+end]
			if v, ok := vars[name]; ok {
				b.WriteString(v)
			} else {
				b.WriteString(s[i : i+3+end])
			}
			i += 2 + end
		default:
			b.WriteByte(s[i])
		}
	}
	return b.String()
}

// move rewrites the absolute path in arg (a bare path or --flag=/path) to
// the local directory of its volume. A path on no volume is an error: it
// is in the container's own filesystem, which is read-only or lost with
// the container.
func (lc *localContainer) move(arg string, readOnlyRoot bool) (string, error) {
	prefix, path := "", arg
	if strings.HasPrefix(arg, "-") {
		var ok bool
		if prefix, path, ok = strings.Cut(arg, "="); !ok {
			return arg, nil
		}
		prefix += "="
	}
	if !strings.HasPrefix(path, "/") {
		return arg, nil
	}
	if local, ok := lc.localPath(path); ok {
		return prefix + local, nil
	}
	if readOnlyRoot {
		return "", fmt.Errorf("argument %s: %s is on no volume, in a read-only root filesystem", arg, path)
	}
	return "", fmt.Errorf("argument %s: %s is on no volume, so it is lost with the container", arg, path)
}

// localPath is where a path in the container is here.
func (lc *localContainer) localPath(path string) (string, bool) {
	path = filepath.Clean(path)
	for _, m := range lc.mounts {
		if path == m.path {
			return m.dir, true
		}
		if rest, ok := strings.CutPrefix(path, m.path+"/"); ok {
			return filepath.Join(m.dir, rest), true
		}
	}
	return "", false
}

// process is a running container.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	mu      sync.Mutex // guards err
	err     error
}

// start runs the container with extra arguments appended (test
// overrides: the last value of a flag wins), and stops it when t ends.
func (lc *localContainer) start(t *testing.T, extra ...string) *process {
	t.Helper()
	argv := append(append([]string{}, lc.argv...), extra...)
	logPath := filepath.Join(t.TempDir(), lc.name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, lc.env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if lc.id.applies() {
		cred := &syscall.Credential{Uid: uint32(*lc.id.uid), Gid: uint32(*lc.id.uid)}
		if lc.id.gid != nil {
			cred.Gid = uint32(*lc.id.gid)
		}
		if lc.id.fsGroup != nil {
			cred.Groups = []uint32{uint32(*lc.id.fsGroup)}
		}
		cmd.SysProcAttr.Credential = cred
		t.Logf("%s runs as uid %d gid %d groups %v, as its security context says", lc.name, cred.Uid, cred.Gid, cred.Groups)
	} else if lc.id.uid != nil {
		t.Logf("%s runs as this test's user, not as uid %d: switching users needs root", lc.name, *lc.id.uid)
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		t.Fatalf("start %s: %v", lc.name, err)
	}
	p := &process{name: lc.name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logFile.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(p.done)
	}()
	t.Logf("started %s: %s", lc.name, strings.Join(argv, " "))
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s log (%s):\n%s", p.name, p.logPath, p.logTail(8192))
		}
	})
	return p
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM, as a kubelet does, then SIGKILL after 30s.
func (p *process) stop(t *testing.T) {
	if done, _ := p.exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		t.Errorf("%s did not stop within 30s of SIGTERM; killing it", p.name)
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *process) logTail(n int) string {
	s := p.log()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// waitUntil waits for cond while the process runs; the process ending
// first is an error that carries its log.
func (p *process) waitUntil(ctx context.Context, what string, cond func() (bool, error)) error {
	err := waitFor(ctx, 200*time.Millisecond, func() (bool, error) {
		if done, err := p.exited(); done {
			return false, fmt.Errorf("%s exited (%v) before %s", p.name, err, what)
		}
		return cond()
	})
	if err != nil {
		if done, exitErr := p.exited(); done {
			return fmt.Errorf("%s exited (%v) before %s:\n%s", p.name, exitErr, what, p.logTail(4096))
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}
