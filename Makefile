# Isthmus build and test entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
PKG := github.com/isthmus-mesh/isthmus
GOTEST_FLAGS ?=
TEST_TIMEOUT ?= 28m

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: build
build: ## build the binaries into bin/ (static; the container image runs this same build)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# The container image with isthmus, isthmus-apiserver and isthmus-agent that
# charts/isthmus runs (image.repository and image.tag there).
IMAGE ?= ghcr.io/isthmus-mesh/isthmus:latest
DOCKER ?= docker
KIND ?= kind
KIND_CLUSTERS ?= east west

.PHONY: image
image: ## build the container image, IMAGE=ghcr.io/isthmus-mesh/isthmus:latest by default (Dockerfile; needs a Docker engine)
	$(DOCKER) build -t $(IMAGE) .

.PHONY: kind-load
kind-load: ## load IMAGE into the kind clusters KIND_CLUSTERS ("east west" by default; needs kind and a Docker engine)
	@for c in $(KIND_CLUSTERS); do echo "$(KIND) load docker-image $(IMAGE) --name $$c"; $(KIND) load docker-image $(IMAGE) --name $$c || exit 1; done

# HELM is the pinned helm binary, built once into the cache (internal/helmbin).
HELM = $$($(GO) run ./internal/helmbin/internal/ensure)
# helm template and lint check the chart's kubeVersion against this; a real
# install checks it against the cluster.
CHART_KUBE_VERSION ?= 1.37.2

.PHONY: helm
helm: ## build and cache the pinned helm binary (internal/helmbin) and print its path
	$(GO) run ./internal/helmbin/internal/ensure

.PHONY: chart-lint
chart-lint: ## helm lint --strict charts/isthmus, with default and cert-manager values (builds helm once)
	@helm=$(HELM) && \
	$$helm lint --strict charts/isthmus --namespace isthmus-system --kube-version $(CHART_KUBE_VERSION) && \
	$$helm lint --strict charts/isthmus --namespace isthmus-system --kube-version $(CHART_KUBE_VERSION) \
	  --set certManager.enabled=true --set cluster.name=lint --set cluster.id=1

.PHONY: kube
kube: ## build and cache the pinned kube-apiserver, controller-manager, scheduler (internal/kubebin)
	$(GO) run ./internal/kubebin/internal/ensure

.PHONY: kube-pin
kube-pin: ## regenerate the kubebin tool module from kubebin.KubernetesVersion, then run make kube
	$(GO) run ./internal/kubebin/internal/pin

.PHONY: lab
lab: build ## bring up the local lab as root (bin/isthmus lab up; LAB_FLAGS="--clusters 3" to shape it)
	$(BIN)/isthmus lab up $(LAB_FLAGS)

.PHONY: demo
demo: ## as root: bring up the lab, connect its clusters, show a global service answering from both and a cross-cluster policy at work
	@echo "== building isthmus, isthmus-apiserver, isthmus-agent and isthmus-demo into bin/"
	@echo "   (the first build on a machine compiles every dependency: a few minutes; a dot per 20 packages)"
	@mkdir -p $(BIN)
	@set -o pipefail; $(GO) build -v -o $(BIN)/ ./cmd/... ./internal/demo/isthmus-demo 2>&1 | \
	  awk '/^[^ :#]+$$/ { if (++n % 20 == 0) { printf "."; fflush() } next } { print; fflush() } END { if (n >= 20) print "" }'
	$(BIN)/isthmus-demo --bin $(BIN)

.PHONY: demo-down
demo-down: ## remove the demo's lab (bin/isthmus lab down)
	$(BIN)/isthmus lab down

.PHONY: lab-down
lab-down: ## remove the local lab (bin/isthmus lab down)
	$(BIN)/isthmus lab down $(LAB_FLAGS)

.PHONY: test
test: verify kube ## everything CI runs: checks, unit, integration and e2e tests (builds the control plane first)
	$(GO) test $(GOTEST_FLAGS) -timeout $(TEST_TIMEOUT) ./...

.PHONY: test-unit
test-unit: ## fast tests only (no kube-apiserver, no lab)
	$(GO) test -short ./...

.PHONY: bench
bench: ## run the benchmarks (results go into BENCHMARKS.md by hand)
	$(GO) test -run '^$$' -bench . -benchmem -timeout 60m ./...

.PHONY: fuzz
fuzz: ## run each fuzz target for FUZZTIME (default 30s)
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test $$pkg -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; \
	  done; \
	done

.PHONY: generate
generate: ## regenerate BPF objects and CRDs
	$(GO) generate ./...

# CRD_GEN must match the go:generate line in apis/v1alpha1/generate.go.
CRD_GEN = $(GO) tool controller-gen crd paths=./apis/...

.PHONY: verify-crds
verify-crds: ## check the committed CRDs and deepcopy code match apis/ (fix: make generate)
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(CRD_GEN) output:crd:dir="$$tmp/crds" && \
	$(GO) tool controller-gen object paths=./apis/... output:object:dir="$$tmp/object" && \
	{ diff -ru charts/isthmus/crds "$$tmp/crds" && \
	  diff -u apis/v1alpha1/zz_generated.deepcopy.go "$$tmp/object/zz_generated.deepcopy.go"; } \
	  || { echo "generated API code is stale: run make generate and commit the result"; exit 1; }

.PHONY: verify-generated
verify-generated: ## check committed BPF objects match their C sources (skips without clang-14)
	GO=$(GO) datapath/bpf/verify-generated.sh

.PHONY: verify-agent-api
verify-agent-api: ## check the committed agent API code matches agent.proto (skips without protoc)
	GO=$(GO) sh agent/api/agentv1/generate.sh --verify

.PHONY: verify
verify: verify-generated verify-crds verify-agent-api chart-lint ## formatting, vet, go.mod tidiness, generated BPF objects and API code up to date, chart lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed (make fmt):"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@$(GO) mod tidy -diff >/dev/null || { echo "go.mod/go.sum not tidy (make tidy)"; $(GO) mod tidy -diff; exit 1; }

.PHONY: fmt
fmt: ## fix formatting (twin of verify)
	gofmt -w $$(git ls-files '*.go')

.PHONY: tidy
tidy: ## fix go.mod/go.sum (twin of verify)
	$(GO) mod tidy
