package apiserver_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/tools/txtar"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
)

// The golden tests run scripts (testdata/golden/*.txtar) against a real
// kube-apiserver and a real apiserver with its embedded etcd. The archive's
// comment is a description paragraph, a blank line, then the script:
//
//	apply FILE...            create or update the objects (Pods and Nodes: status too)
//	delete FILE...           delete the objects (Pods at once, as a kubelet would)
//	replace FILE OLD NEW     edit FILE in the archive (quote arguments with spaces)
//	expect FILE              wait until etcd holds exactly FILE under its prefixes
//	expect-event KIND NAME REASON   wait for a Warning Event on an object
//	expect-metric SERIES VALUE      wait for a /metrics line "SERIES VALUE"
//	stop / start / restart   stop or start the apiserver (same data directory)
//
// Expected files start with "# prefix: P..." and list each key under those
// prefixes, sorted, followed by its value (JSON indented by two spaces). The
// value <time> matches any RFC 3339 time. $NS stands for the test's
// namespace everywhere.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob("testdata/golden/*.txtar")
	if err != nil || len(files) == 0 {
		t.Fatalf("no golden files: %v", err)
	}
	for _, f := range files {
		t.Run(strings.TrimSuffix(filepath.Base(f), ".txtar"), func(t *testing.T) {
			ar, err := txtar.ParseFile(f)
			if err != nil {
				t.Fatal(err)
			}
			k := kube.Kube(t)
			s := &script{t: t, ns: k.Namespace, client: k.Client, files: map[string]string{}}
			for _, af := range ar.Files {
				s.files[af.Name] = strings.ReplaceAll(string(af.Data), "$NS", k.Namespace)
			}
			t.Cleanup(s.cleanup)
			s.server = newMeshServer(t, k.Config, serverOptions{})
			s.server.start()
			inDescription := true
			for i, line := range strings.Split(string(ar.Comment), "\n") {
				line = strings.TrimSpace(line)
				if line == "" {
					inDescription = false
				}
				if inDescription || line == "" || strings.HasPrefix(line, "#") {
					continue
				}
				line = strings.ReplaceAll(line, "$NS", k.Namespace)
				s.line = fmt.Sprintf("%s:%d: %s", filepath.Base(f), i+1, line)
				s.run(splitArgs(line))
			}
		})
	}
}

type script struct {
	t       *testing.T
	ns      string
	client  kubernetes.Interface
	files   map[string]string
	server  *meshServer
	line    string
	created []runtime.Object // for cleanup
}

func (s *script) fatalf(format string, args ...any) {
	s.t.Helper()
	s.t.Fatalf("%s: %s", s.line, fmt.Sprintf(format, args...))
}

func (s *script) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	s.t.Cleanup(cancel)
	return ctx
}

func (s *script) run(args []string) {
	s.t.Helper()
	switch cmd, args := args[0], args[1:]; cmd {
	case "apply":
		for _, f := range args {
			for _, o := range s.objects(f) {
				s.apply(o)
			}
		}
	case "delete":
		for _, f := range args {
			for _, o := range s.objects(f) {
				s.delete(o)
			}
		}
	case "replace":
		if len(args) != 3 {
			s.fatalf("replace FILE OLD NEW")
		}
		data, ok := s.files[args[0]]
		if !ok || !strings.Contains(data, args[1]) {
			s.fatalf("%s does not contain %q", args[0], args[1])
		}
		s.files[args[0]] = strings.ReplaceAll(data, args[1], args[2])
	case "expect":
		s.expect(args[0])
	case "expect-event":
		s.expectEvent(args[0], args[1], args[2])
	case "expect-metric":
		s.expectMetric(args[0], args[1])
	case "stop":
		s.server.shutdown()
	case "start":
		s.server.start()
	case "restart":
		s.server.shutdown()
		s.server.start()
	default:
		s.fatalf("unknown command %q", cmd)
	}
}

func (s *script) objects(name string) []runtime.Object {
	s.t.Helper()
	data, ok := s.files[name]
	if !ok {
		s.fatalf("no file %s", name)
	}
	var objs []runtime.Object
	r := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		o, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			s.fatalf("decode %s: %v", name, err)
		}
		objs = append(objs, o)
	}
	return objs
}

