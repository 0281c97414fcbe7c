#!/usr/bin/env bash
# Builds etcd, kube-apiserver and kube-controller-manager, and kube-proxy and
# kubectl of the same release, from the Go module proxy (through the tools
# module in hack/tools) into a cache outside the repo, and prints the
# directory that holds them.
#
# The directory is named after the versions pinned in hack/tools/go.mod, so a
# second run only reads go.mod and stats a few files. A cold build takes
# about fifteen minutes on two cores. Only the binaries missing from the
# directory are built: a cache made when this script built fewer programs
# gains the new ones and keeps the rest. Two callers racing serialise on a
# lock, and each binary is built into a temporary directory and renamed into
# place, so nobody ever sees half a binary; VERSIONS is written last, once
# every binary is there.
#
# With --check it builds nothing: it prints the directory and succeeds only
# if the binaries are already there.
set -euo pipefail

tools_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/tools" && pwd)"
cache_root="${SVCPROXY_CACHE:-$HOME/.cache/svcproxy}/controlplane"
binaries=(etcd kube-apiserver kube-controller-manager kube-proxy kubectl)

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

# missing: the binaries still to build, one a line. A VERSIONS file that
# names other versions (the directory's name says what it must hold) makes
# every binary suspect; no VERSIONS at all is a build that stopped midway,
# whose finished binaries count.
missing() {
  local b stamped
  stamped="$(cat "$out/VERSIONS" 2>/dev/null || true)"
  for b in "${binaries[@]}"; do
    if [ -n "$stamped" ] && [ "$stamped" != "$stamp" ]; then
      echo "$b"
    elif [ ! -x "$out/$b" ]; then
      echo "$b"
    fi
  done
}

is_built() {
  [ "$(cat "$out/VERSIONS" 2>/dev/null)" = "$stamp" ] && [ -z "$(missing)" ]
}

if is_built; then
  echo "$out"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "controlplane-bins: not built yet: $out (missing: $(missing | tr '\n' ' '))" >&2
  exit 1
fi

# ldflags_for BINARY: the linker flags for one binary.
ldflags_for() {
  local major minor pkg flags="-s -w"
  case "$1" in
    etcd) echo "$flags"; return ;;
  esac
  major="${k8s_version#v}"; major="${major%%.*}"
  minor="${k8s_version#v*.}"; minor="${minor%%.*}"
  # Without these every Kubernetes program reports v0.0.0 (component-base:
  # the apiserver's /version, kube-proxy --version; client-go: kubectl's
  # client version and every user agent), and kubectl would think it talks
  # to an ancient server.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# main_package BINARY: the Go package that builds it.
main_package() {
  case "$1" in
    etcd) echo go.etcd.io/etcd/server/v3 ;;
    *) echo "k8s.io/kubernetes/cmd/$1" ;;
  esac
}

# install_binary NAME: builds NAME into a temporary directory beside the
# cache and renames it into $out, replacing nothing but a suspect copy.
install_binary() {
  local name="$1" tmp
  tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
  # shellcheck disable=SC2064 # expand now: the trap must remove this one
  trap "rm -rf '$tmp'" EXIT
  echo "controlplane-bins: building $name into $out" >&2
  (
    cd "$tools_dir"
    export GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0
    go build -trimpath -ldflags "$(ldflags_for "$name")" -o "$tmp/$name" "$(main_package "$name")"
  )
  chmod 755 "$tmp/$name"
  mv -fT "$tmp/$name" "$out/$name"
  rm -rf "$tmp"
  trap - EXIT
}

mkdir -p "$cache_root"
exec 9>>"$cache_root/.lock" # appending: the lock file stays as it is
flock 9
# Another caller may have finished the build while this one waited.
if is_built; then
  echo "$out"
  exit 0
fi

mapfile -t todo < <(missing)
echo "controlplane-bins: building ${todo[*]} (kubernetes $k8s_version, etcd $etcd_version): minutes each when cold" >&2
mkdir -p "$out"
for b in "${todo[@]}"; do
  install_binary "$b"
done
if [ "$(cat "$out/VERSIONS" 2>/dev/null)" != "$stamp" ]; then
  tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
  echo "$stamp" >"$tmp/VERSIONS"
  chmod 644 "$tmp/VERSIONS"
  mv -fT "$tmp/VERSIONS" "$out/VERSIONS"
  rm -rf "$tmp"
fi
echo "$out"
