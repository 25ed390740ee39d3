# buildguard — see README.md. Targets are thin wrappers over go and scripts.
SHELL := /usr/bin/env bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN := bin

.PHONY: help build test vet fmt-check unit fuzz bench demo clean

help: ## Show this help.
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

build: ## Build bin/buildguard (static, version stamped in).
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/buildguard ./cmd/buildguard

test: fmt-check vet unit ## All tests: gofmt, go vet, unit and integration tests with the race detector.

fmt-check: ## Fail if any Go file is not gofmt-formatted.
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi

vet: ## go vet every package.
	$(GO) vet ./...

unit: ## Unit and integration tests (race detector on; fuzz seed corpora run too).
	$(GO) test -race -count=1 ./...

fuzz: ## Fuzz every parser of untrusted input for FUZZTIME each (default 30s).
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzAnalyzeStep$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./policy/ -run '^$$' -fuzz '^FuzzImageReference$$' -fuzztime $${FUZZTIME:-30s}
	$(GO) test ./webhook/ -run '^$$' -fuzz '^FuzzDecodeReview$$' -fuzztime $${FUZZTIME:-30s}

bench: ## Benchmarks: webhook throughput and latency vs a do-nothing webhook, cache memory, round trips.
	$(GO) run ./bench -duration 10s -runs 3
	$(GO) test -run '^$$' -bench . -benchmem ./registry/

demo: build ## The main job end to end: a local registry, the real server, and buildguard check.
	$(GO) run ./cmd/demo -buildguard $(BIN)/buildguard

clean: ## Remove built binaries.
	rm -rf $(BIN)
