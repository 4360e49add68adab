// Package agentv1 is the node agent's local gRPC API: the protobuf
// definition (agent.proto) and the code generated from it, which is
// committed. Regenerate with `go generate ./agent/api/agentv1` (needs
// protoc from the Debian package protobuf-compiler; generate.sh installs
// the Go plugins at pinned versions); `make verify` checks the committed
// code is current.
//
// It must not import anything from the rest of the module.
package agentv1

//go:generate sh generate.sh
