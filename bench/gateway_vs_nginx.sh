#!/usr/bin/env bash
# Gateway vs NGINX, side by side in one run, on one machine.
#
# Starts 5 customer-services backends (HTTPS) on loopback, then the gateway and an NGINX whose
# config is generated to be equivalent (same certificate, same 5 upstreams over verified TLS,
# least_conn, keepalive 256, worker_processes = the gateway's worker threads, same forwarding
# headers), and loads GET /health through each in interleaved rounds (ABBA order: gateway,
# nginx, nginx, gateway, ...): TLS HTTP/1.1 keep-alive with wrk, then h2 with h2load. Prints,
# per protocol, the median over rounds of req/s, p50, p99, CPU per request and memory of each
# proxy, and the gateway/nginx ratios checked against the goals (req/s >= 1.2x, CPU/req <=
# 0.75x, p99 no worse).
#
# Run as root on Debian (installs nginx, wrk, nghttp2-client, curl with apt-get when missing):
#
#   bash bench/gateway_vs_nginx.sh
#   DURATION=5 ROUNDS=2 bash bench/gateway_vs_nginx.sh      # quick check
#   ACCESS_LOGS=both bash bench/gateway_vs_nginx.sh         # also a run with access logs on
#
# Environment (defaults):
#   DURATION=10      seconds per measured round
#   WARMUP=2         seconds of the same load before every measured round (not measured)
#   ROUNDS=3         measured rounds per proxy and protocol
#   WORKERS=$(nproc) gateway worker_threads = nginx worker_processes
#   CONNS=64         client connections (wrk and h2load)
#   WRK_THREADS=2    wrk -t
#   H2_STREAMS=10    h2load -m (concurrent streams per connection)
#   H2_THREADS=1     h2load -t
#   ACCESS_LOGS=off  off: gateway LOG_LEVEL=warn, nginx access_log off
#                    on:  gateway LOG_LEVEL=info (one JSON line per request), nginx
#                         access_log on (combined format); both write to /dev/null
#                    both: the two, one after the other (separate tables)
#   NGINX_SECURITY_HEADERS=1  0: NGINX without the gateway's default security headers
#   SKIP_BUILD=0     1: use the release binaries already in target/ (no cargo build)
#   KEEP_WORKDIR=0   1: copy the generated configs, logs and raw wrk/h2load output to
#                    /tmp/gw-vs-nginx-DATE before cleaning up
#
# Everything (load generators, proxies, backends) shares the machine's cores, so absolute
# numbers are floors; the ratios are what this script is for. Traffic goes only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-$(nproc)}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
H2_STREAMS=${H2_STREAMS:-10}
H2_THREADS=${H2_THREADS:-1}
ACCESS_LOGS=${ACCESS_LOGS:-off}
SKIP_BUILD=${SKIP_BUILD:-0}
BACKENDS=5
. bench/lib.sh

case $ACCESS_LOGS in
  off) modes=(off) ;;
  on) modes=(on) ;;
  both) modes=(off on) ;;
  *) echo "ACCESS_LOGS must be off, on or both (got '$ACCESS_LOGS')" >&2; exit 2 ;;
esac
require_positive DURATION ROUNDS WORKERS CONNS WRK_THREADS H2_STREAMS H2_THREADS
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "WARMUP must be a number of seconds" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------
# Tools
ensure_tools nginx:nginx wrk:wrk h2load:nghttp2-client curl:curl
# Debian's package enables and starts the distribution service on install; it listens on :80
# and is left alone: ours runs from its own config on its own port.

build_release admin-server customer-services gateway

# ---------------------------------------------------------------------------------------------
# Housekeeping (lib.sh): everything started is recorded and stopped on exit.
setup_workdir gw-vs-nginx
issue_certs
start_backends
free_port GW_PORT 28443
free_port NGX_PORT 28444
free_port GW_ADMIN 29901

# ---------------------------------------------------------------------------------------------
# Proxy configs
nginx_setup   # lib.sh: version, listen directive, write_nginx_config, start_nginx

GW_PID=
NGX_PID=
start_proxies() { # $1 = access log mode
  local mode=$1 level
  write_gateway_config "$work/gateway.toml" "$GW_PORT" "$GW_ADMIN"
  if [ "$mode" = on ]; then level=info; else level=warn; fi
  start_gateway "$work/gateway.toml" "$GW_PORT" "$work/gateway.log" "$level"
  GW_PID=$started_pid

  start_nginx "$mode"
}

stop_proxies() { stop_pid "$GW_PID"; stop_pid "$NGX_PID"; }

# ---------------------------------------------------------------------------------------------
# Measurements
proxy_pids() { # $1 = gateway|nginx -> the process and, for nginx, its workers
  if [ "$1" = gateway ]; then echo "$GW_PID"; else echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true); fi
}
alive_or_die() {
  local pid log
  if [ "$1" = gateway ]; then pid=$GW_PID log=$work/gateway.log; else pid=$NGX_PID log=$work/nginx/error.log; fi
  kill -0 "$pid" 2>/dev/null && return
  echo "$1 died during the benchmark; log tail:" >&2; tail -n 30 "$log" >&2; exit 1
}
port_of() { if [ "$1" = gateway ]; then echo "$GW_PORT"; else echo "$NGX_PORT"; fi; }
# round, median, ratio, goal...: lib.sh

