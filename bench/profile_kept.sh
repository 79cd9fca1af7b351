#!/usr/bin/env bash
# Where the gateway spends CPU on the configs a `KEEP_WORKDIR=1 bash bench/proxies.sh` run
# kept (its origin, its gateway.toml, HTTP/2 upstreams if that run used them), with a gateway
# built with symbols. profile.sh does the same on its own customer-services setup, without
# HTTP/2 upstreams or HAProxy's origin.
#
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release -p gateway
#   cp target/release/gateway /tmp/gateway-symbols
#   KEEP_WORKDIR=1 SKIP_BUILD=1 DURATION=1 ROUNDS=1 PROTOS=h2 CONNS_LIST=64 UPSTREAMS=tls \
#     UPSTREAM_PROTO=http2 bash bench/proxies.sh        # prints the kept directory
#   WORKDIR=/tmp/proxies-... PROFILE_BIN=/tmp/gateway-symbols bash bench/profile_kept.sh
#
# Runs the load for 12 s; 3 s in, samples the gateway twice (`perf record -F 999 -g` for 6 s:
# self time; then a second run with `--call-graph dwarf` at 499 Hz for 4 s: who calls
# memmove, memcmp and the allocator). Prints self time grouped by component, the flat top,
# and those callers. The perf data stays in $WORKDIR/profile-*.
#
# Environment (defaults): WORKDIR and PROFILE_BIN (required), LOAD="h2load -c64 -m10 -t1"
# (an h2load line without its duration and URL; `h2load --h1 -c64 -t1` for HTTP/1.1).
set -euo pipefail
: "${WORKDIR:?set WORKDIR to a directory kept by KEEP_WORKDIR=1 bash bench/proxies.sh}"
: "${PROFILE_BIN:?set PROFILE_BIN to a gateway built with symbols}"
LOAD=${LOAD:-h2load -c64 -m10 -t1}
port=$(sed -n 's/^listen = \["127.0.0.1:\([0-9]*\)"\]/\1/p' "$WORKDIR/gateway.toml" | head -1)
[ -n "$port" ] || { echo "no HTTPS listen address in $WORKDIR/gateway.toml" >&2; exit 1; }
url=https://127.0.0.1:$port/health
perf stat -e cpu-clock true >/dev/null 2>&1 || { echo "perf cannot sample here" >&2; exit 1; }

nginx -c "$WORKDIR/origin.conf" -p "$WORKDIR/origin" -e "$WORKDIR/origin/error.log" -g 'daemon off;' >/dev/null 2>&1 &
origin=$!
gw=
trap 'kill $origin ${gw:-} 2>/dev/null || true' EXIT
sleep 0.5

# profile NAME PERF-RECORD-ARGS...: a fresh gateway under the load, sampled 3 s in.
profile() {
  local name=$1 load
  shift
  LOG_LEVEL=warn "$PROFILE_BIN" --config "$WORKDIR/gateway.toml" >"$WORKDIR/profile-$name.log" 2>&1 &
  gw=$!
  for _ in $(seq 100); do curl -skf "$url" >/dev/null && break; sleep 0.1; done
  $LOAD -D 12 "$url" >"$WORKDIR/profile-$name.out" 2>&1 &
  load=$!
  sleep 3
  perf record -q -p "$gw" -o "$WORKDIR/profile-$name.data" "$@" >"$WORKDIR/profile-$name.perf.log" 2>&1 \
    || { cat "$WORKDIR/profile-$name.perf.log" >&2; exit 1; }
  wait "$load" || true
  kill "$gw"; wait "$gw" 2>/dev/null || true
  echo "== $name: $(awk '/^finished in/ {print $4, "req/s"}' "$WORKDIR/profile-$name.out")"
}
profile fp -F 999 -g -- sleep 6
profile dwarf -F 499 --call-graph dwarf,16384 -- sleep 4

flat=$(perf report -i "$WORKDIR/profile-fp.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null | grep '%')
echo "== self time by component (share of the gateway's samples)"
echo "$flat" | awk '
  { p = $1; sub(/%/, "", p); $1 = ""; s = $0
    if (s ~ /\[k\]/) g = "kernel"
    else if (s ~ /hpack|HeaderBlock/) g = "h2: HPACK"
    else if (s ~ /h2::/) g = "h2: frames, streams"
    else if (s ~ /http::/) g = "http: header maps"
    else if (s ~ /memmove|memcpy/) g = "memmove/memcpy"
    else if (s ~ /memcmp/) g = "memcmp"
    else if (s ~ /mi_|malloc/) g = "allocator"
    else if (s ~ /aws_lc|rustls|aes|gcm/) g = "TLS"
    else if (s ~ /bytes::/) g = "bytes"
    else if (s ~ /tokio|mio::/) g = "tokio"
    else if (s ~ /gateway::|service_kit::/) g = "gateway (ours)"
    else if (s ~ /hyper/) g = "hyper"
    else g = "other"
    t[g] += p }
  END { for (g in t) printf "%6.1f%%  %s\n", t[g], g }' | sort -rn
echo "== flat top 25"
echo "$flat" | head -25
for sym in __memmove_avx512_unaligned_erms __memcmp_evex_movbe _mi_page_malloc_zero; do
  echo "== callers of $sym (DWARF pass, share of all samples)"
  perf report -i "$WORKDIR/profile-dwarf.data" --no-children -S "$sym" -g caller,0.3,callee \
    --stdio 2>/dev/null | grep -v -e '^#' -e '^$' | cut -c1-160 | head -40 || true
done
