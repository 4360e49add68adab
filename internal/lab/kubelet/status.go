package kubelet

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podStatus is the status of a pod whose workload runs (ready) or has
// exited (not ready, waiting for its restart).
func (k *Kubelet) podStatus(pod *corev1.Pod, rt *podRuntime) corev1.PodStatus {
	s := *pod.Status.DeepCopy()
	ready := !rt.workload.hasExited()
	now := metav1.Now()
	s.Phase = corev1.PodRunning
	s.HostIP = k.cfg.NodeIP.String()
	s.HostIPs = []corev1.HostIP{{IP: s.HostIP}}
	s.PodIP = rt.ip.String()
	s.PodIPs = []corev1.PodIP{{IP: s.PodIP}}
	if s.StartTime == nil {
		s.StartTime = &rt.started
	}
	s.Reason, s.Message = "", ""
	setPodCondition(&s, corev1.PodReadyToStartContainers, true, now)
	setPodCondition(&s, corev1.PodInitialized, true, now)
	setPodCondition(&s, corev1.ContainersReady, ready, now)
	setPodCondition(&s, corev1.PodReady, ready, now)

	var statuses []corev1.ContainerStatus
	for _, c := range pod.Spec.Containers {
		cs := corev1.ContainerStatus{
			Name:         c.Name,
			Image:        c.Image,
			ImageID:      "isthmus-lab://echo",
			ContainerID:  fmt.Sprintf("isthmus-lab://%s/%s", pod.UID, c.Name),
			Ready:        ready,
			Started:      &ready,
			RestartCount: rt.restarts,
		}
		if ready {
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: rt.started}
		} else {
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: "the echo workload exited; restarting"}
		}
		// Keep the timestamp of an unchanged running state, so that an
		// unchanged pod needs no update.
		for _, old := range pod.Status.ContainerStatuses {
			if old.Name == c.Name && old.State.Running != nil && cs.State.Running != nil {
				cs.State.Running.StartedAt = old.State.Running.StartedAt
			}
		}
		statuses = append(statuses, cs)
	}
	s.ContainerStatuses = statuses
	return s
}

// updatePodStatus writes the pod's status when it differs from what the
// API holds.
func (k *Kubelet) updatePodStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	status := k.podStatus(pod, rt)
	if apiequality.Semantic.DeepEqual(status, pod.Status) {
		return nil
	}
	p := pod.DeepCopy()
	p.Status = status
	if _, err := k.cfg.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status: %w", err)
	}
	return nil
}

// reportStartFailure records on the pod why it could not start; the sync is
// retried with backoff.
func (k *Kubelet) reportStartFailure(ctx context.Context, pod *corev1.Pod, cause error) {
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodPending
	p.Status.Reason = "LabStartError"
	p.Status.Message = cause.Error()
	if apiequality.Semantic.DeepEqual(p.Status, pod.Status) {
		return
	}
	if _, err := k.cfg.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
		k.log.Warn("report start failure", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

func setPodCondition(s *corev1.PodStatus, t corev1.PodConditionType, ok bool, now metav1.Time) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	for i := range s.Conditions {
		c := &s.Conditions[i]
		if c.Type == t {
			if c.Status != status {
				c.Status, c.LastTransitionTime = status, now
			}
			return
		}
	}
	s.Conditions = append(s.Conditions, corev1.PodCondition{Type: t, Status: status, LastTransitionTime: now})
}
