#!/usr/bin/env bash
# What the edge policies cost: the gateway with every policy ON vs OFF, side by side in one run.
#
# Same setup as gateway_vs_nginx.sh (5 customer-services backends over HTTPS on loopback, GET
# /health, wrk TLS HTTP/1.1 keep-alive then h2load h2, interleaved ABBA rounds after a warm-up,
# medians over rounds), with two gateway processes whose configs differ only in policies:
#
#   ON   `/` route: rate_limit = { rate = 100000000, per = "1s", burst = 100000000 } (never
#        reached by one client, but every request takes a token and gets X-RateLimit-*
#        headers) and client_max_body_size = "1m"; security headers at their defaults (HSTS,
#        CSP, X-Frame-Options, X-Content-Type-Options, X-XSS-Protection, Referrer-Policy,
#        Permissions-Policy; Server removed); [client_ip] trusted_proxies = ["10.9.9.9/32"];
#        [limits] max_connections_per_ip = 10000; a `/static/` route with `cache` (not hit by
#        the load; it makes the shared response cache exist).
#   OFF  no rate_limit; [defaults.security_headers] with every header "" (removed); no
#        trusted proxies; max_connections_per_ip = 0 (no per-IP accounting); the same
#        `/static/` route without `cache`, so both routers are the same.
#
# Two things cannot be turned off and run in both: HSTS (the config has no "off" for it: an
# omitted `hsts` falls back to the built-in one) and the body-size check (client_max_body_size
# defaults to 1m). Upstream Server / X-Powered-By are removed in both.
#
# Prints, per protocol, the medians of req/s, p50, p99 and CPU µs per request for each, the
# ON/OFF ratios, the paired ratios (ON/OFF within each round, median over rounds) and whether
# the goal is met on the paired req/s ratio: policies cost at most 5% of req/s (>= 0.95).
#
#   bash bench/policies.sh                                 # DURATION=10 ROUNDS=4
#   DURATION=5 WARMUP=1 ROUNDS=16 bash bench/policies.sh   # many short rounds: steadier
#   DURATION=5 ROUNDS=2 bash bench/policies.sh             # quick check
#
# Environment (defaults): DURATION=10, WARMUP=2, ROUNDS=4 (even keeps ABBA balanced),
# WORKERS=$(nproc), CONNS=64, WRK_THREADS=2, H2_STREAMS=10, H2_THREADS=1, SKIP_BUILD=0,
# KEEP_WORKDIR=0, PROTOCOLS="h1 h2", GOAL=0.95 (least ON/OFF req/s ratio), and
# ON_POLICIES="rate_limit body headers client_ip conn_limit cache": the policies that ON turns
# on (the others stay as in OFF), to find which one costs, e.g. ON_POLICIES=headers
# (ON_POLICIES=none: both the same, an A/A run that shows the noise); RESTART=1 (0: keep the
# two processes for the whole run instead of restarting both before every round).
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
SKIP_BUILD=${SKIP_BUILD:-0}
PROTOCOLS=${PROTOCOLS:-h1 h2}
RESTART=${RESTART:-1}
GOAL=${GOAL:-0.95}
ALL_POLICIES="rate_limit body headers client_ip conn_limit cache"
ON_POLICIES=${ON_POLICIES:-$ALL_POLICIES}
BACKENDS=5
. bench/lib.sh

require_positive DURATION ROUNDS WORKERS CONNS WRK_THREADS H2_STREAMS H2_THREADS
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "WARMUP must be a number of seconds" >&2; exit 2; }

ensure_tools wrk:wrk h2load:nghttp2-client curl:curl
build_release customer-services gateway

setup_workdir gw-policies
issue_certs
start_backends
free_port OFF_PORT 28443
free_port ON_PORT 28444
free_port OFF_ADMIN 29901
free_port ON_ADMIN 29902

# ---------------------------------------------------------------------------------------------
# The two configs: lib.sh's bench config plus the policies. policy_config ON|OFF POLICIES
# sets route_keys and extra_toml with the named policies on and the others off.
on_policy() { [[ " $2 " == *" $1 "* ]]; }
policy_config() { # $1 = the policies that are on (a list; "" = none)
  local on=$1
  route_keys="" extra_toml=""
  if on_policy rate_limit "$on"; then
    route_keys+='rate_limit = { rate = 100000000, per = "1s", burst = 100000000 }
'
  fi
  if on_policy body "$on"; then
    route_keys+='client_max_body_size = "1m"
'
  fi
  extra_toml+='[[routes]]
prefix = "/static/"
upstream = "customer"
'
  if on_policy cache "$on"; then
    extra_toml+='cache = { max_object_size = "1m" }
[cache]
max_size = "64m"
'
  fi
  if on_policy client_ip "$on"; then
    extra_toml+='[client_ip]
trusted_proxies = ["10.9.9.9/32"]
'
  fi
  if on_policy conn_limit "$on"; then
    extra_toml+='[limits]
max_connections_per_ip = 10000
'
  else
    extra_toml+='[limits]
max_connections_per_ip = 0
'
  fi
  if ! on_policy headers "$on"; then
    extra_toml+='[defaults.security_headers]
# hsts cannot be turned off: left out, the built-in one applies.
content_security_policy = ""
x_frame_options = ""
x_content_type_options = ""
x_xss_protection = ""
referrer_policy = ""
permissions_policy = ""
server = ""
'
  fi
}
[ "$ON_POLICIES" != none ] || ON_POLICIES=""   # none: an A/A run, for the noise
for p in $ON_POLICIES; do
  on_policy "$p" "$ALL_POLICIES" || die "unknown policy '$p' in ON_POLICIES (known: $ALL_POLICIES)"
