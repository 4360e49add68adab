package meshops

import (
	"context"
	"fmt"
	"maps"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// Change is one object an operation wrote, or would write in a dry run.
type Change struct {
	// Context is the cluster the object is in.
	Context string `json:"context"`
	// Object is e.g. "Secret isthmus-system/isthmus-ca".
	Object string `json:"object"`
	// Action is "create", "update" or "delete".
	Action string `json:"action"`
	// Reason says why, e.g. "new mesh CA".
	Reason string `json:"reason,omitempty"`
}

func (c Change) String() string {
	s := fmt.Sprintf("%s: %s %s", c.Context, c.Action, c.Object)
	if c.Reason != "" {
		s += " (" + c.Reason + ")"
	}
	return s
}

// writer writes objects to one cluster, compares before each write and
// records what it changed. In a dry run it records without writing.
type writer struct {
	c       *Cluster
	dryRun  bool
	changes *[]Change
}

func (w writer) record(action, object, reason string) {
	*w.changes = append(*w.changes, Change{Context: w.c.context, Object: object, Action: action, Reason: reason})
}

func (w writer) ensureNamespace(ctx context.Context) error {
	nss := w.c.client.CoreV1().Namespaces()
	_, err := nss.Get(ctx, meshconfig.Namespace, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return w.c.apiError("read", "namespace "+meshconfig.Namespace, err)
	}
	w.record("create", "Namespace "+meshconfig.Namespace, "")
	if w.dryRun {
		return nil
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace, Labels: managedLabels}}
	if _, err := nss.Create(ctx, ns, metav1.CreateOptions{FieldManager: fieldManager}); err != nil && !apierrors.IsAlreadyExists(err) {
		return w.c.apiError("create", "namespace "+meshconfig.Namespace, err)
	}
	return nil
}

// createSecret creates a Secret that must not exist yet: the CA, which is
// never replaced.
func (w writer) createSecret(ctx context.Context, name string, typ corev1.SecretType, data map[string][]byte, reason string) error {
	obj := "Secret " + meshconfig.Namespace + "/" + name
	w.record("create", obj, reason)
	if w.dryRun {
		return nil
	}
	s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: managedLabels}, Type: typ, Data: data}
	_, err := w.c.client.CoreV1().Secrets(meshconfig.Namespace).Create(ctx, s, metav1.CreateOptions{FieldManager: fieldManager})
	if apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("%s in context %q was created by someone else while this ran; nothing of it was replaced: run the command again", obj, w.c.context)
	}
	if err != nil {
		return w.c.apiError("create", obj, err)
	}
	return nil
}

// editSecret applies edit to the data of Secret name, creating the Secret
// (of type typ) when absent, and writes only when the data changed. A
// write that loses a race is retried on the object as it is now.
func (w writer) editSecret(ctx context.Context, name string, typ corev1.SecretType, reason string, edit func(data map[string][]byte) error) error {
	obj := "Secret " + meshconfig.Namespace + "/" + name
	secrets := w.c.client.CoreV1().Secrets(meshconfig.Namespace)
	recorded := false
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := w.c.getSecret(ctx, name)
		if err != nil {
			return err
		}
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: managedLabels}, Type: typ}
		if cur != nil {
			s = cur.DeepCopy()
		}
		data := maps.Clone(s.Data)
		if data == nil {
			data = map[string][]byte{}
		}
		if err := edit(data); err != nil {
			return err
		}
		if cur != nil && bytesMapsEqual(cur.Data, data) {
			return nil
		}
		if cur == nil && len(data) == 0 {
			return nil
		}
		if !recorded {
			w.record(map[bool]string{true: "update", false: "create"}[cur != nil], obj, reason)
			recorded = true
		}
		if w.dryRun {
			return nil
		}
		s.Data = data
		if cur == nil {
			_, err = secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: fieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("secrets"), name, err)
			}
		} else {
			_, err = secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: fieldManager})
		}
		if err != nil && !apierrors.IsConflict(err) {
			return w.c.apiError("write", obj, err)
		}
		return err
	})
}

// editConfigMap is editSecret for a ConfigMap.
func (w writer) editConfigMap(ctx context.Context, name, reason string, edit func(data map[string]string) error) error {
	obj := "ConfigMap " + meshconfig.Namespace + "/" + name
	cms := w.c.client.CoreV1().ConfigMaps(meshconfig.Namespace)
	recorded := false
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := w.c.getConfigMap(ctx, name)
		if err != nil {
			return err
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: managedLabels}}
		if cur != nil {
			cm = cur.DeepCopy()
		}
		data := maps.Clone(cm.Data)
		if data == nil {
			data = map[string]string{}
		}
		if err := edit(data); err != nil {
			return err
		}
		if cur != nil && maps.Equal(cur.Data, data) {
			return nil
		}
		if cur == nil && len(data) == 0 {
			return nil
		}
		if !recorded {
			w.record(map[bool]string{true: "update", false: "create"}[cur != nil], obj, reason)
			recorded = true
		}
		if w.dryRun {
			return nil
		}
		cm.Data = data
		if cur == nil {
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
			if apierrors.IsAlreadyExists(err) {
				return apierrors.NewConflict(corev1.Resource("configmaps"), name, err)
			}
		} else {
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager})
		}
		if err != nil && !apierrors.IsConflict(err) {
			return w.c.apiError("write", obj, err)
		}
		return err
	})
}

func bytesMapsEqual(a, b map[string][]byte) bool {
	return maps.EqualFunc(a, b, func(x, y []byte) bool { return string(x) == string(y) })
}
