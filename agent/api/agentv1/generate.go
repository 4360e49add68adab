// Package agentv1 is the node agent's local gRPC API: the protobuf
// definition (agent.proto) and the code generated from it, which is
// committed. Regenerate with `go generate ./agent/api/agentv1` (needs
// protoc from the Debian package protobuf-compiler; the Go plugins are
// installed at pinned versions by the directive).
//
// It must not import anything from the rest of the module.
package agentv1

//go:generate sh -c "GOFLAGS= go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12 && GOFLAGS= go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2"
//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go env GOPATH)/bin/protoc-gen-go --plugin=protoc-gen-go-grpc=$(go env GOPATH)/bin/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative agent.proto"
