package kubelet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"

	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
)

// FileConfig is the kubelet's configuration file, written by the lab
// supervisor for each node.
type FileConfig struct {
	Kubeconfig     string       `json:"kubeconfig"`
	NodeName       string       `json:"nodeName"`
	ClusterName    string       `json:"clusterName"`
	NodeIP         netip.Addr   `json:"nodeIP"`
	PodCIDR        netip.Prefix `json:"podCIDR"`
	PodNetnsPrefix string       `json:"podNetnsPrefix"`
}

// ReadFileConfig reads a FileConfig.
func ReadFileConfig(path string) (FileConfig, error) {
	var fc FileConfig
	b, err := os.ReadFile(path)
	if err != nil {
		return fc, fmt.Errorf("read kubelet config: %w", err)
	}
	if err := json.Unmarshal(b, &fc); err != nil {
		return fc, fmt.Errorf("decode kubelet config %s: %w", path, err)
	}
	return fc, nil
}

// RunProcess runs a kubelet as the process it is in: inside the node's
// network namespace and cgroup, so that the node side of pod networks is the
// process's own namespace and workloads start in its own cgroup. workload
// builds each pod's workload command; ready is called once the node is
// ready.
func RunProcess(ctx context.Context, logger *slog.Logger, fc FileConfig, workload func(WorkloadSpec) *exec.Cmd, ready func()) error {
	rest, err := clientcmd.BuildConfigFromFlags("", fc.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	rest.QPS, rest.Burst = 50, 100
	rest.UserAgent = "isthmus-lab-kubelet/" + fc.NodeName
	client, err := kubernetes.NewForConfig(rest)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	node, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer node.Close()
	k, err := New(logger, Config{
		Client:         client,
		NodeName:       fc.NodeName,
		ClusterName:    fc.ClusterName,
		NodeIP:         fc.NodeIP,
		PodCIDR:        fc.PodCIDR,
		PodNetnsPrefix: fc.PodNetnsPrefix,
		Network:        podnet.Network{Node: node},
		Workload:       workload,
		Ready:          ready,
	})
	if err != nil {
		return err
	}
	return k.Run(ctx)
}
