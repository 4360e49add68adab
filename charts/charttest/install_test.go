package charttest

import (
	"context"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// TestHelmInstallAndUninstall installs the chart with helm itself into a
// real kube-apiserver, as a user does (Helm checks the chart's
// kubeVersion against the server, installs crds/, creates every object
// with its ownership metadata), prints the notes, and uninstalls it,
// keeping only the etcd volume claim.
func TestHelmInstallAndUninstall(t *testing.T) {
	c := newCluster(t)
	c.cleanMeshNamespace(t)
	helmArgs := func(args ...string) []string {
		return append(args, "--kubeconfig", c.Kubeconfig, "--namespace", meshconfig.Namespace)
	}
	out, err := runHelm(t, helmArgs("install", releaseName, chartDir(t), "--wait=false")...)
	if err != nil {
		t.Fatal(err)
	}
	installed := true
	t.Cleanup(func() {
		if installed {
			_, _ = runHelm(t, helmArgs("uninstall", releaseName)...)
		}
		// Kept by the chart on uninstall.
		pvc := &unstructured.Unstructured{}
		pvc.SetAPIVersion("v1")
		pvc.SetKind("PersistentVolumeClaim")
		pvc.SetNamespace(meshconfig.Namespace)
		pvc.SetName("isthmus-apiserver-etcd")
		c.delete(t, pvc)
	})
	notes := string(out)
	for _, want := range []string{"STATUS: deployed", "run `isthmus enable` first", "https://<node IP>:32379", "isthmus connect --context"} {
		if !strings.Contains(notes, want) {
			t.Errorf("helm install output lacks %q:\n%s", want, notes)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Client.AppsV1().DaemonSets(meshconfig.Namespace).Get(ctx, "isthmus-agent", metav1.GetOptions{}); err != nil {
		t.Errorf("after helm install: %v", err)
	}
	if _, err := runHelm(t, helmArgs("uninstall", releaseName)...); err != nil {
		t.Fatal(err)
	}
	installed = false
	if _, err := c.Client.AppsV1().Deployments(meshconfig.Namespace).Get(ctx, "isthmus-apiserver", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the Deployment after helm uninstall: %v; want it gone", err)
	}
	if _, err := c.Client.RbacV1().ClusterRoles().Get(ctx, "isthmus-agent", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the agent's ClusterRole after helm uninstall: %v; want it gone", err)
	}
	if _, err := c.Client.CoreV1().PersistentVolumeClaims(meshconfig.Namespace).Get(ctx, "isthmus-apiserver-etcd", metav1.GetOptions{}); err != nil {
		t.Errorf("the etcd volume claim after helm uninstall: %v; the chart keeps it", err)
	}
}
