package e2e

import (
	"fmt"
	"net"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/isthmus-mesh/isthmus/internal/meshconfig"
)

// globalEcho is the echo workload as a global service with backends in
// both clusters, and a client pod in each.
type globalEcho struct {
	// addr1, addr2 are the service's ClusterIP:port in c1 and c2;
	// frontend1 is c1's as the agents' dumps name it.
	addr1, addr2 string
	frontend1    string
	// client1, client2 are the client pods.
	client1, client2 string
}

// deployGlobalEcho connects the clusters and deploys two echo replicas in
// each, behind a global service annotated with opts in both.
func (s *scenario) deployGlobalEcho(opts serviceOptions) globalEcho {
	s.t.Helper()
	s.connectAll()
	var g globalEcho
	s.deployEcho(s.c1, 2)
	s.deployEcho(s.c2, 2)
	vip1, fe1 := s.globalService(s.c1, opts)
	vip2, _ := s.globalService(s.c2, opts)
	g.addr1, g.addr2, g.frontend1 = net.JoinHostPort(vip1, fmt.Sprint(svcPort)), net.JoinHostPort(vip2, fmt.Sprint(svcPort)), fe1
	g.client1, g.client2 = s.clientPod(s.c1), s.clientPod(s.c2)
	s.waitPods(s.c1, echoName, 2)
	s.waitPods(s.c2, echoName, 2)
	return g
}

// TestGlobalServiceAffinityNone: with affinity none, requests from either
// cluster are answered by both.
func TestGlobalServiceAffinityNone(t *testing.T) {
	s := newScenario(t)
	g := s.deployGlobalEcho(serviceOptions{affinity: meshconfig.AffinityNone})
	s.waitBackendClusters(s.c1, g.frontend1, s.c1, s.c2)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name, s.c2.Name)
	s.waitAnswers(s.c2, g.client2, g.addr2, s.c1.Name, s.c2.Name)
}

// TestGlobalServiceAffinityLocal: with affinity local, requests are
// answered locally while local backends exist, remotely once they are
// scaled to zero, and locally again when they return.
func TestGlobalServiceAffinityLocal(t *testing.T) {
	s := newScenario(t)
	g := s.deployGlobalEcho(serviceOptions{affinity: meshconfig.AffinityLocal})
	// The agents know the remote backends, so answers from c1 alone are
	// the affinity's doing.
	s.waitBackendClusters(s.c1, g.frontend1, s.c1, s.c2)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name)

	s.scaleEcho(s.c1, 0)
	s.waitPods(s.c1, echoName, 0)
	s.waitBackendClusters(s.c1, g.frontend1, s.c2)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c2.Name)

	s.scaleEcho(s.c1, 2)
	s.waitPods(s.c1, echoName, 2)
	s.waitBackendClusters(s.c1, g.frontend1, s.c1, s.c2)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name)
}

// TestGlobalServiceNotShared: a cluster whose Service says shared=false
// keeps its backends out of the other clusters, while it still uses
// theirs.
func TestGlobalServiceNotShared(t *testing.T) {
	s := newScenario(t)
	g := s.deployGlobalEcho(serviceOptions{})
	// Shared: c1 reaches c2's backends, so their absence later is the
	// annotation's doing.
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name, s.c2.Name)

	s.annotateService(s.c2, serviceOptions{unshared: true})
	s.waitBackendClusters(s.c1, g.frontend1, s.c1)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name)
	s.waitAnswers(s.c2, g.client2, g.addr2, s.c1.Name, s.c2.Name)
}

// TestGlobalServiceDeletedInOneCluster: deleting the service in one
// cluster withdraws its backends from the others.
func TestGlobalServiceDeletedInOneCluster(t *testing.T) {
	s := newScenario(t)
	g := s.deployGlobalEcho(serviceOptions{})
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name, s.c2.Name)

	s.must(s.c2.Kube.CoreV1().Services(s.ns).Delete(s.ctx, echoName, metav1.DeleteOptions{}), "delete the echo Service of "+s.c2.Name)
	s.waitBackendClusters(s.c1, g.frontend1, s.c1)
	s.waitAnswers(s.c1, g.client1, g.addr1, s.c1.Name)
}
