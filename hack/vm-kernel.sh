#!/usr/bin/env bash
# Prepares what internal/vm boots: Debian's stock kernel (which, unlike this
# machine's, has IPVS, dummy and the rest as modules) with its modules, and a
# tiny initramfs that runs this machine's own root file system inside the VM.
# Prints the directory that holds them, and nothing else on stdout.
#
# The directory is $SVCPROXY_CACHE/vm/<kernel release>/ (SVCPROXY_CACHE
# defaults to ~/.cache/svcproxy), and holds:
#   kernel           what qemu's -kernel boots: the uncompressed vmlinux when it
#                    has a PVH entry (saves seconds of in-VM decompression a
#                    boot), else the stock vmlinuz
#   initramfs.cpio   static busybox, the modules needed to mount the host's
#                    root over virtio-9p, and /init (below)
#   lib/modules/     the kernel's modules with modules.dep, shared into the VM
#   READY            stamp, written last
# A second run reads $SVCPROXY_CACHE/vm/current and READY and stats a few
# files, without asking apt anything, so once a kernel is cached it stays the
# one used even when Debian ships a newer one (delete the cache to move on).
# A cold run downloads about 70 MB and takes under a minute.
#
# What the VM expects from its caller (internal/vm writes this):
#   virtio-9p share "hostroot"  this machine's / (read-only)
#   virtio-9p share "kmod"      <dir>/lib/modules (read-only)
#   virtio-9p share "job"       a writable directory holding
#       job.sh   run with /bin/sh as root once the VM is set up
#       shares   lines "TAG PATH": more 9p shares to mount read-write at PATH
#     into which the VM writes "started" when the job starts and "exit"
#     (its exit status) when it ends, just before powering off.
#
# Two callers racing serialise on a lock, and each build lands in a temporary
# directory that is renamed into place, so nobody ever sees half a directory.
#
# With --check it installs and builds nothing: it prints the directory and
# succeeds only if everything is ready.
set -euo pipefail

# Bump when anything that ends up in the directory changes: older directories
# then count as not ready and are rebuilt.
format=1

cache_root="${SVCPROXY_CACHE:-$HOME/.cache/svcproxy}/vm"
check=false
case "${1:-}" in
  --check) check=true ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

log() { echo "vm-kernel: $*" >&2; }

# is_ready DIR RELEASE: DIR is a complete kernel directory for RELEASE.
is_ready() {
  local dir="$1" rel="$2"
  [ "$(cat "$dir/READY" 2>/dev/null)" = "svcproxy-vm format $format release $rel" ] &&
    [ -s "$dir/kernel" ] && [ -s "$dir/initramfs.cpio" ] &&
    [ -s "$dir/lib/modules/$rel/modules.dep" ]
}

# What running a VM needs on the host: qemu itself, and kmod, because the VM's
# init runs the host's /sbin/modprobe against the shared modules.
host_ready() {
  command -v qemu-system-x86_64 >/dev/null 2>&1 && [ -x /sbin/modprobe ]
}

# Fast path: no apt, a few stats.
rel="$(cat "$cache_root/current" 2>/dev/null || true)"
if [ -n "$rel" ] && is_ready "$cache_root/$rel" "$rel" && host_ready; then
  echo "$cache_root/$rel"
  exit 0
fi
if $check; then
  log "not ready (run $0 without --check to prepare it)"
  exit 1
fi

# static_busybox: the path of a statically linked busybox, if any. The
# initramfs has no libc, so a dynamic one (package busybox) would not run.
static_busybox() {
  local b
  for b in /bin/busybox /usr/bin/busybox; do
    [ -x "$b" ] || continue
    readelf -l "$b" 2>/dev/null | grep 'program interpreter' >/dev/null && continue
    echo "$b"
    return 0
  done
  return 1
}

# command -> Debian package that provides it
declare -A need=(
  [qemu-system-x86_64]=qemu-system-x86
  [depmod]=kmod
  [modprobe]=kmod
  [cpio]=cpio
  [xz]=xz-utils
  [readelf]=binutils
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ -x /sbin/modprobe ] || missing+=(kmod)
if command -v readelf >/dev/null 2>&1 && ! static_busybox >/dev/null; then
  missing+=(busybox-static)