# ---------------------------------------------------------------------------------------------
# Run
machine_line
echo "== gateway $(gateway_revision), $WORKERS worker threads; nginx $nginx_version, worker_processes $WORKERS"
echo "== $BACKENDS customer-services backends on 127.0.0.1:${backend_ports[*]} (HTTPS, LOG_LEVEL=warn); both proxies use TLS to them, verified against the bench CA, least_conn, keepalive 256"
echo "== load: HTTP/1.1 over TLS, keep-alive: $(wrk_cmd "$DURATION" PORT)"
echo "          h2 over TLS:                    $(h2_cmd "$DURATION" PORT)"
echo "== $ROUNDS measured rounds of ${DURATION}s per proxy and protocol, interleaved ABBA, each after ${WARMUP}s of warm-up; figures are medians over rounds"
echo

for mode in "${modes[@]}"; do
  start_proxies "$mode"
  if [ "$mode" = on ]; then
    logs_desc="access logs ON: gateway LOG_LEVEL=info, stdout to /dev/null; nginx access_log /dev/null combined"
  else
    logs_desc="access logs OFF: gateway LOG_LEVEL=warn; nginx access_log off"
  fi
  idle_gw=$(mem_kb gateway VmRSS) idle_ngx=$(mem_kb nginx VmRSS)
  for proto in h1 h2; do
    res=$work/res-$mode-$proto
    : >"$res-gateway"; : >"$res-nginx"
    echo "running $proto ($logs_desc)..." >&2
    for r in $(seq "$ROUNDS"); do
      if ((r % 2)); then order=(gateway nginx); else order=(nginx gateway); fi
      for proxy in "${order[@]}"; do round "$proto" "$proxy" "$r" "$res-$proxy"; done
    done
    for proxy in gateway nginx; do
      eval "rss_$proxy=\$(mem_kb $proxy VmRSS) pss_$proxy=\$(mem_kb $proxy Pss)"
    done
    if [ "$proto" = h1 ]; then title="TLS HTTP/1.1 keep-alive (wrk)"; else title="TLS h2 (h2load, -m$H2_STREAMS)"; fi
    [ "$proto" = h2 ] && lat="(h2load --log-file percentiles)" || lat="(wrk --latency)"
    echo "### $title, $logs_desc"
    printf '%-13s %12s %9s %9s %11s %8s %8s %9s %7s\n' proxy "req/s" "p50 ms" "p99 ms" "CPU µs/req" "RSS MB" "PSS MB" "non-2xx" errors
    for proxy in gateway nginx; do
      f=$res-$proxy
      rss_var=rss_$proxy pss_var=pss_$proxy
      printf '%-13s %12.0f %9.3f %9.3f %11.1f %8.1f %8.1f %9s %7s\n' "$proxy" \
        "$(median 1 "$f")" "$(median 2 "$f")" "$(median 3 "$f")" "$(median 4 "$f")" \
        "$(awk -v k="${!rss_var}" 'BEGIN {print k / 1024}')" "$(awk -v k="${!pss_var}" 'BEGIN {print k / 1024}')" \
        "$(total 6 "$f")" "$(total 7 "$f")"
    done
    g=$res-gateway n=$res-nginx
    r_rps=$(ratio "$(median 1 "$g")" "$(median 1 "$n")")
    r_p50=$(ratio "$(median 2 "$g")" "$(median 2 "$n")")
    r_p99=$(ratio "$(median 3 "$g")" "$(median 3 "$n")")
    r_cpu=$(ratio "$(median 4 "$g")" "$(median 4 "$n")")
    r_rss=$(ratio "$rss_gateway" "$rss_nginx")
    r_pss=$(ratio "$pss_gateway" "$pss_nginx")
    printf '%-13s %12s %9s %9s %11s %8s %8s\n' "gateway/nginx" "$r_rps" "$r_p50" "$r_p99" "$r_cpu" "$r_rss" "$r_pss"
    printf '%-13s %12s %9s %9s %11s\n' goal "$(goal "$r_rps" '>=' 1.2)" "" "$(goal "$r_p99" '<=' 1.0)" "$(goal "$r_cpu" '<=' 0.75)"
    echo "  latency $lat; CPU = utime+stime of the proxy (nginx: master + workers) over the measured round / requests completed;"
    echo "  memory after this protocol's rounds (idle at start: gateway $((idle_gw / 1024)) MB, nginx $((idle_ngx / 1024)) MB RSS); nginx RSS sums master + workers (shared pages counted twice; PSS does not);"
    echo "  non-2xx and errors are totals over all rounds (wrk: socket errors; h2load: errored + timeout)"
    echo
  done
  stop_proxies
done

# What the proxies logged besides access logs (gateway: warn and above, stdout of the
# access-logs-off run and stderr of both; nginx: error.log at warn), grouped by message.
summarize_gateway_log "$work/gateway.log" "gateway log"
echo "nginx error.log: $(wc -l <"$work/nginx/error.log") lines, by message:"
if [ -s "$work/nginx/error.log" ]; then
  sed 's/^[0-9\/]* [0-9:]* //; s/[0-9]*#[0-9]*: \*\?[0-9]* \?//' "$work/nginx/error.log" |
    sort | uniq -c | sort -rn | head -n 15
fi
keep_workdir gw-vs-nginx