done
policy_config "$ON_POLICIES"
write_gateway_config "$work/gateway-on.toml" "$ON_PORT" "$ON_ADMIN" "${route_keys%$'\n'}" "${extra_toml%$'\n'}"
policy_config ""
write_gateway_config "$work/gateway-off.toml" "$OFF_PORT" "$OFF_ADMIN" "${route_keys%$'\n'}" "${extra_toml%$'\n'}"

# Two gateway processes of the same binary can differ by a few percent for as long as they run
# (an A/A run, ON_POLICIES=none, shows it), so by default both are restarted before every
# round (RESTART=1; the warm-up refills their upstream keep-alive pools), in alternating start
# order: the instance difference then varies between rounds instead of biasing one config.
OFF_PID= ON_PID=
start_both() { # $1 = round number (odd: OFF starts first)
  stop_pid "$OFF_PID"; stop_pid "$ON_PID"
  local first=off second=on cfg
  if (( ${1:-1} % 2 == 0 )); then first=on second=off; fi
  for cfg in $first $second; do
    if [ "$cfg" = off ]; then
      start_gateway "$work/gateway-off.toml" "$OFF_PORT" "$work/gateway-off.log" warn
      OFF_PID=$started_pid
    else
      start_gateway "$work/gateway-on.toml" "$ON_PORT" "$work/gateway-on.log" warn
      ON_PID=$started_pid
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

proxy_pids() { if [ "$1" = on ]; then echo "$ON_PID"; else echo "$OFF_PID"; fi; }
port_of() { if [ "$1" = on ]; then echo "$ON_PORT"; else echo "$OFF_PORT"; fi; }
alive_or_die() {
  kill -0 "$(proxy_pids "$1")" 2>/dev/null && return
  echo "gateway ($1) died during the benchmark; log tail:" >&2
  tail -n 30 "$work/gateway-$1.log" >&2
  exit 1
}

# Response header names of GET /health through each (what the policies add or remove).
header_names() {
  curl -s -D - -o /dev/null --max-time 5 --cacert "$certs/ca.crt" "https://127.0.0.1:$(port_of "$1")/health" |
    tr -d '\r' | awk -F: 'NR > 1 && NF > 1 {printf "%s%s", sep, tolower($1); sep = " "}'
}

# ---------------------------------------------------------------------------------------------
# Run
machine_line
echo "== gateway $(gateway_revision), $WORKERS worker threads, two processes: policies ON (:$ON_PORT) and OFF (:$OFF_PORT)"
echo "== ON: ${ON_POLICIES:-none (the same config as OFF: an A/A run)}"
echo "== $BACKENDS customer-services backends on 127.0.0.1:${backend_ports[*]} (HTTPS, LOG_LEVEL=warn), TLS verified, least_conn, keepalive 256; gateways at LOG_LEVEL=warn"
echo "== load: HTTP/1.1 over TLS, keep-alive: $(wrk_cmd "$DURATION" PORT)"
echo "          h2 over TLS:                    $(h2_cmd "$DURATION" PORT)"
echo "== $ROUNDS measured rounds of ${DURATION}s per config and protocol, interleaved ABBA, each after ${WARMUP}s of warm-up; figures are medians over rounds"
if [ "$RESTART" = 1 ]; then echo "== both gateways restarted before every round (fresh processes, alternating start order)"; fi
echo "== response headers of GET /health:"
echo "   ON:  $(header_names on)"
echo "   OFF: $(header_names off)"
echo

mode=policies
summary=()
for proto in $PROTOCOLS; do
  echo "running $proto..." >&2
  run_pair "$proto" off on
  echo "### $(proto_title "$proto"): policies OFF vs ON"
  pair_table "$proto" off on
  # The verdict uses the paired ratio (median of the rounds' ON/OFF): this VM has slow spells
  # of tens of seconds that move both configs' medians.
  verdict=$(goal "$p_rps" '>=' "$GOAL")
  printf '%-15s %12s   (paired: req/s cost %s%%, CPU/req cost %s%%)\n' goal "$verdict" \
    "$(awk -v r="${p_rps%x}" 'BEGIN {printf "%.1f", (1 - r) * 100}')" \
    "$(awk -v r="${p_cpu%x}" 'BEGIN {printf "%.1f", (r - 1) * 100}')"
  echo "  latency $(proto_latency "$proto"); CPU = utime+stime of the gateway process over the measured round / requests completed;"
  echo "  RSS after this protocol's rounds; non-2xx and errors are totals over all rounds"
  echo
  summary+=("$(printf '%-30s req/s on/off %.3fx  CPU/req on/off %.3fx (paired medians)  p99 on/off %s  -> %s' "$(proto_title "$proto")" "${p_rps%x}" "${p_cpu%x}" "$r_p99" "$verdict")")
done

echo "summary (goal: policies cost <= $(awk -v g="$GOAL" 'BEGIN {printf "%g", (1 - g) * 100}')% of req/s):"
printf '  %s\n' "${summary[@]}"
echo
for cfg in on off; do summarize_gateway_log "$work/gateway-$cfg.log" "gateway ($cfg) log"; done
keep_workdir gw-policies
