package meshops

import (
	"context"
	"fmt"
	"time"

	apiextensionsclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshclient "github.com/isthmus-mesh/isthmus/apis/client"
)

// crdTimeout bounds the wait for new CRDs to be served.
const crdTimeout = 2 * time.Minute

// installCRDs installs the isthmus.dev CRDs the Helm chart ships
// (MeshNetworkPolicy, MeshAgent), or updates them to the shipped version,
// and records which it created or changed.
func (w writer) installCRDs(ctx context.Context) error {
	crds, err := meshclient.CRDs()
	if err != nil {
		return err
	}
	ext, err := apiextensionsclient.NewForConfig(w.c.config)
	if err != nil {
		return fmt.Errorf("%s: apiextensions client: %w", w.c, err)
	}
	api := ext.ApiextensionsV1().CustomResourceDefinitions()
	versionOf := func(name string) (string, error) {
		cur, err := api.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return "", nil
		}
		if err != nil {
			return "", w.c.apiError("read", "CustomResourceDefinition "+name, err)
		}
		return cur.ResourceVersion, nil
	}
	before := map[string]string{}
	for _, crd := range crds {
		if before[crd.Name], err = versionOf(crd.Name); err != nil {
			return err
		}
	}
	if w.dryRun {
		for _, crd := range crds {
			if before[crd.Name] == "" {
				w.record("create", "CustomResourceDefinition "+crd.Name, "isthmus.dev API")
			}
		}
		return nil
	}
	ictx, cancel := context.WithTimeout(ctx, crdTimeout)
	defer cancel()
	if err := meshclient.InstallCRDs(ictx, w.c.config); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("%s: %w; installing the isthmus.dev CRDs needs a cluster admin: run enable as one, or have one apply charts/isthmus/crds first", w.c, err)
		}
		return fmt.Errorf("%s: %w", w.c, err)
	}
	for _, crd := range crds {
		after, err := versionOf(crd.Name)
		if err != nil {
			return err
		}
		switch {
		case before[crd.Name] == "":
			w.record("create", "CustomResourceDefinition "+crd.Name, "isthmus.dev API")
		case after != before[crd.Name]:
			w.record("update", "CustomResourceDefinition "+crd.Name, "the shipped version")
		}
	}
	return nil
}
