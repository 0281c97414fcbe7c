#!/usr/bin/env bash
# Builds the file system of svcproxy's container image (see Dockerfile)
# without a container engine: Debian bookworm by debootstrap (minbase) with
# the packages of hack/image-packages.txt, the list the Dockerfile installs
# too, then a static svcproxy at /usr/local/bin/svcproxy. Prints the
# directory, and nothing else on stdout.
#
# The directory is $SVCPROXY_CACHE/image-rootfs/<key>/rootfs (SVCPROXY_CACHE
# defaults to ~/.cache/svcproxy), where <key> hashes the package list, the
# suite and this script's format: change the list and a new file system is
# built beside the old. READY, beside rootfs, is written last. A second run
# finds READY and only rebuilds svcproxy into it (go's cache makes that a
# few seconds); a cold run downloads about 40 MB from the Debian mirror and
# takes a minute or two.
#
# Two callers racing serialise on a lock; the file system is built in a
# temporary directory renamed into place, and svcproxy is replaced by a
# rename, so nobody sees half of either.
# If a build is cut short (debootstrap mounts /proc and /sys, and in a
# container /dev, inside its target), the next run unmounts whatever is left
# mounted under the cache directory before it removes it.
#
# With --check it builds nothing: it prints the directory and succeeds only
# if the file system is ready (svcproxy's copy may be older than the tree).
# With --no-binary it builds the file system and leaves svcproxy as it is.
set -euo pipefail

format=1
suite=bookworm
mirror="${SVCPROXY_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
list="$here/image-packages.txt"
export PATH="/usr/local/go/bin:$PATH"

check=false binary=true
case "${1:-}" in
  --check) check=true ;;
  --no-binary) binary=false ;;
  "") ;;
  *) echo "usage: $0 [--check|--no-binary]" >&2; exit 2 ;;
esac

log() { echo "image-rootfs: $*" >&2; }

# packages: the list without comments and blank lines, one a line.
packages() { sed -e 's/#.*//' -e 's/[[:space:]]//g' -e '/^$/d' "$list"; }

key="$( { echo "format $format suite $suite"; packages; } | sha256sum | cut -c1-16)"
cache_root="${SVCPROXY_CACHE:-$HOME/.cache/svcproxy}/image-rootfs"
dir="$cache_root/$key"
stamp="svcproxy-image-rootfs $key"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg

is_ready() { [ "$(cat "$dir/READY" 2>/dev/null)" = "$stamp" ] && [ -x "$dir/rootfs/usr/sbin/iptables-legacy" ]; }

# unmount_under DIR: unmounts every mount point at or below DIR, deepest
# first (lazily: a process of a killed build may still hold one).
unmount_under() {
  local m
  awk -v d="$1" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null || log "cannot unmount $m"
  done
}

# install_binary: a static svcproxy of this tree into the file system.
install_binary() {
  local tmp="$dir/rootfs/usr/local/bin/.svcproxy.$$"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -o "$tmp" ./cmd/svcproxy) || { rm -f "$tmp"; return 1; }
  mv -f "$tmp" "$dir/rootfs/usr/local/bin/svcproxy"
}

if $check; then
  if is_ready; then echo "$dir/rootfs"; exit 0; fi
  log "not ready (run $0 as root)"
  exit 1
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock -w 900 9 || { log "timed out waiting for $cache_root/.lock"; exit 1; }

if ! is_ready; then
  if [ "$(id -u)" != 0 ]; then log "building the file system needs root (debootstrap)"; exit 1; fi
  command -v debootstrap >/dev/null 2>&1 || "$here/install-deps.sh"
  [ -r "$keyring" ] || { log "no $keyring to check the mirror's signatures (apt-get install debian-archive-keyring)"; exit 1; }
  unmount_under "$dir"
  rm -rf --one-file-system "$dir"
  mkdir -p "$dir"
  tmp="$dir/.build.$$"
  trap 'unmount_under "$tmp"' EXIT
  log "debootstrap $suite (minbase) with $(packages | tr '\n' ' ')into $dir (a minute or two)"
  start=$SECONDS
  if ! debootstrap --variant=minbase --keyring="$keyring" --include="$(packages | paste -sd, -)" \
      "$suite" "$tmp" "$mirror" >"$dir/debootstrap.log" 2>&1; then
    log "debootstrap failed; the last lines of $dir/debootstrap.log:"
    tail -n 20 "$dir/debootstrap.log" >&2
    exit 1
  fi
  unmount_under "$tmp"
  trap - EXIT
  # Every package of the list installed, as apt-get install in the
  # Dockerfile would leave it (debootstrap skips a name it cannot find with
  # only a warning in its log).
  # shellcheck disable=SC2046
  bad="$( { dpkg-query --admindir="$tmp/var/lib/dpkg" -W -f='${Package} ${db:Status-Status}\n' $(packages) 2>&1 || true; } | grep -v ' installed$' || true)"
  if [ -n "$bad" ]; then
    log "packages of $list not installed in the file system:"
    echo "$bad" >&2
    exit 1
  fi
  # What bookworm-slim leaves out too: the package cache and lists.
  rm -rf "$tmp"/var/cache/apt/archives/*.deb "$tmp"/var/lib/apt/lists/*
  mkdir -p "$tmp/usr/local/bin"
  mv "$tmp" "$dir/rootfs"
  echo "$stamp" >"$dir/READY"
  log "built in $((SECONDS - start)) s"
fi
if $binary; then install_binary; fi
echo "$dir/rootfs"
