# svcproxy — see README.md. Every target works from a fresh clone on Debian 12
# as root: `make test` installs what it needs first.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(HOME)/go/bin:$(PATH)
GO ?= go
BIN := bin

.PHONY: all build test vet fmt-check deps controlplane vmkernel bench run clean

all: build

deps:
	@hack/install-deps.sh

# kube-apiserver, kube-controller-manager and etcd, and kube-proxy and
# kubectl of the same release, built from the Go module proxy into a cache
# outside the tree: ~15 minutes once, a no-op after.
controlplane:
	@echo "control plane binaries: $$(hack/controlplane-bins.sh)"

# The VM the IPVS mode is tested in (this kernel has no IPVS): qemu and
# Debian's stock kernel, prepared into a cache outside the tree; a no-op
# when ready.
vmkernel:
	@echo "VM kernel: $$(hack/vm-kernel.sh)"

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
# with concurrency of their own. Then the IPVS mode's datapath and daemon
# suites, in the VM (e2e/vm), one after the other: each takes a core.
test: deps controlplane vmkernel fmt-check vet
	$(GO) test -count=1 -timeout 30m $$($(GO) list ./... | grep -v /e2e/vm)
	$(GO) test -count=1 -timeout 10m -race ./proxier/...
	$(GO) test -count=1 -timeout 85m -v ./e2e/vm/

# The figures at BENCH_N services x 10 endpoints (1,000: about seven
# minutes, with 5 samples of each change and 10 s idle windows;
# BENCH_N=10000 for the big size, 10 samples and kube-proxy's 30 s
# --sync-period as the idle window, an hour or more, most of it the VM's). First the in-process ones: Go benchmarks, and svcproxy's rule
# sync in each iptables flavour, each run in a network namespace of its own
# (unshare --net) so the host's rules are never touched. Then the
# end-to-end figures (bench/e2e): a real control plane, a sandbox node, the
# services loaded through the API, then svcproxy and kube-proxy each
# started with kube-proxy's flags and timed by real connections from a pod
# namespace; a table on stdout, a JSON file and an SVG plot in
# bench/results. Last the IPVS mode, in the VM (this kernel has no IPVS;
# everything there runs 5-10 times slower): its rule sync beside the
# iptables mode's on the same emulated CPU, at 1,000 services and at
# BENCH_N, and the end-to-end figures of svcproxy's and kube-proxy's IPVS
# modes at BENCH_VM_N services (kube-proxy's IPVS mode takes minutes to its
# first sync at 200). BENCH_ARGS pass flags to the host's parts and the VM's
# rule sync, e.g. -rounds 5;
# E2E_ARGS to the host's end-to-end run only, e.g. -sizes 1000,10000 or
# -proxies svcproxy; E2E_VM_ARGS to the VM's; E2E_TIMEOUT bounds the host's.
BENCH_N ?= 1000
BENCH_VM_N ?= $(if $(filter 1000,$(BENCH_N)),50,200)
BENCH_VM_ROUNDS ?= $(if $(filter 1000,$(BENCH_N)),3,5)
BENCH_E2E_ROUNDS ?= $(if $(filter 1000,$(BENCH_N)),5,10)
BENCH_IDLE ?= $(if $(filter 1000,$(BENCH_N)),10s,30s)
E2E_TIMEOUT ?= 30m
bench: deps controlplane vmkernel
	$(GO) build -o $(BIN)/syncbench ./bench/cmd/syncbench
	$(GO) build -o $(BIN)/e2ebench ./bench/cmd/e2ebench
	$(GO) build -o $(BIN)/svcproxy ./cmd/svcproxy
	$(GO) test -run '^$$' -bench . -benchmem ./proxier ./iptables ./ipvs
	@for flavor in nft legacy; do \
		unshare --net $(BIN)/syncbench -in-own-netns -flavor $$flavor -services $(BENCH_N) $(BENCH_ARGS) || exit 1; \
	done
	$(BIN)/e2ebench -controlplane-bin-dir "$$(hack/controlplane-bins.sh)" -svcproxy $(BIN)/svcproxy \
		-out bench/results -timeout $(E2E_TIMEOUT) -services $(BENCH_N) -rounds $(BENCH_E2E_ROUNDS) -idle $(BENCH_IDLE) \
		$(BENCH_ARGS) $(E2E_ARGS)
	$(GO) run ./hack/vmrun -mem 4096 -timeout 60m -- $(CURDIR)/hack/bench-vm.sh $(CURDIR)/$(BIN)/syncbench "1000 $(BENCH_N)" $(BENCH_ARGS)
	mkdir -p bench/results
	$(GO) run ./hack/vmrun -mem 6144 -timeout 50m -share $(CURDIR)/bench/results -- $(CURDIR)/$(BIN)/e2ebench \
		-controlplane-bin-dir "$$(hack/controlplane-bins.sh)" -svcproxy $(CURDIR)/$(BIN)/svcproxy \
		-out $(CURDIR)/bench/results -proxies ipvs -timeout 45m -wait 5m -services $(BENCH_VM_N) -rounds $(BENCH_VM_ROUNDS) -idle $(BENCH_IDLE) $(E2E_VM_ARGS)

run: deps controlplane build
	hack/run.sh

clean:
	rm -rf $(BIN)
