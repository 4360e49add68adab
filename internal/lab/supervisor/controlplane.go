package supervisor

import (
	"context"
	"log/slog"
	"net/netip"
	"time"

	"github.com/isthmus-mesh/isthmus/internal/controlplane"
	"github.com/isthmus-mesh/isthmus/internal/kubebin"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// StartRealControlPlane runs cluster c's control plane with
// internal/controlplane: kube-apiserver on the cluster's lab address (so
// nodes and the host reach it), the controller manager and the scheduler.
// Nodes are registered with their pod CIDRs by the lab kubelets, so the
// controller manager allocates none.
func StartRealControlPlane(ctx context.Context, logger *slog.Logger, c topology.Cluster, serviceCIDR, dir string, kube state.KubeBinaries) (ControlPlane, error) {
	svc, err := netip.ParsePrefix(serviceCIDR)
	if err != nil {
		return nil, err
	}
	return controlplane.Start(ctx, logger, controlplane.Config{
		Binaries: kubebin.Binaries{
			Version:           kube.Version,
			APIServer:         kube.APIServer,
			ControllerManager: kube.ControllerManager,
			Scheduler:         kube.Scheduler,
		},
		DataDir:               dir,
		Name:                  c.Name,
		ContextName:           c.Name,
		BindAddress:           c.APIAddr,
		SecurePort:            topology.KubeAPIPort,
		AdvertiseAddress:      c.APIAddr,
		ServiceClusterIPRange: svc,
		ControllerManager:     true,
		Scheduler:             true,
		StartTimeout:          3 * time.Minute,
	})
}
