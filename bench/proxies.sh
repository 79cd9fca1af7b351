#!/usr/bin/env bash
# The gateway, NGINX and HAProxy side by side in one run: every combination of upstream kind
# (plain HTTP/1.1 or TLS), client protocol (TLS HTTP/1.1 with wrk, h2 with h2load) and client
# connections (CONNS_LIST, default 64 and 512), in interleaved rounds (the order of the three
# proxies rotates every round). Prints per combination the median req/s, p50, p99, CPU per
# request and RSS of each proxy, the gateway/NGINX and gateway/HAProxy ratios of the medians
# with their spread (the lowest and highest per-round ratio), and whether the goals hold.
#
# The upstreams are minimal: one NGINX worker answering `200 ok` on 5 plain and 5 TLS ports,
# so the proxies' own work dominates. The proxies: least_conn over the 5, keep-alive pools of
# 256, access logs off, TLS 1.2/1.3 with the same certificate, the gateway's 7 security
# response headers added by all three, X-Forwarded-* / X-Real-IP / X-Request-Id set by all.
#
#   bash bench/proxies.sh                                # DURATION=5 ROUNDS=3
#   SKIP_BUILD=1 DURATION=3 ROUNDS=2 CONNS_LIST=64 UPSTREAMS=plain bash bench/proxies.sh
#
# Environment (defaults): DURATION=5, WARMUP=1, ROUNDS=3, WORKERS=$(nproc) (gateway
# worker_threads = nginx worker_processes = haproxy nbthread), CONNS_LIST="64 512",
# UPSTREAMS="plain tls", PROTOS="h1 h2", WRK_THREADS=2, H2_STREAMS=10, H2_THREADS=1,
# SKIP_BUILD=0, KEEP_WORKDIR=0, MAXCONN (unset; N: each upstream server takes N requests at
# once, the rest queue: the gateway's `max_conns` + `queue`, HAProxy's `maxconn` + its queue;
# NGINX has no queue, so it stays unlimited), UPSTREAM_PROTO=http1 (http2: the gateway and
# HAProxy speak HTTP/2 to the origin, h2c on plain upstreams and ALPN h2 on TLS ones; NGINX
# cannot proxy over HTTP/2 and stays on HTTP/1.1), MAX_STREAMS (unset: the gateway, like
# HAProxy, follows the origin's SETTINGS, 1024 streams: one connection per worker and origin
# port; N, with UPSTREAM_PROTO=http2: the gateway opens another once N are in flight on each). Run as root on Debian: installs nginx, haproxy, wrk,
# nghttp2-client and curl when missing. Traffic goes only to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-$(nproc)}
CONNS_LIST=${CONNS_LIST:-64 512}
UPSTREAMS=${UPSTREAMS:-plain tls}
PROTOS=${PROTOS:-h1 h2}
WRK_THREADS=${WRK_THREADS:-2}
H2_STREAMS=${H2_STREAMS:-10}
H2_THREADS=${H2_THREADS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
MAXCONN=${MAXCONN:-}
UPSTREAM_PROTO=${UPSTREAM_PROTO:-http1}
MAX_STREAMS=${MAX_STREAMS:-}
case $UPSTREAM_PROTO in http1 | http2) ;; *) echo "UPSTREAM_PROTO must be http1 or http2" >&2; exit 2 ;; esac
CONNS=64
BACKENDS=5
. bench/lib.sh
require_positive DURATION ROUNDS WORKERS WRK_THREADS H2_STREAMS H2_THREADS

ensure_tools nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client curl:curl
build_release gateway
setup_workdir proxies
certs=$work/certs
mkdir -p "$certs"
# A throwaway CA and an ECDSA P-256 server certificate (the usual choice for speed).
openssl ecparam -name prime256v1 -genkey -noout -out "$certs/ca.key" 2>/dev/null
openssl req -x509 -new -key "$certs/ca.key" -subj "/CN=bench CA" -days 2 -out "$certs/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$certs/server.key" 2>/dev/null
openssl req -new -key "$certs/server.key" -subj "/CN=localhost" -out "$certs/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$certs/ext.cnf"
openssl x509 -req -in "$certs/server.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" \
  -CAcreateserial -days 2 -extfile "$certs/ext.cnf" -out "$certs/server.crt" 2>/dev/null
cat "$certs/server.crt" "$certs/server.key" >"$certs/haproxy.pem"

NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

