#!/usr/bin/env bash
# Failover drill on loopback and in network namespaces: the gap from `kill -9` (or SIGTERM)
# of the HA master to the first request served through the VIP, polled every 10 ms, over RUNS
# runs, in bind mode (loopback) and in interface mode (network namespaces; needs root). The
# measuring code is the HA integration tests (gateway/tests/it/ha.rs, ha_netns.rs), which
# print each gap; this script repeats them and prints median and max. The same drill on the
# Docker runtime, through the edge, with planned handovers: bench/failover.py.
#
#   RUNS=10 bash bench/failover.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-10}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

for i in $(seq "$RUNS"); do
  cargo nextest run --release -p gateway --test it --no-capture \
    -E 'test(kill9_fails_over) | test(clean_stop) | test(interface_mode)' 2>&1 \
    | grep -E '^failover gap' >>"$log" || true
done

summarize() { # $1 = label pattern
  { grep -F "$1" "$log" || true; } | sed -E 's/.*: ([0-9.]+)(ms|s|µs)$/\1 \2/' | awk '
    { v = $1; if ($2 == "s") v *= 1000; if ($2 == "µs") v /= 1000; print v }' | sort -n | awk -v label="$1" '
    { a[NR] = $1 } END {
      if (NR == 0) { printf "%-45s no runs\n", label; exit }
      m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      printf "%-45s runs %3d   median %8.1f ms   max %8.1f ms\n", label, NR, m, a[NR] }'
}
echo "HA failover drill ($RUNS runs each; advert interval 50 ms, backup priority 100)"
summarize "after kill -9 (bind mode)"
summarize "after kill -9 (interface mode)"
summarize "after SIGTERM (bind mode)"
