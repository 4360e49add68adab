// Package maps creates, pins and programs the BPF maps of the Isthmus
// datapath: the ipcache (IP prefix -> identity, tunnel endpoint, cluster;
// an LPM trie plus a hash for host entries, so that lookups cost the same
// with ten pods or a million),
// the global service maps used by the socket load balancer, the
// cross-cluster policy maps, the mesh config, and the maps the programs
// write (connection tracking, socket reverse translation, flow events,
// counters).
//
// The maps are defined once, in C (datapath/bpf/include/isthmus/maps.h), and
// created from the compiled definitions so that they carry BTF; layout.go
// documents every key and value byte by byte. Open reuses pins across agent
// restarts and recreates a pin whose definition changed. Reconcile is the
// generic "make this map hold exactly these entries" step the agent's
// reconcilers build on; the typed wrappers (IPCache, Services, Policy,
// Enforcement, ConfigMap) add validation, ID allocation and write ordering.
//
// This package never logs: errors carry their context, and Open reports
// recreated pins for the caller to log. It must not import apiserver/ or
// agent/.
package maps