elif ! command -v readelf >/dev/null 2>&1; then
  missing+=(busybox-static) # checked again once binutils is there
fi

apt_updated=false
apt_update() {
  $apt_updated && return 0
  apt-get update -qq
  apt_updated=true
}

if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
  if [ "$(id -u)" != 0 ]; then
    log "missing packages ($pkgs) and not root; install them with apt"
    exit 1
  fi
  log "installing $pkgs"
  export DEBIAN_FRONTEND=noninteractive
  apt_update
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
busybox="$(static_busybox)" || { log "no static busybox after installing busybox-static"; exit 1; }

# kernel_package: the package linux-image-amd64 currently depends on, e.g.
# linux-image-6.1.0-57-amd64. (awk reads to the end: quitting early could
# kill apt-cache with SIGPIPE, which pipefail would count.)
kernel_package() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ && !p { p = $2 } END { print p }'
}
pkg="$(kernel_package)"
if [ -z "$pkg" ]; then
  apt_update
  pkg="$(kernel_package)"
fi
if [ -z "$pkg" ]; then
  log "apt knows no linux-image-amd64 (is Debian's repository configured?)"
  exit 1
fi
rel="${pkg#linux-image-}"
out="$cache_root/$rel"

# set_current: later runs take the fast path to this release.
set_current() {
  echo "$rel" >"$cache_root/.current.$$"
  mv -f "$cache_root/.current.$$" "$cache_root/current"
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
# A cold build takes well under a minute; ten mean the holder is stuck.
flock -w 600 9 || { log "timed out waiting for $cache_root/.lock"; exit 1; }
# Another caller may have finished the build while this one waited.
if is_ready "$out" "$rel"; then
  set_current
  echo "$out"
  exit 0
fi

# extract_vmlinux VMLINUZ OUT: the uncompressed kernel inside a bzImage, if it
# is xz-compressed (Debian's is) and has the Xen note that PVH booting needs.
extract_vmlinux() {
  local z="$1" o="$2" off
  for off in $(LC_ALL=C grep -obUaP '\xFD7zXZ\x00' "$z" | cut -d: -f1 | head -n 3); do
    # Not a pipe: xz stops reading after the stream, and pipefail would count
    # the SIGPIPE that tail then gets.
    if xz -dc --single-stream < <(tail -c +"$((off + 1))" "$z") >"$o" 2>/dev/null &&
      readelf -n "$o" 2>/dev/null | grep -E 'Xen.*(0x00000012|PHYS32)' >/dev/null; then
      return 0
    fi
  done
  rm -f "$o"
  return 1
}

# initramfs_modules DIR: insmod-able paths (relative to DIR), dependencies
# first, of what /init needs to mount the host's root.
initramfs_modules() {
  local dir="$1" m line path
  for m in virtio_pci virtio_rng 9pnet_virtio 9p overlay; do
    modprobe -d "$dir" -S "$rel" --show-depends "$m"
  done | while read -r line path _; do
    [ "$line" = insmod ] || continue # "builtin X": nothing to load
    case "$path" in
      # Needs SSE4.2, which an emulated CPU may lack; the generic one does.
      */crc32c-intel.ko*) continue ;;
    esac
    echo "${path#"$dir"/}"
  done | awk '!seen[$0]++'
}

