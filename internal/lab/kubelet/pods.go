package kubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"

	"github.com/isthmus-mesh/isthmus/internal/lab/nsexec"
	"github.com/isthmus-mesh/isthmus/internal/lab/podnet"
	"github.com/isthmus-mesh/isthmus/internal/logfields"
)

// podRuntime is what the kubelet runs for one pod. Its fields are owned by
// the worker syncing the pod (the queue never hands one key to two
// workers); the workload's exit is observed through workload.exited.
type podRuntime struct {
	uid      types.UID
	hostNet  bool
	ip       netip.Addr
	sandbox  podnet.Sandbox // zero for host-network pods
	workload *workload
	started  metav1.Time
	restarts int32
}

func (k *Kubelet) runtime(key string) *podRuntime {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.runtimes[key]
}

func (k *Kubelet) setRuntime(key string, rt *podRuntime) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if rt == nil {
		delete(k.runtimes, key)
	} else {
		k.runtimes[key] = rt
	}
}

// syncPod brings what runs for the pod at key in line with the pod object.
func (k *Kubelet) syncPod(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	pod, err := k.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return k.removePod(key, 0)
	}
	if err != nil {
		return err
	}
	rt := k.runtime(key)
	if rt != nil && rt.uid != pod.UID {
		// A new pod of the same name (a StatefulSet's, say) replaces the old.
		if err := k.removePod(key, 0); err != nil {
			return err
		}
		rt = nil
	}
	switch {
	case pod.DeletionTimestamp != nil:
		return k.finishDeletion(ctx, key, pod)
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return k.removePod(key, 0)
	}
	if rt == nil {
		if rt, err = k.startPod(ctx, key, pod); err != nil {
			k.reportStartFailure(ctx, pod, err)
			return err
		}
	} else if rt.workload.hasExited() {
		// restartPolicy is not consulted: the echo server only exits when
		// something is wrong, and a Deployment's pods restart anyway.
		k.log.Info("workload exited; restarting", logfields.Pod, key, logfields.Error, rt.workload.exitErr)
		w, err := k.startWorkload(ctx, key, pod, rt)
		if err != nil {
			return err
		}
		rt.workload = w
		rt.restarts++
	}
	return k.updatePodStatus(ctx, pod, rt)
}

func (k *Kubelet) startPod(ctx context.Context, key string, pod *corev1.Pod) (*podRuntime, error) {
	rt := &podRuntime{uid: pod.UID, hostNet: pod.Spec.HostNetwork, started: metav1.Now()}
	if err := k.buildPod(ctx, key, pod, rt); err != nil {
		// Undo whatever part was built.
		return nil, errors.Join(err, k.teardown(key, rt))
	}
	k.setRuntime(key, rt)
	k.log.Info("pod running", logfields.Pod, key, logfields.IP, rt.ip)
	return rt, nil
}

// buildPod fills rt: the pod's address and network, and its running
// workload.
func (k *Kubelet) buildPod(ctx context.Context, key string, pod *corev1.Pod, rt *podRuntime) error {
	var err error
	if rt.hostNet {
		rt.ip = k.cfg.NodeIP
	} else {
		preferred, _ := netip.ParseAddr(pod.Status.PodIP)
		if rt.ip, err = k.pool.Allocate(string(pod.UID), preferred); err != nil {
			return err
		}
		if rt.sandbox, err = k.cfg.Network.Setup(k.cfg.PodNetnsPrefix+string(pod.UID), string(pod.UID), rt.ip); err != nil {
			return fmt.Errorf("pod network: %w", err)
		}
	}
	rt.workload, err = k.startWorkload(ctx, key, pod, rt)
	return err
}

func (k *Kubelet) startWorkload(ctx context.Context, key string, pod *corev1.Pod, rt *podRuntime) (*workload, error) {
	spec := workloadSpec(pod, k.cfg.NodeName, k.cfg.ClusterName, rt.ip)
	netnsPath := ""
	if !rt.hostNet {
		netnsPath = nsexec.Path(rt.sandbox.Netns)
	}
	w, err := startWorkload(ctx, k.cfg.Workload(spec), nsexec.Where{Netns: netnsPath, Cgroup: k.cfg.Cgroup}, k.cfg.ReadyTimeout)
	if err != nil {
		return nil, fmt.Errorf("start workload: %w", err)
	}
	go func() {
		<-w.exited
		k.queue.Add(key) // restart, or finish a deletion
	}()
	return w, nil
}

// finishDeletion stops the workload within the pod's grace period, removes
// the pod's network and then the pod object itself.
func (k *Kubelet) finishDeletion(ctx context.Context, key string, pod *corev1.Pod) error {
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if err := k.removePod(key, grace); err != nil {
		return err
	}
	err := k.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: ptr.To[int64](0),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	switch {
	case err == nil:
		k.log.Info("pod deleted", logfields.Pod, key)
	case apierrors.IsNotFound(err) || apierrors.IsConflict(err):
		// Already gone, or replaced by a pod of the same name.
	default:
		return fmt.Errorf("delete pod: %w", err)
	}
	return nil
}

// removePod stops the pod's workload (SIGTERM, SIGKILL after grace) and
// removes its network. A pod the kubelet does not run is fine.
func (k *Kubelet) removePod(key string, grace time.Duration) error {
	rt := k.runtime(key)
	if rt == nil {
		return nil
	}
	if rt.workload != nil {
		rt.workload.stop(grace)
	}
	if err := k.teardown(key, rt); err != nil {
		return err
	}
	k.setRuntime(key, nil)
	return nil
}

func (k *Kubelet) teardown(key string, rt *podRuntime) error {
	if rt.workload != nil {
		rt.workload.stop(0)
	}
	if !rt.hostNet {
		if rt.sandbox.Netns != "" {
			if err := k.cfg.Network.Teardown(rt.sandbox); err != nil {
				return fmt.Errorf("remove network of pod %s: %w", key, err)
			}
		}
		k.pool.Release(string(rt.uid))
	}
	return nil
}

// stopAll stops every pod, as the kubelet exits.
func (k *Kubelet) stopAll() {
	k.mu.Lock()
	keys := make([]string, 0, len(k.runtimes))
	for key := range k.runtimes {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	for _, key := range keys {
		if err := k.removePod(key, 5*time.Second); err != nil {
			k.log.Warn("stop pod", logfields.Pod, key, logfields.Error, err)
		}
	}
}

// removeStaleSandboxes removes pod namespaces an earlier run of this
// kubelet left; their workloads died with it.
func (k *Kubelet) removeStaleSandboxes() error {
	names, err := nsexec.List(k.cfg.PodNetnsPrefix)
	if err != nil {
		return err
	}
	var errs []error
	for _, ns := range names {
		uid := strings.TrimPrefix(ns, k.cfg.PodNetnsPrefix)
		k.log.Info("removing pod network left by an earlier run", "netns", ns)
		errs = append(errs, k.cfg.Network.Teardown(podnet.Sandbox{Netns: ns, HostVeth: podnet.HostVeth(uid)}))
	}
	return errors.Join(errs...)
}
