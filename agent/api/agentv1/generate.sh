#!/bin/sh
# Generates the agent API code from agent.proto with pinned plugins
# (protoc-gen-go v1.36.12, protoc-gen-go-grpc v1.6.2; protoc comes from the
# Debian package protobuf-compiler). With --verify, generates into a
# temporary directory and fails if the committed files differ. Skips (exit
# 0, with a message) when protoc is missing.
set -eu
cd "$(dirname "$0")"
GO=${GO:-go}
if ! command -v protoc >/dev/null 2>&1; then
	echo "agent/api/agentv1: protoc not found; skipped (apt-get install protobuf-compiler)"
	exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
GOBIN="$tmp/bin" GOFLAGS= "$GO" install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN="$tmp/bin" GOFLAGS= "$GO" install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
out=.
if [ "${1:-}" = --verify ]; then
	out="$tmp/out"
	mkdir -p "$out"
fi
protoc --plugin=protoc-gen-go="$tmp/bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$tmp/bin/protoc-gen-go-grpc" \
	--go_out="$out" --go_opt=paths=source_relative \
	--go-grpc_out="$out" --go-grpc_opt=paths=source_relative agent.proto
if [ "$out" != . ]; then
	for f in agent.pb.go agent_grpc.pb.go; do
		diff -u "$f" "$out/$f" || { echo "agent/api/agentv1/$f is stale: run go generate ./agent/api/agentv1 and commit it"; exit 1; }
	done
fi