build_into() {
  local dir="$1" deb m name
  log "fetching $pkg (about 70 MB) into $out"
  mkdir "$dir/deb"
  # Sandbox user root: apt's _apt user cannot write into a root-only folder.
  if ! (cd "$dir/deb" && apt-get download -qq -o APT::Sandbox::User=root "$pkg"); then
    # An old package list names a version the mirror no longer has.
    apt_update
    (cd "$dir/deb" && apt-get download -qq -o APT::Sandbox::User=root "$pkg")
  fi
  deb="$(echo "$dir"/deb/*.deb)"
  dpkg-deb -x "$deb" "$dir/pkg"
  rm -rf "$dir/deb"
  # Debian ships modules in /lib/modules, or /usr/lib/modules once usr is merged.
  if [ -d "$dir/pkg/lib/modules/$rel" ]; then
    mv "$dir/pkg/lib" "$dir/lib"
  else
    mkdir -p "$dir/lib"
    mv "$dir/pkg/usr/lib/modules" "$dir/lib/modules"
  fi
  mkdir -p "$dir/boot"
  mv "$dir/pkg/boot/"* "$dir/boot/"
  rm -rf "$dir/pkg"
  # The package leaves modules.dep to its postinst, which does not run here.
  depmod -b "$dir" "$rel"

  if extract_vmlinux "$dir/boot/vmlinuz-$rel" "$dir/kernel"; then
    log "booting vmlinux through PVH"
  else
    log "no PVH entry in the kernel; booting vmlinuz (slower)"
    cp "$dir/boot/vmlinuz-$rel" "$dir/kernel"
  fi

  local root="$dir/initramfs"
  mkdir -p "$root/bin" "$root/modules" "$root/dev" "$root/proc" "$root/sys" \
    "$root/lower" "$root/rw" "$root/newroot"
  cp "$busybox" "$root/bin/busybox"
  local order=()
  # libcrc32c needs a crc32c implementation loaded before it; modprobe knows
  # that from a soft dependency, insmod does not.
  mapfile -t mods < <(initramfs_modules "$dir")
  for m in "${mods[@]}"; do
    case "$m" in
      */libcrc32c.ko*)
        local gen
        gen="$(modprobe -d "$dir" -S "$rel" --show-depends crc32c_generic | awk '$1 == "insmod" { print $2 }' | tail -n 1)"
        if [ -n "$gen" ]; then order+=("${gen#"$dir"/}"); fi
        ;;
    esac
    order+=("$m")
  done
  local insmods=""
  for m in "${order[@]}"; do
    name="$(basename "$m")"
    case "$name" in
      *.ko) cp "$dir/$m" "$root/modules/$name" ;;
      *.ko.xz) xz -dc "$dir/$m" >"$root/modules/${name%.xz}"; name="${name%.xz}" ;;
      *.ko.zst) zstd -qdc "$dir/$m" >"$root/modules/${name%.zst}"; name="${name%.zst}" ;;
      *.ko.gz) gzip -dc "$dir/$m" >"$root/modules/${name%.gz}"; name="${name%.gz}" ;;
      *) log "unexpected module file $m"; return 1 ;;
    esac
    insmods+="insmod /modules/$name || fail \"insmod $name\""$'\n'
  done

  # Modules to load once in the full root (the host's modprobe resolves their
  # dependencies and soft dependencies). Namespaces made before nf_conntrack or
  # ip_vs are loaded lack their sysctls, so everything the project's tests use
  # is loaded before the job starts; the kernel loads anything else on demand.
  local moddir="$dir/lib/modules/$rel/kernel"
  local preload=(crc32c_generic nf_conntrack nf_conntrack_netlink nf_nat nf_tables
    nft_compat nft_chain_nat nft_ct nft_nat nft_masq nft_redir nft_reject_inet nft_fib_inet nft_limit
    x_tables ip_tables ip6_tables iptable_filter iptable_nat iptable_mangle iptable_raw
    ip6table_filter ip6table_nat ip6table_mangle ip6table_raw
    xt_conntrack xt_comment xt_mark xt_MASQUERADE xt_nat xt_addrtype xt_multiport
    xt_statistic xt_recent xt_set xt_ipvs xt_REDIRECT xt_CT xt_limit xt_state
    xt_LOG xt_NFLOG xt_connmark xt_tcpmss xt_TCPMSS xt_owner xt_pkttype xt_hashlimit
    ipt_REJECT ip6t_REJECT nf_reject_ipv4 nf_reject_ipv6
    ip_vs ip_set dummy veth)
  for m in "$moddir"/net/netfilter/ipvs/ip_vs_*.ko*; do
    name="$(basename "$m")"; name="${name%%.ko*}"
    case "$name" in ip_vs_ftp | ip_vs_pe_*) continue ;; esac # helpers, not schedulers
    preload+=("$name")
  done
  for m in "$moddir"/net/netfilter/ipset/ip_set_*.ko*; do
    name="$(basename "$m")"; preload+=("${name%%.ko*}")
  done
  # Only what this kernel has, so that modprobe's failure means something.
  local have=()
  for m in "${preload[@]}"; do
    if modprobe -d "$dir" -S "$rel" --show-depends "$m" >/dev/null 2>&1; then
      have+=("$m")
    else
      log "kernel $rel has no module $m; not preloading it"
    fi
  done
  preload=("${have[@]}")

  cat >"$root/init" <<EOF
