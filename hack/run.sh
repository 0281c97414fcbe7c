#!/usr/bin/env bash
# make run: svcproxy against a local control plane and a sandbox node.
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=$(hack/controlplane-bins.sh)
go build -o bin/sandbox ./hack/sandbox
exec bin/sandbox -controlplane-bin-dir "$bin_dir" -svcproxy bin/svcproxy "$@"
