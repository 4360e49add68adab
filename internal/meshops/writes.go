package meshops

import (
	"bytes"
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
	secrets := w.c.client.CoreV1().Secrets(meshconfig.Namespace)
	return editData(ctx, w, "Secret "+meshconfig.Namespace+"/"+name, reason, edit, bytes.Equal,
		func(ctx context.Context) (*corev1.Secret, error) { return w.c.getSecret(ctx, name) },
		func(s *corev1.Secret) map[string][]byte { return s.Data },
		func(ctx context.Context, cur *corev1.Secret, data map[string][]byte) error {
			if cur == nil {
				s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: managedLabels}, Type: typ, Data: data}
				_, err := secrets.Create(ctx, s, metav1.CreateOptions{FieldManager: fieldManager})
				if apierrors.IsAlreadyExists(err) {
					return apierrors.NewConflict(corev1.Resource("secrets"), name, err)
				}
				return err
			}
			s := cur.DeepCopy()
			s.Data = data
			_, err := secrets.Update(ctx, s, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		})
}

// editConfigMap is editSecret for a ConfigMap.
func (w writer) editConfigMap(ctx context.Context, name, reason string, edit func(data map[string]string) error) error {
	cms := w.c.client.CoreV1().ConfigMaps(meshconfig.Namespace)
	return editData(ctx, w, "ConfigMap "+meshconfig.Namespace+"/"+name, reason, edit, func(a, b string) bool { return a == b },
		func(ctx context.Context) (*corev1.ConfigMap, error) { return w.c.getConfigMap(ctx, name) },
		func(cm *corev1.ConfigMap) map[string]string { return cm.Data },
		func(ctx context.Context, cur *corev1.ConfigMap, data map[string]string) error {
			if cur == nil {
				cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: meshconfig.Namespace, Labels: managedLabels}, Data: data}
				_, err := cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
				if apierrors.IsAlreadyExists(err) {
					return apierrors.NewConflict(corev1.Resource("configmaps"), name, err)
				}
				return err
			}
			cm := cur.DeepCopy()
			cm.Data = data
			_, err := cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager})
			return err
		})
}

// editData is the read, edit, compare and write loop of editSecret and
// editConfigMap, for an object of type T whose data maps keys to V: get
// reads it (nil when absent), dataOf returns its data, write creates it
// (cur nil) or updates cur with data. Nothing is written, nor recorded,
// when the data did not change, or when an absent object would be created
// empty. A conflict, including losing a create race, is retried on the
// object as it is now.
func editData[T any, V any](ctx context.Context, w writer, obj, reason string, edit func(map[string]V) error, equal func(a, b V) bool,
	get func(context.Context) (*T, error), dataOf func(*T) map[string]V, write func(ctx context.Context, cur *T, data map[string]V) error) error {
	recorded := false
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := get(ctx)
		if err != nil {
			return err
		}
		var data map[string]V
		if cur != nil {
			data = maps.Clone(dataOf(cur))
		}
		if data == nil {
			data = map[string]V{}
		}
		if err := edit(data); err != nil {
			return err
		}
		if cur != nil && maps.EqualFunc(dataOf(cur), data, equal) {
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
		err = write(ctx, cur, data)
		if err != nil && !apierrors.IsConflict(err) {
			return w.c.apiError("write", obj, err)
		}
		return err
	})
}
