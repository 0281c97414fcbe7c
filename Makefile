# svcproxy — see README.md. Every target works from a fresh clone on Debian 12
# as root: `make test` installs what it needs first.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin

.PHONY: all build test vet fmt-check deps controlplane bench run clean

all: build

deps:
	@hack/install-deps.sh

# kube-apiserver, kube-controller-manager and etcd built from the Go module
# proxy into a cache outside the tree: ~10 minutes once, a no-op after.
controlplane:
	@echo "control plane binaries: $$(hack/controlplane-bins.sh)"

build:
	$(GO) build -o $(BIN)/svcproxy ./cmd/svcproxy

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every test: unit, golden, packet tracer, fuzz seed corpora, and the root
# datapath tests (each in network namespaces of its own, under both
# iptables-nft and iptables-legacy). The race detector runs on the packages
# with concurrency of their own.
test: deps controlplane fmt-check vet
	$(GO) test -count=1 -timeout 30m ./...
	$(GO) test -count=1 -timeout 10m -race ./proxier/...

# Rule-sync figures at 10,000 services x 10 endpoints, in each iptables
# flavour, each run in a network namespace of its own (unshare --net) so the
# host's rules are never touched. BENCH_ARGS passes flags, e.g. -services 2000.
bench: deps
	$(GO) build -o $(BIN)/syncbench ./bench/cmd/syncbench
	$(GO) test -run '^$$' -bench . -benchmem ./proxier ./iptables
	@for flavor in nft legacy; do \
		unshare --net $(BIN)/syncbench -in-own-netns -flavor $$flavor $(BENCH_ARGS) || exit 1; \
	done

run: deps controlplane build
	hack/run.sh

clean:
	rm -rf $(BIN)