# ---------------------------------------------------------------------------------------------
# The origin: one NGINX worker, 5 plain + 5 TLS ports, `200 ok` to everything; with
# UPSTREAM_PROTO=http2 5 more of each speaking HTTP/2 (h2c with prior knowledge, TLS + ALPN h2).
plain_ports=() tls_ports=() plain_h2_ports=() tls_h2_ports=()
next=28101
for _ in $(seq $BACKENDS); do free_port bp $next; plain_ports+=("$bp"); next=$((bp + 1)); done
for _ in $(seq $BACKENDS); do free_port bp $next; tls_ports+=("$bp"); next=$((bp + 1)); done
if [ "$UPSTREAM_PROTO" = http2 ]; then
  for _ in $(seq $BACKENDS); do free_port bp $next; plain_h2_ports+=("$bp"); next=$((bp + 1)); done
  for _ in $(seq $BACKENDS); do free_port bp $next; tls_h2_ports+=("$bp"); next=$((bp + 1)); done
fi
mkdir -p "$work/origin/tmp"
{
  echo "worker_processes 1; pid $work/origin/nginx.pid; error_log $work/origin/error.log warn;"
  echo "events { worker_connections 16384; }"
  echo "http { access_log off; keepalive_requests 10000000; keepalive_timeout 120s;"
  echo "  client_body_temp_path $work/origin/tmp/body; proxy_temp_path $work/origin/tmp/proxy;"
  echo "  fastcgi_temp_path $work/origin/tmp/f; uwsgi_temp_path $work/origin/tmp/u; scgi_temp_path $work/origin/tmp/s;"
  for p in "${plain_ports[@]}"; do echo "  server { listen 127.0.0.1:$p; location / { return 200 \"ok\\n\"; } }"; done
  for p in "${tls_ports[@]}"; do
    echo "  server { listen 127.0.0.1:$p ssl; ssl_certificate $certs/server.crt; ssl_certificate_key $certs/server.key;"
    echo "    ssl_session_cache shared:S:10m; location / { return 200 \"ok\\n\"; } }"
  done
  [ ${#plain_h2_ports[@]} -gt 0 ] && echo "  http2_max_concurrent_streams 1024;"
  for p in "${plain_h2_ports[@]}"; do echo "  server { listen 127.0.0.1:$p http2; location / { return 200 \"ok\\n\"; } }"; done
  for p in "${tls_h2_ports[@]}"; do
    echo "  server { listen 127.0.0.1:$p ssl http2; ssl_certificate $certs/server.crt; ssl_certificate_key $certs/server.key;"
    echo "    ssl_session_cache shared:S:10m; location / { return 200 \"ok\\n\"; } }"
  done
  echo "}"
} >"$work/origin.conf"
"$NGINX" -c "$work/origin.conf" -p "$work/origin" -e "$work/origin/error.log" -g 'daemon off;' >>"$work/origin/error.log" 2>&1 &
pids+=($!)
ORIGIN_PID=$!
wait_ready "http://127.0.0.1:${plain_ports[0]}/" "$ORIGIN_PID" "$work/origin/error.log" origin
wait_ready "https://127.0.0.1:${tls_ports[0]}/" "$ORIGIN_PID" "$work/origin/error.log" origin

free_port GW_PORT 28443
free_port NGX_PORT 28444
free_port HAP_PORT 28445
free_port GW_ADMIN 29901
nginx_setup

SECURITY_HEADERS=(
  'Strict-Transport-Security|max-age=31536000; includeSubDomains'
  "Content-Security-Policy|default-src 'self'; frame-ancestors 'none'"
  'X-Frame-Options|DENY'
  'X-Content-Type-Options|nosniff'
  'X-XSS-Protection|1; mode=block'
  'Referrer-Policy|strict-origin-when-cross-origin'
  'Permissions-Policy|geolocation=(), microphone=(), camera=()'
)

# The origin ports the gateway and HAProxy use for upstream kind $1 (plain|tls).
upstream_ports() {
  case $1-$UPSTREAM_PROTO in
    plain-http1) echo "${plain_ports[@]}" ;;
    tls-http1) echo "${tls_ports[@]}" ;;
    plain-http2) echo "${plain_h2_ports[@]}" ;;
    tls-http2) echo "${tls_h2_ports[@]}" ;;
  esac
}

write_gateway() { # $1 = plain|tls
  local servers="" p limit=""
  [ -n "$MAXCONN" ] && limit=", max_conns = $MAXCONN"
  for p in $(upstream_ports "$1"); do servers+="{ address = \"127.0.0.1:$p\"$limit }, "; done
  {
    printf '[runtime]\nworker_threads = %s\nwatch_config = false\n' "$WORKERS"
    printf '[admin]\nlisten = "127.0.0.1:%s"\n' "$GW_ADMIN"
    printf '[https]\nlisten = ["127.0.0.1:%s"]\ncert = "%s"\nkey = "%s"\n' "$GW_PORT" "$certs/server.crt" "$certs/server.key"
    [ "$1" = tls ] && printf '[upstream_tls]\nca = "%s"\n' "$certs/ca.crt"
    printf '[upstreams.origin]\nalgorithm = "least_conn"\nkeepalive = 256\nkeepalive_timeout = "60s"\n'
    [ -n "$MAXCONN" ] && printf 'queue = { size = 100000, timeout = "30s" }\n'
    if [ "$1" = tls ]; then printf 'server_name = "localhost"\n'; else printf 'tls = false\n'; fi
    printf 'protocol = "%s"\n' "$UPSTREAM_PROTO"
    [ -n "$MAX_STREAMS" ] && printf 'max_streams = %s\n' "$MAX_STREAMS"
    printf 'connect_timeout = "2s"\nread_timeout = "30s"\nservers = [%s]\n' "${servers%, }"
    printf '[[routes]]\nprefix = "/"\nupstream = "origin"\n'
  } >"$work/gateway.toml"
}

