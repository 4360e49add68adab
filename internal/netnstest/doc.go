// Package netnstest builds throwaway network topologies for tests out of
// real network namespaces, the shape of the local lab:
//
//   - an Underlay: a bridge in its own namespace that joins nodes by node
//     IP only, carrying one address family;
//   - Nodes: one namespace each, on the underlay, forwarding for their pods,
//     routing nothing else unless a test says so (Node.RouteVia);
//   - Pods: one namespace each behind a veth to their node, with addresses
//     from the node's pod CIDRs (or given ones).
//
// It runs code in a namespace (Namespace.Do, Listen, Dial), commands
// (Namespace.Start, Namespace.Run), and child processes of the test binary
// born inside a namespace and driven over RPC (StartChild, Main, ServeRPC):
// software that creates sockets or TUN devices from many goroutines, such
// as userspace WireGuard, must run in a process that lives in the
// namespace, not on one borrowed thread. Capture records every frame on a
// namespace's links.
//
// Everything it creates has a unique name and is removed in tb.Cleanup, so
// several test binaries can use it at once on one machine. It needs root;
// callers gate their tests with privileged.Require first.
//
// It is test support: only tests import it. It must not import apiserver/,
// agent/, datapath/ or cmd/.
package netnstest
