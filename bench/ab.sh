#!/usr/bin/env bash
# Two gateway builds side by side (A/B), same config, same run: is a change faster?
#
# Same setup and load as gateway_vs_nginx.sh (5 customer-services backends over HTTPS on
# loopback, GET /health, wrk TLS HTTP/1.1 keep-alive then h2load h2, interleaved ABBA rounds
# after a warm-up, medians over rounds); both gateways run the bench config, LOG_LEVEL=warn.
#
#   GATEWAY_B=/tmp/other/gateway bash bench/ab.sh
#   GATEWAY_A=old GATEWAY_B=new NAME_A=glibc NAME_B=mimalloc SKIP_BUILD=1 bash bench/ab.sh
#   GATEWAY_B=target/x86_64-unknown-linux-gnu/release/gateway NAME_A=per_core \
#     NAME_B=stealing RUNTIME_B='model = "work_stealing"' bash bench/ab.sh
#
# Environment (defaults): GATEWAY_A=target/x86_64-unknown-linux-gnu/release/gateway (built
# unless SKIP_BUILD=1), GATEWAY_B (required), NAME_A=a, NAME_B=b, DURATION=10, WARMUP=2,
# ROUNDS=4, WORKERS=$(nproc), CONNS=64, WRK_THREADS=2, H2_STREAMS=10, H2_THREADS=1,
# PROTOCOLS="h1 h2", RUNTIME_A/RUNTIME_B (extra [runtime] lines per side), RESTART=1 (both restarted before every round; 0: one process each for
# the whole run), KEEP_WORKDIR=0.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-4}
WORKERS=${WORKERS:-$(nproc)}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
H2_STREAMS=${H2_STREAMS:-10}
H2_THREADS=${H2_THREADS:-1}
PROTOCOLS=${PROTOCOLS:-h1 h2}
RESTART=${RESTART:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
NAME_A=${NAME_A:-a}
NAME_B=${NAME_B:-b}
RUNTIME_A=${RUNTIME_A:-}
RUNTIME_B=${RUNTIME_B:-}
BACKENDS=5
. bench/lib.sh

require_positive DURATION ROUNDS WORKERS CONNS WRK_THREADS H2_STREAMS H2_THREADS
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "WARMUP must be a number of seconds" >&2; exit 2; }
[ -n "${GATEWAY_B:-}" ] || die "set GATEWAY_B to the gateway binary to compare"
[ "$NAME_A" != "$NAME_B" ] || die "NAME_A and NAME_B must differ"

ensure_tools wrk:wrk h2load:nghttp2-client curl:curl
build_release customer-services gateway
GATEWAY_A=${GATEWAY_A:-$bin/gateway}
for g in "$GATEWAY_A" "$GATEWAY_B"; do [ -x "$g" ] || die "$g is not an executable"; done

setup_workdir gw-ab
# Copies: a build running meanwhile cannot swap the binaries under the run.
cp "$GATEWAY_A" "$work/gateway-a"; cp "$GATEWAY_B" "$work/gateway-b"
issue_certs
start_backends
free_port A_PORT 28443
free_port B_PORT 28444
free_port A_ADMIN 29901
free_port B_ADMIN 29902
runtime_extra=$RUNTIME_A write_gateway_config "$work/gateway-a.toml" "$A_PORT" "$A_ADMIN"
runtime_extra=$RUNTIME_B write_gateway_config "$work/gateway-b.toml" "$B_PORT" "$B_ADMIN"
# Both restarted before every round (RESTART=1), in alternating start order: two processes
# of the same binary can differ by a few percent for as long as they run (see policies.sh).
A_PID= B_PID=
start_both() { # $1 = round number (odd: A starts first)
  stop_pid "$A_PID"; stop_pid "$B_PID"
  local order=(a b) x
  if (( ${1:-1} % 2 == 0 )); then order=(b a); fi
  for x in "${order[@]}"; do
    if [ "$x" = a ]; then
      start_gateway "$work/gateway-a.toml" "$A_PORT" "$work/gateway-$NAME_A.log" warn "$work/gateway-a"
      A_PID=$started_pid
    else
      start_gateway "$work/gateway-b.toml" "$B_PORT" "$work/gateway-$NAME_B.log" warn "$work/gateway-b"
      B_PID=$started_pid
    fi
  done
}
start_both 1
started_round=1
before_round() { # lib.sh's run_pair hook
  [ "$RESTART" = 1 ] || return 0
  (( $1 == started_round )) || start_both "$1"
  started_round=0
}

proxy_pids() { if [ "$1" = "$NAME_A" ]; then echo "$A_PID"; else echo "$B_PID"; fi; }
port_of() { if [ "$1" = "$NAME_A" ]; then echo "$A_PORT"; else echo "$B_PORT"; fi; }
alive_or_die() {
  kill -0 "$(proxy_pids "$1")" 2>/dev/null && return
  echo "gateway $1 died during the benchmark; log tail:" >&2
  tail -n 30 "$work/gateway-$1.log" >&2
  exit 1
}

machine_line
echo "== $NAME_A: $GATEWAY_A ($(stat -c %y "$GATEWAY_A" | cut -d. -f1))"
echo "== $NAME_B: $GATEWAY_B ($(stat -c %y "$GATEWAY_B" | cut -d. -f1))"
echo "== $WORKERS worker threads each; $BACKENDS customer-services backends on 127.0.0.1:${backend_ports[*]} (HTTPS)"
echo "== load: $(wrk_cmd "$DURATION" PORT); $(h2_cmd "$DURATION" PORT)"
echo "== $ROUNDS measured rounds of ${DURATION}s per build and protocol, interleaved ABBA, each after ${WARMUP}s of warm-up; figures are medians over rounds"
echo
mode=ab
for proto in $PROTOCOLS; do
  echo "running $proto..." >&2
  run_pair "$proto" "$NAME_A" "$NAME_B"
  echo "### $(proto_title "$proto"): $NAME_A vs $NAME_B"
  pair_table "$proto" "$NAME_A" "$NAME_B"
  echo
done
for name in "$NAME_A" "$NAME_B"; do summarize_gateway_log "$work/gateway-$name.log" "gateway $name log"; done
keep_workdir gw-ab