// apply creates or updates o. The apiserver sets status only through the
// status subresource, so Pods and Nodes get theirs in a second call, as a
// kubelet would.
func (s *script) apply(o runtime.Object) {
	s.t.Helper()
	ctx := s.ctx()
	var err error
	switch o := o.(type) {
	case *corev1.Namespace:
		err = s.applyNamespace(ctx, o)
	case *corev1.Node:
		err = s.applyNode(ctx, o)
	case *corev1.Pod:
		err = s.applyPod(ctx, o)
	case *corev1.Service:
		c := s.client.CoreV1().Services(o.Namespace)
		cur, gerr := c.Get(ctx, o.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(gerr):
			_, err = c.Create(ctx, o, metav1.CreateOptions{})
			s.created = append(s.created, o)
		case gerr != nil:
			err = gerr
		default:
			o.ResourceVersion = cur.ResourceVersion
			_, err = c.Update(ctx, o, metav1.UpdateOptions{})
		}
	case *discoveryv1.EndpointSlice:
		c := s.client.DiscoveryV1().EndpointSlices(o.Namespace)
		cur, gerr := c.Get(ctx, o.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(gerr):
			_, err = c.Create(ctx, o, metav1.CreateOptions{})
			s.created = append(s.created, o)
		case gerr != nil:
			err = gerr
		default:
			o.ResourceVersion = cur.ResourceVersion
			_, err = c.Update(ctx, o, metav1.UpdateOptions{})
		}
	default:
		s.fatalf("cannot apply %T", o)
	}
	if err != nil {
		s.fatalf("apply: %v", err)
	}
}

