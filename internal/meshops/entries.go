package meshops

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// putEntries writes entries into the cluster's clustermesh Secret.
func (w writer) putEntries(ctx context.Context, reason string, entries []meshconfig.ClusterEntry) error {
	return w.editSecret(ctx, meshconfig.ClusterMeshSecret, corev1.SecretTypeOpaque, reason, func(d map[string][]byte) error {
		for _, e := range entries {
			if err := meshconfig.PutEntry(d, e); err != nil {
				return err
			}
		}
		return nil
	})
}

// deleteEntries removes the entries of clusters from the cluster's
// clustermesh Secret.
func (w writer) deleteEntries(ctx context.Context, reason string, clusters []string) error {
	return w.editSecret(ctx, meshconfig.ClusterMeshSecret, corev1.SecretTypeOpaque, reason, func(d map[string][]byte) error {
		for _, c := range clusters {
			meshconfig.DeleteEntry(d, c)
		}
		return nil
	})
}
