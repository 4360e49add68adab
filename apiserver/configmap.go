package apiserver

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// publishConfigMap makes the isthmus-config ConfigMap carry this cluster's
// identity and, when given, the endpoints remote clusters dial; the CLI's
// connect reads them. Values already there that differ from the flags
// refuse the start: two sources disagreeing on a cluster's ID would split
// the mesh. Other keys are left alone.
func publishConfigMap(ctx context.Context, client kubernetes.Interface, cfg *Config) error {
	want := map[string]string{
		meshconfig.KeyClusterName:          cfg.ClusterName,
		meshconfig.KeyClusterID:            strconv.FormatUint(uint64(cfg.ClusterID), 10),
		meshconfig.KeyMaxConnectedClusters: strconv.FormatUint(uint64(cfg.MaxConnectedClusters), 10),
	}
	flags := map[string]string{
		meshconfig.KeyClusterName:          "--cluster-name",
		meshconfig.KeyClusterID:            "--cluster-id",
		meshconfig.KeyMaxConnectedClusters: "--max-connected-clusters",
	}
	cms := client.CoreV1().ConfigMaps(meshconfig.Namespace)
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, meshconfig.ConfigMapName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.ConfigMapName, Namespace: meshconfig.Namespace}}
		} else if err != nil {
			return fmt.Errorf("read ConfigMap %s/%s: %w", meshconfig.Namespace, meshconfig.ConfigMapName, err)
		}
		changed := false
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		for _, k := range []string{meshconfig.KeyClusterName, meshconfig.KeyClusterID, meshconfig.KeyMaxConnectedClusters} {
			have, ok := cm.Data[k]
			switch {
			case !ok:
				cm.Data[k] = want[k]
				changed = true
			case have != want[k]:
				return fmt.Errorf("ConfigMap %s/%s has %s %q but %s is %q; this cluster was set up with other values (e.g. by `isthmus enable`): start with %s=%s, or fix the ConfigMap if the flags are right",
					meshconfig.Namespace, meshconfig.ConfigMapName, k, have, flags[k], want[k], flags[k], have)
			}
		}
		if len(cfg.AdvertiseEndpoints) > 0 {
			eps := strings.Join(cfg.AdvertiseEndpoints, ",")
			if cm.Data[meshconfig.KeyMeshEndpoints] != eps {
				cm.Data[meshconfig.KeyMeshEndpoints] = eps
				changed = true
			}
		}
		if !changed {
			return nil
		}
		if cm.ResourceVersion == "" {
			if err := ensureNamespace(ctx, client); err != nil {
				return err
			}
			_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: fieldManager})
		} else {
			_, err = cms.Update(ctx, cm, metav1.UpdateOptions{FieldManager: fieldManager})
		}
		if apierrors.IsAlreadyExists(err) {
			// Created meanwhile: read it again, like a conflict.
			return apierrors.NewConflict(corev1.Resource("configmaps"), cm.Name, err)
		}
		if err != nil && !apierrors.IsConflict(err) {
			return fmt.Errorf("write ConfigMap %s/%s: %w", meshconfig.Namespace, meshconfig.ConfigMapName, err)
		}
		return err
	})
}

const fieldManager = "isthmus-apiserver"

func ensureNamespace(ctx context.Context, client kubernetes.Interface) error {
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: meshconfig.Namespace}}, metav1.CreateOptions{FieldManager: fieldManager})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", meshconfig.Namespace, err)
	}
	return nil
}
