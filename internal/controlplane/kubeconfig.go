package controlplane

import (
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func (cp *ControlPlane) kubeconfigPath(user string) string {
	return filepath.Join(cp.dirs.kubeconfig, user+".kubeconfig")
}

// kubeconfig builds a one-context kubeconfig for the holder of kp.
func (cp *ControlPlane) kubeconfig(contextName string, kp keyPair) *clientcmdapi.Config {
	cfg := clientcmdapi.NewConfig()
	cluster := clientcmdapi.NewCluster()
	cluster.Server = cp.endpoint
	cluster.CertificateAuthorityData = cp.CACertPEM()
	cfg.Clusters[contextName] = cluster
	user := clientcmdapi.NewAuthInfo()
	user.ClientCertificateData = append([]byte(nil), kp.CertPEM...)
	user.ClientKeyData = append([]byte(nil), kp.KeyPEM...)
	cfg.AuthInfos[contextName] = user
	kctx := clientcmdapi.NewContext()
	kctx.Cluster = contextName
	kctx.AuthInfo = contextName
	cfg.Contexts[contextName] = kctx
	cfg.CurrentContext = contextName
	return cfg
}

// writeKubeconfigs writes the admin's, the controller manager's and the
// scheduler's kubeconfigs.
func (cp *ControlPlane) writeKubeconfigs() error {
	for user, kp := range map[string]keyPair{
		"admin":           cp.pki.admin,
		ControllerManager: cp.pki.controllerManager,
		Scheduler:         cp.pki.scheduler,
	} {
		name := cp.cfg.ContextName
		if user != "admin" {
			name = user
		}
		if err := clientcmd.WriteToFile(*cp.kubeconfig(name, kp), cp.kubeconfigPath(user)); err != nil {
			return err
		}
	}
	return nil
}
