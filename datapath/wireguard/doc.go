// Package wireguard runs a node's WireGuard device: the key pair the node
// is known by, the device itself, one peer per remote node and the routes
// that send those nodes' pod addresses through the tunnel.
//
// The device is kernel WireGuard where the kernel supports it and the
// embedded userspace implementation (wireguard-go: a TUN device plus a
// UAPI socket under /var/run/wireguard) otherwise; both are configured
// through wgctrl, so `wg show` sees either. Everything happens in the
// calling process's network namespace: the agent runs inside its node's.
//
// A kernel device outlives the agent. A userspace device lives in the
// process that serves it: with Config.UserspaceHelper it is served by a
// helper process (ServeUserspace) that outlives agent restarts and that
// the next New adopts, so that a restart leaves pod traffic alone;
// without, it goes with the agent.
//
// The node agent drives it from its merged view of the mesh: New once,
// PublicKey into the Node annotation meshconfig.NodeWireGuardPubKeyAnnotation,
// then SetPeers with every remote node each time that view changes.
//
// It must not import apiserver/, agent/, federation/ or cmd/, nor the
// Kubernetes or etcd client libraries: it knows nodes only as keys,
// endpoints and prefixes.
package wireguard
