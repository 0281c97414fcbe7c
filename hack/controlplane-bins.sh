#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and etcd from the Go module
# proxy (through the tools module in hack/tools) into a cache outside the repo,
# and prints the directory that holds them.
#
# The directory is named after the versions pinned in hack/tools/go.mod, so a
# second run only reads go.mod and stats three files. A cold build takes about
# ten minutes on two cores. Two callers racing serialise on a lock, and each
# build lands in a temporary directory that is renamed into place, so nobody
# ever sees half a directory.
#
# With --check it builds nothing: it prints the directory and succeeds only
# if the binaries are already there.
set -euo pipefail

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/tools" && pwd)"
cache_root="${SVCPROXY_CACHE:-$HOME/.cache/svcproxy}/controlplane"
binaries=(etcd kube-apiserver kube-controller-manager)

# pinned_version MODULE: the version hack/tools/go.mod requires.
pinned_version() {
  awk -v m="$1" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$tools_dir/go.mod"
}

k8s_version="$(pinned_version k8s.io/kubernetes)"
etcd_version="$(pinned_version go.etcd.io/etcd/server/v3)"
if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
  echo "controlplane-bins: cannot read the pinned versions from $tools_dir/go.mod" >&2
  exit 1
fi
stamp="kubernetes $k8s_version etcd $etcd_version"
out="$cache_root/k8s-${k8s_version}_etcd-${etcd_version}"

is_built() {
  local b
  [ "$(cat "$out/VERSIONS" 2>/dev/null)" = "$stamp" ] || return 1
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}

if is_built; then
  echo "$out"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "controlplane-bins: not built yet: $out" >&2
  exit 1
fi

build_into() {
  local dir="$1" major minor
  major="${k8s_version#v}"; major="${major%%.*}"
  minor="${k8s_version#v*.}"; minor="${minor%%.*}"
  # Without these the apiserver reports v0.0.0 at /version, and kubectl or
  # any client comparing versions would think it talks to an ancient server.
  local pkg=k8s.io/component-base/version
  local ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  echo "controlplane-bins: building kubernetes $k8s_version and etcd $etcd_version into $out (about ten minutes cold)" >&2
  (
    cd "$tools_dir"
    export GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
    go build -trimpath -ldflags "$ldflags" -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ldflags" -o "$dir/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager
    go build -trimpath -ldflags "-s -w" -o "$dir/etcd" go.etcd.io/etcd/server/v3
  )
  echo "$stamp" >"$dir/VERSIONS"
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
# Another caller may have finished the build while this one waited.
if is_built; then
  echo "$out"
  exit 0
fi

tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
build_into "$tmp"
chmod 755 "$tmp" # mktemp made it private to us
rm -rf "$out"
mv -T "$tmp" "$out"
trap - EXIT
echo "$out"
