package kubelet

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// Labels the lab puts on its nodes besides the well-known ones.
const (
	// LabelCluster names the lab cluster of a node.
	LabelCluster = "lab.isthmus.dev/cluster"
)

// Version is reported as the node's kubelet version.
const Version = "v1.37.2-isthmus-lab"

func (k *Kubelet) desiredNode() *corev1.Node {
	cidr := k.cfg.PodCIDR.String()
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse("8"),
		corev1.ResourceMemory:           resource.MustParse("32Gi"),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.cfg.NodeName,
			Labels: map[string]string{
				corev1.LabelHostname:   k.cfg.NodeName,
				corev1.LabelOSStable:   "linux",
				corev1.LabelArchStable: "amd64",
				LabelCluster:           k.cfg.ClusterName,
			},
		},
		Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}},
		Status: corev1.NodeStatus{
			Capacity:    capacity,
			Allocatable: capacity,
			Phase:       corev1.NodeRunning,
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: k.cfg.NodeIP.String()},
				{Type: corev1.NodeHostName, Address: k.cfg.NodeName},
			},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          Version,
				OperatingSystem:         "linux",
				Architecture:            "amd64",
				ContainerRuntimeVersion: "isthmus-lab://1",
			},
		},
	}
}

// register creates or adopts the Node and marks it Ready, retrying while
// the kube-apiserver is not reachable yet.
func (k *Kubelet) register(ctx context.Context) error {
	var lastErr error
	err := wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		lastErr = k.registerOnce(ctx)
		if lastErr != nil {
			k.log.Info("register node: will retry", logfields.Error, lastErr)
		}
		return lastErr == nil, nil
	})
	if err != nil {
		return fmt.Errorf("register node %s: %w (last error: %v)", k.cfg.NodeName, err, lastErr)
	}
	return nil
}

func (k *Kubelet) registerOnce(ctx context.Context) error {
	nodes := k.cfg.Client.CoreV1().Nodes()
	want := k.desiredNode()
	node, err := nodes.Create(ctx, want, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		node, err = nodes.Get(ctx, want.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if node.Spec.PodCIDR != "" && node.Spec.PodCIDR != want.Spec.PodCIDR {
			return fmt.Errorf("node %s exists with pod CIDR %s, not %s; remove it (kubectl delete node %s) or the lab (isthmus lab down)",
				node.Name, node.Spec.PodCIDR, want.Spec.PodCIDR, node.Name)
		}
		node.Spec.PodCIDR, node.Spec.PodCIDRs = want.Spec.PodCIDR, want.Spec.PodCIDRs
		if node.Labels == nil {
			node.Labels = map[string]string{}
		}
		for key, v := range want.Labels {
			node.Labels[key] = v
		}
		if node, err = nodes.Update(ctx, node, metav1.UpdateOptions{}); err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	return k.updateNodeStatus(ctx, node)
}

func (k *Kubelet) updateNodeStatus(ctx context.Context, node *corev1.Node) error {
	want := k.desiredNode()
	node = node.DeepCopy()
	conds := node.Status.Conditions
	node.Status = want.Status
	node.Status.Conditions = conds
	now := metav1.Now()
	setNodeCondition(node, corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "lab kubelet is posting ready status", now)
	for _, c := range []corev1.NodeConditionType{corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure, corev1.NodeNetworkUnavailable} {
		setNodeCondition(node, c, corev1.ConditionFalse, "LabKubelet", "the lab does not simulate "+string(c), now)
	}
	_, err := k.cfg.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	return err
}

func setNodeCondition(node *corev1.Node, t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string, now metav1.Time) {
	for i := range node.Status.Conditions {
		c := &node.Status.Conditions[i]
		if c.Type == t {
			if c.Status != s {
				c.LastTransitionTime = now
			}
			c.Status, c.Reason, c.Message, c.LastHeartbeatTime = s, reason, msg, now
			return
		}
	}
	node.Status.Conditions = append(node.Status.Conditions, corev1.NodeCondition{
		Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now,
	})
}

// renewLease keeps the node's lease in kube-node-lease fresh, which is how
// the node lifecycle controller knows the node is alive.
func (k *Kubelet) renewLease(ctx context.Context) {
	wait.UntilWithContext(ctx, func(ctx context.Context) {
		if err := k.renewLeaseOnce(ctx); err != nil && ctx.Err() == nil {
			k.log.Warn("renew node lease", logfields.Error, err)
		}
	}, k.cfg.LeaseDuration/4)
}

func (k *Kubelet) renewLeaseOnce(ctx context.Context) error {
	leases := k.cfg.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	lease, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, err := k.cfg.Client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		_, err = leases.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{
				Name:      k.cfg.NodeName,
				Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				}},
			},
			Spec: coordinationv1.LeaseSpec{
				HolderIdentity:       ptr.To(k.cfg.NodeName),
				LeaseDurationSeconds: ptr.To(int32(k.cfg.LeaseDuration / time.Second)),
				RenewTime:            &now,
			},
		}, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	lease.Spec.RenewTime = &now
	_, err = leases.Update(ctx, lease, metav1.UpdateOptions{})
	return err
}

// refreshStatus refreshes the Ready condition's heartbeat.
func (k *Kubelet) refreshStatus(ctx context.Context) {
	t := time.NewTicker(k.cfg.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		node, err := k.cfg.Client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if err == nil {
			err = k.updateNodeStatus(ctx, node)
		}
		if err != nil && ctx.Err() == nil {
			k.log.Warn("refresh node status", logfields.Error, err)
		}
	}
}
