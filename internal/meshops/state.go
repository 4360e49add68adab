package meshops

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/certs"
	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// clusterState is what connect and disconnect read of one cluster before
// deciding anything.
type clusterState struct {
	c *Cluster
	// notEnabled says why the cluster cannot take part (not enabled, or
	// enabled only half); nil when it can.
	notEnabled error
	config     MeshConfig
	ca         *certs.CA
	// local is the isthmus-local-cert Secret.
	local *corev1.Secret
	// entries are the clustermesh Secret's entries; entryErrs the ones
	// that could not be parsed.
	entries   map[string]meshconfig.ClusterEntry
	entryErrs []error
	// readers is the remote-readers ConfigMap's data.
	readers map[string]string
	// podCIDRs are the Nodes' pod CIDRs; podCIDRErr says why they are
	// unknown.
	podCIDRs   []netip.Prefix
	podCIDRErr error
	// remoteIDs are the cluster IDs the cluster's agents report for the
	// clusters they read, by name; empty when no agent reports.
	remoteIDs map[string]uint32
}

// name is the mesh cluster name, or the context when it is not known.
func (s *clusterState) name() string {
	if s.config.ClusterName != "" {
		return s.config.ClusterName
	}
	return s.c.context
}

// label names the cluster for messages: cluster "a" (context "kind-a").
func (s *clusterState) label() string {
	if s.config.ClusterName == "" {
		return s.c.String()
	}
	return fmt.Sprintf("cluster %q (context %q)", s.config.ClusterName, s.c.context)
}

// readState reads the mesh objects of c. Its error is for a cluster that
// cannot be read at all; a cluster that is not (fully) enabled is
// described in notEnabled.
func readState(ctx context.Context, c *Cluster) (*clusterState, error) {
	s := &clusterState{c: c}
	cm, err := c.getConfigMap(ctx, meshconfig.ConfigMapName)
	if err != nil {
		return nil, err
	}
	if cm == nil {
		s.notEnabled = fmt.Errorf("%s is not enabled for the mesh (it has no ConfigMap %s/%s): run `isthmus enable --context %s --cluster-name <name> --cluster-id <id>` first",
			c, meshconfig.Namespace, meshconfig.ConfigMapName, c.context)
		return s, nil
	}
	s.config, err = ParseMeshConfig(cm.Data)
	if err != nil {
		s.notEnabled = fmt.Errorf("%s: ConfigMap %s/%s is invalid: %w; fix it, or re-run `isthmus enable --context %s` with the cluster's name and ID",
			c, meshconfig.Namespace, meshconfig.ConfigMapName, err, c.context)
		return s, nil
	}
	reenable := fmt.Sprintf("`isthmus enable --context %s --cluster-name %s --cluster-id %d --max-connected-clusters %d`",
		c.context, s.config.ClusterName, s.config.ClusterID, s.config.MaxConnectedClusters)
	caSecret, err := c.getSecret(ctx, meshconfig.CASecret)
	if err != nil {
		return nil, err
	}
	if caSecret == nil {
		s.notEnabled = fmt.Errorf("%s is enabled only in part: Secret %s/%s (its mesh CA) is missing; re-run %s", s.label(), meshconfig.Namespace, meshconfig.CASecret, reenable)
		return s, nil
	}
	if s.ca, err = certs.LoadCA(secretKeyPair(caSecret)); err != nil {
		s.notEnabled = fmt.Errorf("%s: Secret %s/%s holds no usable CA: %w", s.label(), meshconfig.Namespace, meshconfig.CASecret, err)
		return s, nil
	}
	if s.local, err = c.getSecret(ctx, meshconfig.LocalCertSecret); err != nil {
		return nil, err
	}
	if s.local == nil {
		s.notEnabled = fmt.Errorf("%s is enabled only in part: Secret %s/%s is missing; re-run %s", s.label(), meshconfig.Namespace, meshconfig.LocalCertSecret, reenable)
		return s, nil
	}
	mesh, err := c.getSecret(ctx, meshconfig.ClusterMeshSecret)
	if err != nil {
		return nil, err
	}
	s.entries = map[string]meshconfig.ClusterEntry{}
	if mesh != nil {
		s.entries, s.entryErrs = meshconfig.ParseEntries(mesh.Data)
	}
	readers, err := c.getConfigMap(ctx, meshconfig.RemoteReadersConfigMap)
	if err != nil {
		return nil, err
	}
	s.readers = map[string]string{}
	if readers != nil && readers.Data != nil {
		s.readers = readers.Data
	}
	s.podCIDRs, s.podCIDRErr = c.podCIDRs(ctx)
	s.remoteIDs = map[string]uint32{}
	// Best effort: without agent reports, IDs are checked among the
	// clusters given only.
	if agents, err := (meshAgentLister{c}).ListAgents(ctx); err == nil {
		for _, a := range agents {
			for _, rc := range a.Clusters {
				if rc.ClusterID != 0 && !rc.Local {
					s.remoteIDs[rc.Name] = rc.ClusterID
				}
			}
		}
	}
	return s, nil
}

// podCIDRs returns the pod CIDRs of every Node, sorted and without
// duplicates.
func (c *Cluster) podCIDRs(ctx context.Context) ([]netip.Prefix, error) {
	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, c.apiError("list", "Nodes", err)
	}
	var out []netip.Prefix
	for _, n := range nodes.Items {
		cidrs := n.Spec.PodCIDRs
		if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
			cidrs = []string{n.Spec.PodCIDR}
		}
		for _, s := range cidrs {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("%s: Node %s has pod CIDR %q, which is not a CIDR", c, n.Name, s)
			}
			out = append(out, p.Masked())
		}
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return slices.Compact(out), nil
}
