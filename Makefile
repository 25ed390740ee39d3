# buildguard — see README.md. Targets are thin wrappers over go and scripts.
SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin

IMG ?= ghcr.io/buildguard/buildguard:$(VERSION)
KUBECTL ?= $(BIN)/kubectl
# DOCKER builds the image; its BuildKit is needed for RUN --mount.
DOCKER ?= docker
# GO_IMAGE and BASE_IMAGE replace the Dockerfile's base images (golang:1.26,
# gcr.io/distroless/static-debian12:nonroot) when set, e.g. with a mirror's.
GO_IMAGE ?=
BASE_IMAGE ?=
# DEMO_ARGS are more flags of cmd/demo: -exit stops after the story.
DEMO_ARGS ?=

.PHONY: help deps build tools test vet fmt-check unit e2e fuzz bench bench-cosign demo image manifests deploy clean

help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

deps: ## Install (as root with apt-get) or list what the tests and the demo need besides Go: scripts/deps.sh.
	scripts/deps.sh

build: ## Build bin/buildguard (static, version stamped in).
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/buildguard ./cmd/buildguard

tools: ## Build etcd, the Kubernetes binaries, containerd, CoreDNS, helm, cosign-v2 and cosign-v3 into bin/ (cached; the times: docs/benchmark-results.md).
	tools/build.sh

test: deps fmt-check vet tools unit ## All tests: gofmt, go vet, unit, integration and e2e tests (race detector on).

fmt-check: ## Fail if any Go file is not gofmt-formatted.
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet: ## go vet every package.
	$(GO) vet ./...

unit: deps ## Unit, integration and e2e tests (race detector on; fuzz seed corpora run too).
	$(GO) test -race -count=1 -timeout 45m ./...

e2e: deps tools ## Only the end-to-end tests on a real control plane.
	$(GO) test -count=1 -timeout 45m -v ./e2e/

fuzz: ## Fuzz every parser of untrusted input for FUZZTIME each (default 30s).
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzAnalyzeStep$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzAnalyzeHistory$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzParseSources$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzImageReference$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzForbiddenHost$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzDecodeReview$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzPatch$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzDecodeOnce$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzAppendReview$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzDigestsAnnotation$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./registry/ -run '^$$' -fuzz '^FuzzJSONCounter$$' -fuzztime $${FUZZTIME:-30s}
	for f in FuzzParseAgent FuzzParseFalco FuzzParseTetragon FuzzParseDocker; do \
	  $(GO) test ./nodereport/ -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done
	$(GO) test ./provenance/ -run '^$$' -fuzz '^FuzzParseEnvelope$$' -fuzztime $${FUZZTIME:-30s}
	for f in FuzzParseTrustedRoots FuzzParseVSA FuzzNotationManifest; do \
	  $(GO) test ./provenance/ -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzParseResourceURI$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./nodeagent/ -run '^$$' -fuzz '^FuzzDecodeEvents$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./nodeagent/ -run '^$$' -fuzz '^FuzzContainerdBlobs$$' -fuzztime $${FUZZTIME:-30s}
	for f in FuzzParseTraceFormat FuzzParseProcCgroup FuzzParseProcNetTCP FuzzParseStat; do \
	  $(GO) test ./nodeagent/conns/ -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done
	for f in FuzzParseTokens FuzzSessionDecode FuzzParseFilter FuzzExportRow FuzzHandler; do \
	  $(GO) test ./review/ -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-30s} || exit 1; done
	$(GO) test ./policysource/ -run '^$$' -fuzz '^FuzzParseExceptionFile$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./records/ -run '^$$' -fuzz '^FuzzParseReviewURL$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./manifest/ -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $${FUZZTIME:-30s}

bench: tools ## Benchmarks: buildguard serve as shipped vs a do-nothing webhook (processes of their own), the in-process harness, cache memory, round trips, build-step analysis, decision records, cold provenance verification, the review UI's pages over 100,000 decisions, node reports of a 1,000-node fleet.
	$(GO) run ./bench/shipped -rounds 3 -duration 5s
	$(GO) run ./bench -duration 10s -runs 3
	$(GO) test -run '^$$' -bench 'DecodeReview|ServeHTTP|MetricsReview|Evaluate' -benchmem ./webhook/ ./engine/
	$(GO) test -run '^$$' -bench . -benchmem ./registry/
	$(GO) test -run '^$$' -bench 'AnalyzeStep|AnalyzeHistory' -benchmem -count 5 ./policy/
	$(GO) test -run '^$$' -bench Ingest -benchtime 3s ./ingest/
	$(GO) test -run '^$$' -bench AddDecisions -benchtime 2s ./evidence/
	$(GO) test -run '^$$' -bench 'Commit|Recorder' -benchtime 3s ./records/
	$(GO) test -run '^$$' -bench Pages -benchtime 200x ./review/
	$(GO) test -run '^$$' -bench DenyPath -benchtime 3s ./bench/denypath/
	$(GO) test -run '^$$' -bench ColdVerification -benchtime 50x -count 3 ./provenance/
	$(GO) run ./bench/fleet -nodes 1000 -interval 2s -duration 60s

bench-cosign: ## Cold provenance verification against the cosign CLI of the pinned version (make tools builds it).
	test -x $(BIN)/cosign-v2 || tools/build.sh cosign-v2
	$(GO) run ./bench/cosigncmp -cosign $(BIN)/cosign-v2

demo: deps build tools ## The main job end to end on a real single-node cluster on this machine (root); stays up until Ctrl-C.
	$(GO) run ./cmd/demo -buildguard $(BIN)/buildguard $(DEMO_ARGS)

image: ## Build the container image IMG with BuildKit (GO_IMAGE, BASE_IMAGE: other base images; IMAGE_ARGS: more docker build flags).
	DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg VERSION=$(VERSION) \
	  $(if $(GO_IMAGE),--build-arg GO_IMAGE=$(GO_IMAGE)) $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(IMAGE_ARGS) -t $(IMG) .

manifests: tools ## Render the kustomize manifests to stdout.
	$(KUBECTL) kustomize manifests/

deploy: tools ## kubectl apply -k manifests/ with image IMG (to the current kubeconfig's cluster).
	$(KUBECTL) kustomize manifests/ | sed 's|image: ghcr.io/buildguard/buildguard:.*|image: $(IMG)|' | $(KUBECTL) apply -f -

clean: ## Remove built binaries.
	rm -rf $(BIN)