write_nginx() { # $1 = plain|tls
  if [ "$1" = tls ]; then backend_ports=("${tls_ports[@]}"); else backend_ports=("${plain_ports[@]}"); fi
  write_nginx_config "$work/nginx.conf" off
  if [ "$1" = plain ]; then
    sed -i 's#proxy_pass https://backends;#proxy_pass http://backends;#; /proxy_ssl_/d' "$work/nginx.conf"
  fi
}

write_haproxy() { # $1 = plain|tls
  local i=0 p server_opts="" h
  local alpn=http/1.1
  [ "$UPSTREAM_PROTO" = http2 ] && alpn=h2
  [ "$1" = tls ] && server_opts=" ssl verify required ca-file $certs/ca.crt sni str(localhost) alpn $alpn"
  [ "$1-$UPSTREAM_PROTO" = plain-http2 ] && server_opts=" proto h2"
  [ -n "$MAXCONN" ] && server_opts+=" maxconn $MAXCONN"
  {
    printf 'global\n  nbthread %s\n  maxconn 8000\n' "$WORKERS"
    printf 'defaults\n  mode http\n  timeout connect 2s\n  timeout client 75s\n  timeout server 30s\n  timeout queue 30s\n'
    printf '  timeout http-keep-alive 75s\n  option http-keep-alive\n  http-reuse always\n'
    printf 'frontend fe\n  bind 127.0.0.1:%s ssl crt %s alpn h2,http/1.1\n' "$HAP_PORT" "$certs/haproxy.pem"
    printf '  option forwardfor\n  http-request set-header X-Forwarded-Proto https\n'
    printf '  http-request set-header X-Forwarded-Host %%[req.hdr(host)]\n'
    printf '  http-request set-header X-Real-IP %%[src]\n  http-request set-header X-Request-Id %%[uuid]\n'
    for h in "${SECURITY_HEADERS[@]}"; do printf '  http-response set-header %s "%s"\n' "${h%%|*}" "${h#*|}"; done
    printf '  http-response del-header X-Powered-By\n  default_backend be\n'
    printf 'backend be\n  balance leastconn\n'
    for p in $(upstream_ports "$1"); do i=$((i + 1)); printf '  server s%s 127.0.0.1:%s%s\n' "$i" "$p" "$server_opts"; done
  } >"$work/haproxy.cfg"
}

GW_PID= NGX_PID= HAP_PID=
start_all() { # $1 = plain|tls
  write_gateway "$1"
  start_gateway "$work/gateway.toml" "$GW_PORT" "$work/gateway.log" warn
  GW_PID=$started_pid
  write_nginx "$1"
  "$NGINX" -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" -g 'daemon off;' >>"$work/nginx/error.log" 2>&1 &
  NGX_PID=$!; pids+=("$NGX_PID")
  wait_ready "https://127.0.0.1:$NGX_PORT/" "$NGX_PID" "$work/nginx/error.log" nginx
  write_haproxy "$1"
  "$HAPROXY" -c -q -f "$work/haproxy.cfg" >"$work/haproxy-check.log" 2>&1 || { cat "$work/haproxy-check.log" >&2; die "haproxy rejected its config"; }
  "$HAPROXY" -db -f "$work/haproxy.cfg" >>"$work/haproxy.log" 2>&1 &
  HAP_PID=$!; pids+=("$HAP_PID")
  wait_ready "https://127.0.0.1:$HAP_PORT/" "$HAP_PID" "$work/haproxy.log" haproxy
}
stop_all() { stop_pid "$GW_PID"; stop_pid "$NGX_PID"; stop_pid "$HAP_PID"; }

# Callbacks of lib.sh's `round`.
proxy_pids() {
  case $1 in
    gateway) echo "$GW_PID" ;;
    nginx) echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true) ;;
    haproxy) echo "$HAP_PID" ;;
  esac
}
port_of() { case $1 in gateway) echo "$GW_PORT" ;; nginx) echo "$NGX_PORT" ;; haproxy) echo "$HAP_PORT" ;; esac; }
alive_or_die() {
  local pid
  pid=$(proxy_pids "$1" | cut -d' ' -f1)
  kill -0 "$pid" 2>/dev/null || die "$1 died during the benchmark (logs in $work)"
}
# lib.sh's wrk_cmd / h2_cmd ask for /health; the origin answers every path.

