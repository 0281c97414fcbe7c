#!/usr/bin/env bash
# Installs the system packages svcproxy's tests need, with apt, only when
# something is missing: a second run costs a few command lookups.
set -euo pipefail

# command -> Debian package that provides it
declare -A need=(
  [iptables-nft-restore]=iptables
  [iptables-legacy-restore]=iptables
  [ip6tables-nft-restore]=iptables
  [conntrack]=conntrack
  [ipset]=ipset
  [ip]=iproute2
  [socat]=socat
  [nft]=nftables # kube-proxy's nftables mode, run beside svcproxy in the daemon tests
  [curl]=curl    # the requests make run suggests
  [ipvsadm]=ipvsadm # the IPVS kernel seam's tests read the table as an operator would
  [gcc]=gcc
  [debootstrap]=debootstrap # hack/image-rootfs.sh: the container image's file system, without a container engine
)

missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages (${missing[*]}) and not root; install them with apt" >&2
  exit 1
fi
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
echo "install-deps: installing $pkgs"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
