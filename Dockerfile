# syntax=docker/dockerfile:1
#
# One image with the three Isthmus binaries: isthmus-apiserver and
# isthmus-agent, which the Helm chart (charts/isthmus) runs, and the isthmus
# CLI (the e2e suite's echo workload runs `isthmus lab workload` from it).
# Build it with `make image` (needs a Docker engine) and load it into kind
# clusters with `make kind-load`.

ARG GO_VERSION=1.26.8

FROM docker.io/library/golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# No VCS stamping: the build context has no .git (.dockerignore).
ENV GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
# The same build as on a workstation: static binaries (CGO_ENABLED=0, set by
# the Makefile) of ./cmd/...
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    make build BIN=/out

# Static binaries need no libc. The agent executes no other program
# (no iptables, ip or wg: it speaks netlink, bpf(2) and the WireGuard API
# itself), so the image holds nothing else. It runs as root (the agent
# needs it); the chart runs the mesh apiserver as UID 65532.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/isthmus /out/isthmus-apiserver /out/isthmus-agent /usr/local/bin/
CMD ["isthmus", "--help"]
