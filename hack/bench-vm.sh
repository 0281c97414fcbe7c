#!/usr/bin/env bash
# Runs inside the VM (make bench): the IPVS mode's sync figures at 1,000
# and 10,000 services, and the iptables mode's on the same emulated CPU
# for comparison, each in a network namespace of its own.
set -euo pipefail
syncbench="$1"
shift
for n in 1000 10000; do
  for mode in ipvs iptables; do
    echo "== VM: $mode mode, $n services"
    unshare --net "$syncbench" -in-own-netns -mode "$mode" -services "$n" -rounds 10 "$@"
  done
done
