// Package exporter turns a cluster's Kubernetes objects into its mesh
// state: Nodes into node entries, Running pods into identities and ipcache
// entries, global Services with their EndpointSlices into cluster services
// (PROTOCOL.md). It watches through client-go shared informers, converts
// only the objects that changed, and hands the results to a batched writer.
//
// The conversions are pure functions (ConvertNode, ConvertService,
// ParseServiceAnnotations, PodIPCacheEntries) so they are tested without a
// cluster. It must not import agent/, datapath/ or cmd/.
package exporter
