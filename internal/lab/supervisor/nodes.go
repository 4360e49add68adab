package supervisor

import (
	"fmt"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/isthmus-mesh/isthmus/internal/lab/kubelet"
	"github.com/isthmus-mesh/isthmus/internal/lab/state"
	"github.com/isthmus-mesh/isthmus/internal/lab/topology"
)

// nodeProcesses lists what runs on each node: its lab kubelet, with a
// client certificate of the node's own identity (system:node:<name>), so
// the Node authorizer treats it as the real kubelet would be treated.
func (s *Supervisor) nodeProcesses() ([]ProcessSpec, error) {
	var specs []ProcessSpec
	for _, c := range s.lab.Clusters {
		s.mu.Lock()
		cp := s.planes[c.Name]
		s.mu.Unlock()
		for _, n := range c.Nodes {
			dir := s.cfg.Dir.NodeDir(n.Name)
			kc := filepath.Join(dir, "kubelet.kubeconfig")
			if err := writeClientKubeconfig(kc, cp, c, "system:node:"+n.Name, "system:nodes"); err != nil {
				return nil, fmt.Errorf("node %s: %w", n.Name, err)
			}
			fc := kubelet.FileConfig{
				Kubeconfig:     kc,
				NodeName:       n.Name,
				ClusterName:    c.Name,
				NodeIP:         n.IP,
				PodCIDR:        n.PodCIDR,
				PodNetnsPrefix: n.PodNetnsPrefix,
			}
			cfgFile := filepath.Join(dir, "kubelet.json")
			if err := state.WriteJSON(cfgFile, fc); err != nil {
				return nil, err
			}
			args := []string{"lab", "kubelet", "--config", cfgFile}
			if s.plan.Debug {
				args = append(args, "--debug")
			}
			specs = append(specs, ProcessSpec{
				Name:    "kubelet/" + n.Name,
				Path:    s.plan.Isthmus,
				Args:    args,
				Netns:   n.Netns,
				Cgroup:  n.Cgroup,
				LogFile: filepath.Join(dir, "kubelet.log"),
				ReadyFD: true,
			})
		}
	}
	return specs, nil
}

// writeClientKubeconfig writes a kubeconfig for a new client certificate of
// user (in groups) on cluster c.
func writeClientKubeconfig(path string, cp ControlPlane, c topology.Cluster, user string, groups ...string) error {
	cert, key, err := cp.IssueClientCert(user, groups...)
	if err != nil {
		return fmt.Errorf("issue a client certificate for %s: %w", user, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[c.Name] = &clientcmdapi.Cluster{Server: c.KubeAPIURL(), CertificateAuthorityData: cp.CACertPEM()}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: cert, ClientKeyData: key}
	cfg.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: user}
	cfg.CurrentContext = c.Name
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// writeKubeconfig writes the lab's admin kubeconfig: one context per
// cluster, named like the cluster, whose cluster and user entries carry the
// same name so that merging it into another kubeconfig stays unambiguous.
func (s *Supervisor) writeKubeconfig() error {
	merged := clientcmdapi.NewConfig()
	for _, c := range s.lab.Clusters {
		s.mu.Lock()
		cp := s.planes[c.Name]
		s.mu.Unlock()
		one := cp.Kubeconfig(c.Name)
		ctx, ok := one.Contexts[c.Name]
		if !ok {
			return fmt.Errorf("the kubeconfig of %s has no context %q", c.Name, c.Name)
		}
		cl, user := one.Clusters[ctx.Cluster], one.AuthInfos[ctx.AuthInfo]
		if cl == nil || user == nil {
			return fmt.Errorf("the kubeconfig of %s lacks its cluster or user entry", c.Name)
		}
		cl = cl.DeepCopy()
		cl.Server = c.KubeAPIURL()
		merged.Clusters[c.Name] = cl
		merged.AuthInfos[c.Name+"-admin"] = user.DeepCopy()
		merged.Contexts[c.Name] = &clientcmdapi.Context{Cluster: c.Name, AuthInfo: c.Name + "-admin"}
	}
	merged.CurrentContext = s.lab.Clusters[0].Name
	if err := clientcmd.WriteToFile(*merged, s.cfg.Dir.Kubeconfig()); err != nil {
		return fmt.Errorf("write the lab kubeconfig: %w", err)
	}
	return nil
}