func (s *script) applyNamespace(ctx context.Context, o *corev1.Namespace) error {
	c := s.client.CoreV1().Namespaces()
	cur, err := c.Get(ctx, o.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = c.Create(ctx, o, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cur.Labels = o.Labels
	_, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

func (s *script) applyNode(ctx context.Context, o *corev1.Node) error {
	c := s.client.CoreV1().Nodes()
	status := o.Status
	cur, err := c.Get(ctx, o.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cur, err = c.Create(ctx, o, metav1.CreateOptions{})
		s.created = append(s.created, o)
	case err == nil:
		cur.Labels, cur.Annotations = o.Labels, o.Annotations
		cur, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return err
	}
	cur.Status = status
	_, err = c.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	return err
}

func (s *script) applyPod(ctx context.Context, o *corev1.Pod) error {
	c := s.client.CoreV1().Pods(o.Namespace)
	status := o.Status
	cur, err := c.Get(ctx, o.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		o.Status = corev1.PodStatus{}
		cur, err = c.Create(ctx, o, metav1.CreateOptions{})
		s.created = append(s.created, o)
	case err == nil:
		cur.Labels, cur.Annotations = o.Labels, o.Annotations
		cur, err = c.Update(ctx, cur, metav1.UpdateOptions{})
	}
	if err != nil {
		return err
	}
	cur.Status = status
	_, err = c.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
	return err
}

func (s *script) delete(o runtime.Object) {
	s.t.Helper()
	if err := s.deleteObject(s.ctx(), o); err != nil && !apierrors.IsNotFound(err) {
		s.fatalf("delete: %v", err)
	}
}

func (s *script) deleteObject(ctx context.Context, o runtime.Object) error {
	now := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
	switch o := o.(type) {
	case *corev1.Node:
		return s.client.CoreV1().Nodes().Delete(ctx, o.Name, now)
	case *corev1.Pod:
		return s.client.CoreV1().Pods(o.Namespace).Delete(ctx, o.Name, now)
	case *corev1.Service:
		return s.client.CoreV1().Services(o.Namespace).Delete(ctx, o.Name, now)
	case *discoveryv1.EndpointSlice:
		return s.client.DiscoveryV1().EndpointSlices(o.Namespace).Delete(ctx, o.Name, now)
	}
	return fmt.Errorf("cannot delete %T", o)
}

// cleanup deletes what the script created: the control plane is shared
// with the other tests of the binary, and the exporter sees all of it.
func (s *script) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, o := range slices.Backward(s.created) {
		if err := s.deleteObject(ctx, o); err != nil && !apierrors.IsNotFound(err) {
			s.t.Errorf("cleanup: %v", err)
		}
	}
	deleteMeshConfigMap(s.t, s.client)
}

var timeRE = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$`)

func (s *script) expect(name string) {
	s.t.Helper()
	want, ok := s.files[name]
	if !ok {
		s.fatalf("no file %s", name)
	}
	first, _, _ := strings.Cut(want, "\n")
	prefixes := strings.Fields(strings.TrimPrefix(first, "# prefix:"))
	if !strings.HasPrefix(first, "# prefix:") || len(prefixes) == 0 {
		s.fatalf("%s does not start with \"# prefix: ...\"", name)
	}
	wantKVs := parseExpected(want, prefixes)
	var last string
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := s.server.list(s.ctx(), prefixes...)
		if err == nil {
			last = render(got)
			if matchKVs(wantKVs, got) {
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			s.fatalf("etcd does not hold %s:\n--- want\n%s\n--- got\n%s", name, want, "# prefix: "+strings.Join(prefixes, " ")+"\n"+last)
		}
		time.Sleep(50 * time.Millisecond) // polling etcd for an outcome, with a deadline
	}
}

// parseExpected reads "key\nvalue..." blocks: a line starting with one of
// the prefixes begins a key.
func parseExpected(text string, prefixes []string) map[string]string {
	kvs := map[string]string{}
	var key string
	var val []string
	flush := func() {
		if key != "" {
			kvs[key] = strings.TrimSpace(strings.Join(val, "\n"))
		}
	}
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		isKey := false
		for _, p := range prefixes {
			isKey = isKey || strings.HasPrefix(line, p)
		}
		if isKey {
			flush()
			key, val = line, nil
			continue
		}
		val = append(val, line)
	}
	flush()
	return kvs
}

func matchKVs(want, got map[string]string) bool {
	if len(want) != len(got) {
		return false
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			return false
		}
		if w == "<time>" {
			if !timeRE.MatchString(g) {
				return false
			}
			continue
		}
		if compact(w) != compact(g) {
			return false
		}
	}
	return true
}

func render(kvs map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(mapsKeys(kvs)) {
		fmt.Fprintf(&b, "%s\n%s\n", k, pretty(kvs[k]))
	}
	return b.String()
}

// compact removes the insignificant space of a JSON value (not its key
// order) and leaves other values as they are.
func compact(v string) string {
	var b bytes.Buffer
	if json.Valid([]byte(v)) && json.Compact(&b, []byte(v)) == nil {
		return b.String()
	}
	return v
}

// pretty indents JSON values (keeping their key order, which is part of
// the protocol) and leaves others as they are.
func pretty(v string) string {
	var b bytes.Buffer
	if json.Valid([]byte(v)) && json.Indent(&b, []byte(v), "", "  ") == nil {
		return b.String()
	}
	return v
}

func (s *script) expectEvent(kind, name, reason string) {
	s.t.Helper()
	ns := s.ns
	if kind == "Node" {
		ns = metav1.NamespaceDefault
	}
	var seen []string
	deadline := time.Now().Add(30 * time.Second)
	for {
		list, err := s.client.CoreV1().Events(ns).List(s.ctx(), metav1.ListOptions{})
		if err != nil {
			s.fatalf("list events: %v", err)
		}
		seen = seen[:0]
		for _, e := range list.Items {
			if e.InvolvedObject.Kind == kind && e.InvolvedObject.Name == name && e.Reason == reason && e.Type == corev1.EventTypeWarning {
				return
			}
			seen = append(seen, fmt.Sprintf("%s %s/%s %s: %s", e.Type, e.InvolvedObject.Kind, e.InvolvedObject.Name, e.Reason, e.Message))
		}
		if time.Now().After(deadline) {
			s.fatalf("no Warning %s event on %s %s; events: %v", reason, kind, name, seen)
		}
		time.Sleep(50 * time.Millisecond) // polling the apiserver for an outcome, with a deadline
	}
}

func (s *script) expectMetric(series, value string) {
	s.t.Helper()
	var last string
	eventually(s.t, 30*time.Second, s.line, func() error {
		resp, err := http.Get("http://" + s.server.srv.HealthAddress() + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		last = "absent"
		for _, l := range strings.Split(string(body), "\n") {
			if v, ok := strings.CutPrefix(l, series+" "); ok {
				last = v
				if v == value {
					return nil
				}
			}
		}
		return fmt.Errorf("%s is %s, want %s", series, last, value)
	})
}

// splitArgs splits a script line into words; single or double quotes keep
// spaces in a word.
func splitArgs(line string) []string {
	var (
		args  []string
		cur   strings.Builder
		quote rune
		inArg bool
	)
	for _, r := range line {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inArg = r, true
		case r == ' ' || r == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteRune(r)
			inArg = true
		}
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args
}
