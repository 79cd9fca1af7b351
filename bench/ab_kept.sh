#!/usr/bin/env bash
# Two (or more) gateway binaries against each other, alternating, on the configs a
# `KEEP_WORKDIR=1 bash bench/proxies.sh` run kept: the same origin, the same gateway.toml, the
# same h2load line (`ab.sh` does the same on its own customer-services setup, without HTTP/2
# upstreams). For a change whose effect is smaller than the VM's own drift between
# proxies.sh runs (bench/PROFILE.md, Noise): each round runs every binary once, back to back.
#
#   KEEP_WORKDIR=1 SKIP_BUILD=1 DURATION=1 ROUNDS=1 PROTOS=h2 CONNS_LIST=64 UPSTREAMS=tls \
#     UPSTREAM_PROTO=http2 bash bench/proxies.sh        # prints the kept directory
#   WORKDIR=/tmp/proxies-... ROUNDS=4 bash bench/ab_kept.sh /tmp/gateway-old /tmp/gateway-new
#
# Environment (defaults): WORKDIR (required), ROUNDS=3, DURATION=5, LOAD="h2load -c64 -m10
# -t1" (an h2load line without its duration and URL). Prints per round and binary
# req/s, the gateway's CPU per request (utime + stime from /proc) and its RSS after the run.
set -euo pipefail
: "${WORKDIR:?set WORKDIR to a directory kept by KEEP_WORKDIR=1 bash bench/proxies.sh}"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
LOAD=${LOAD:-h2load -c64 -m10 -t1}
[ $# -ge 1 ] || { echo "usage: WORKDIR=... bash bench/ab_kept.sh GATEWAY_BINARY..." >&2; exit 2; }
port=$(sed -n 's/^listen = \["127.0.0.1:\([0-9]*\)"\]/\1/p' "$WORKDIR/gateway.toml" | head -1)
[ -n "$port" ] || { echo "no HTTPS listen address in $WORKDIR/gateway.toml" >&2; exit 1; }
url=https://127.0.0.1:$port/health

nginx -c "$WORKDIR/origin.conf" -p "$WORKDIR/origin" -e "$WORKDIR/origin/error.log" -g 'daemon off;' >/dev/null 2>&1 &
origin=$!
gw=
trap 'kill $origin ${gw:-} 2>/dev/null || true' EXIT
sleep 0.5
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
for r in $(seq "$ROUNDS"); do
  for bin in "$@"; do
    LOG_LEVEL=warn "$bin" --config "$WORKDIR/gateway.toml" >"$WORKDIR/ab-gateway.log" 2>&1 &
    gw=$!
    for _ in $(seq 100); do curl -skf "$url" >/dev/null && break; sleep 0.1; done
    $LOAD -D 1 "$url" >/dev/null 2>&1 || true
    c0=$(cpu "$gw")
    out=$($LOAD -D "$DURATION" "$url" 2>&1)
    c1=$(cpu "$gw")
    rss=$(awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$gw/status")
    rps=$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')
    n=$(echo "$out" | awk '/^requests:/ {print $8}')
    printf 'round %s %-40s %10s req/s %8s µs/req CPU %6s MB RSS\n' "$r" "$bin" "$rps" \
      "$(awk -v c=$((c1 - c0)) -v t="$tck" -v n="$n" 'BEGIN {printf "%.1f", n ? c / t * 1e6 / n : 0}')" "$rss"
    kill "$gw"; wait "$gw" 2>/dev/null || true
  done
done