#!/bin/busybox sh
# PID 1 in the initramfs: mounts this machine's root (a virtio-9p share) with
# a tmpfs overlay so it is writable, fresh /tmp and /run, the kernel's modules
# and the job's shares, then switch_roots into it so the kernel's module
# autoloading (/sbin/modprobe in PID 1's root) finds the host's kmod.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
fail() { echo "svcproxy-vm: init: \$*"; poweroff -f; }
mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
$insmods
p9="trans=virtio,version=9p2000.L,msize=512000"
# Nothing on the host changes under a running VM, so its root may be cached.
mount -t 9p -o "\$p9,ro,cache=loose" hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=755 tmpfs /rw || fail "mount /rw"
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "mount /tmp"
mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "mount /run"
mkdir -p /newroot/lib/modules /newroot/run/svcproxy-vm/job
mount -t 9p -o "\$p9,ro,cache=loose" kmod /newroot/lib/modules || fail "mount kmod"
mount -t 9p -o "\$p9" job /newroot/run/svcproxy-vm/job || fail "mount job"
if [ -f /newroot/run/svcproxy-vm/job/shares ]; then
  while read -r tag path; do
    [ -n "\$tag" ] || continue
    mkdir -p "/newroot\$path" && mount -t 9p -o "\$p9" "\$tag" "/newroot\$path" || fail "mount share \$path"
  done </newroot/run/svcproxy-vm/job/shares
fi
cp /bin/busybox /stage2 /newroot/run/svcproxy-vm/
for d in dev proc sys; do mount --move /\$d /newroot/\$d || fail "move /\$d"; done
exec switch_root /newroot /run/svcproxy-vm/busybox sh /run/svcproxy-vm/stage2
fail "switch_root"
EOF

  cat >"$root/stage2" <<EOF
# PID 1 in the host's root: sets up what the project's tests need, runs the
# job, reports its exit status through the job share and powers off.
bb=/run/svcproxy-vm/busybox
job=/run/svcproxy-vm/job
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
\$bb mkdir -p /dev/pts /dev/shm
\$bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
\$bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm
\$bb mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
\$bb ln -sf /proc/self/fd /dev/fd 2>/dev/null
/sbin/modprobe -a ${preload[*]} || echo "svcproxy-vm: some modules did not load"
echo 1 >/proc/sys/net/ipv4/ip_forward
echo 1 >/proc/sys/net/ipv6/conf/all/forwarding
\$bb ip link set lo up
\$bb hostname svcproxy-vm
\$bb touch \$job/started
echo "svcproxy-vm: job started"
/bin/sh \$job/job.sh </dev/null
rc=\$?
echo \$rc >\$job/exit.tmp && \$bb mv \$job/exit.tmp \$job/exit
\$bb sync
echo "svcproxy-vm: job exited with status \$rc"
\$bb poweroff -f
EOF
  chmod 755 "$root/init"
  (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet) >"$dir/initramfs.cpio"
  rm -rf "$root"
  echo "svcproxy-vm format $format release $rel" >"$dir/READY"
}

tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
build_into "$tmp"
chmod 755 "$tmp" # mktemp made it private to us
rm -rf "$out"
mv -T "$tmp" "$out"
trap - EXIT
set_current
echo "$out"