spread() { # per-round ratio of column $1 of files $2 / $3 -> "min-max"
  paste -d' ' "$2" "$3" | awk -v c="$1" '{r = $c / $(c + 7); if (NR == 1 || r < lo) lo = r; if (NR == 1 || r > hi) hi = r}
    END {printf "%.2f-%.2f", lo, hi}'
}

machine_line
echo "== gateway $(gateway_revision), worker_threads $WORKERS; nginx $("$NGINX" -v 2>&1 | grep -o '[0-9][0-9.]*' | head -1), worker_processes $WORKERS; $("$HAPROXY" -v | head -1 | cut -d' ' -f1-3), nbthread $WORKERS"
echo "== origin: one nginx worker answering 200 on 5 plain + 5 TLS ports; the proxies use least_conn, keep-alive 256, access logs off"
[ "$UPSTREAM_PROTO" = http2 ] && echo "== UPSTREAM_PROTO=http2: the gateway (protocol = \"http2\") and HAProxy (proto h2 / alpn h2) speak HTTP/2 to the origin; NGINX cannot and stays on HTTP/1.1"
[ -n "$MAXCONN" ] && echo "== MAXCONN=$MAXCONN: each upstream server takes $MAXCONN requests at once and the rest queue (gateway max_conns + queue, HAProxy maxconn); NGINX has no queue and stays unlimited"
echo "== $ROUNDS rounds of ${DURATION}s (after ${WARMUP}s warm-up) per proxy and cell, proxies in rotating order; figures are medians, ratio spread is min-max of per-round ratios"
for up in $UPSTREAMS; do
  start_all "$up"
  for proto in $PROTOS; do
    for CONNS in $CONNS_LIST; do
      res=$work/res-$up-$proto-$CONNS
      for p in gateway nginx haproxy; do : >"$res-$p"; done
      echo "running upstream=$up proto=$proto c=$CONNS..." >&2
      for r in $(seq "$ROUNDS"); do
        case $((r % 3)) in 1) order=(gateway nginx haproxy) ;; 2) order=(haproxy gateway nginx) ;; 0) order=(nginx haproxy gateway) ;; esac
        for p in "${order[@]}"; do mode=$up-$CONNS round "$proto" "$p" "$r" "$res-$p"; done
      done
      echo "### upstream $up, $(proto_title "$proto"), $CONNS connections"
      printf '%-16s %10s %8s %8s %10s %7s %8s %6s\n' proxy "req/s" "p50 ms" "p99 ms" "CPU µs/req" "RSS MB" non-2xx errors
      for p in gateway nginx haproxy; do
        printf '%-16s %10.0f %8.2f %8.2f %10.1f %7.1f %8s %6s\n' "$p" "$(median 1 "$res-$p")" "$(median 2 "$res-$p")" \
          "$(median 3 "$res-$p")" "$(median 4 "$res-$p")" "$(awk -v k="$(mem_kb "$p" VmRSS)" 'BEGIN {print k / 1024}')" \
          "$(total 6 "$res-$p")" "$(total 7 "$res-$p")"
      done
      for other in nginx haproxy; do
        g=$res-gateway o=$res-$other
        r_rps=$(ratio "$(median 1 "$g")" "$(median 1 "$o")")
        r_p99=$(ratio "$(median 3 "$g")" "$(median 3 "$o")")
        r_cpu=$(ratio "$(median 4 "$g")" "$(median 4 "$o")")
        printf '%-16s %10s %8s %8s %10s   req/s spread %s, CPU spread %s\n' "gateway/$other" "$r_rps" "" "$r_p99" "$r_cpu" \
          "$(spread 1 "$g" "$o")" "$(spread 4 "$g" "$o")"
      done
      printf '%-16s %s; %s; %s; %s\n' goals \
        "req/s vs nginx $(goal "$(ratio "$(median 1 "$res-gateway")" "$(median 1 "$res-nginx")")" '>=' 1.2)" \
        "req/s vs haproxy $(goal "$(ratio "$(median 1 "$res-gateway")" "$(median 1 "$res-haproxy")")" '>=' 1.0)" \
        "p99 vs nginx $(goal "$(ratio "$(median 3 "$res-gateway")" "$(median 3 "$res-nginx")")" '<=' 1.0)" \
        "CPU/req vs nginx $(goal "$(ratio "$(median 4 "$res-gateway")" "$(median 4 "$res-nginx")")" '<=' 0.75)"
      echo
    done
  done
  stop_all
done
summarize_gateway_log "$work/gateway.log" "gateway log"
keep_workdir proxies
