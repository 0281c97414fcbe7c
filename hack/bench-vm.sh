#!/usr/bin/env bash
# Runs inside the VM (make bench): the IPVS mode's sync figures at each
# size given (the first is what the others scale against), and the
# iptables mode's on the same emulated CPU for comparison, each in a
# network namespace of its own.
set -euo pipefail
syncbench="$1"
sizes="$2"
shift 2
seen=" "
for n in $sizes; do
  case "$seen" in *" $n "*) continue ;; esac
  seen="$seen$n "
  for mode in ipvs iptables; do
    echo "== VM: $mode mode, $n services"
    unshare --net "$syncbench" -in-own-netns -mode "$mode" -services "$n" -rounds 10 "$@"
  done
done
