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

case $ACCESS_LOGS in
  off) modes=(off) ;;
  on) modes=(on) ;;
  both) modes=(off on) ;;
  *) echo "ACCESS_LOGS must be off, on or both (got '$ACCESS_LOGS')" >&2; exit 2 ;;
esac
for v in DURATION ROUNDS WORKERS CONNS WRK_THREADS H2_STREAMS H2_THREADS; do
  [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
done
[[ $WARMUP =~ ^[0-9]+$ ]] || { echo "WARMUP must be a number of seconds" >&2; exit 2; }

die() { echo "error: $*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# Tools
need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v curl >/dev/null || need+=(curl)
if ((${#need[@]})); then
  echo "installing ${need[*]} with apt-get..." >&2
  ((EUID == 0)) || die "missing ${need[*]}; run as root or install them"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
  }
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# Debian's package enables and starts the distribution service on install; it listens on :80
# and is left alone: ours runs from its own config on its own port.

target=x86_64-unknown-linux-gnu
bin=target/$target/release
if [ "$SKIP_BUILD" != 1 ]; then
  echo "building release binaries (static)..." >&2
  RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target $target \
    -p admin-server -p customer-services -p gateway
fi
for b in gateway customer-services; do
  [ -x "$bin/$b" ] || die "$bin/$b not found (build it, or unset SKIP_BUILD)"
done

# ---------------------------------------------------------------------------------------------
# Housekeeping: everything started is recorded and stopped on exit.
work=$(mktemp -d /tmp/gw-vs-nginx.XXXXXX)
pids=()
cleanup() {
  local rc=$? p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Sets variable $1 to a free loopback port, searching from $2 and skipping ports already handed
# out (not run in a subshell, so that `taken` is kept).
taken=" "
free_port() {
  local p=$2
  while ((p < 65000)); do
    if [[ $taken != *" $p "* ]] && ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken+="$p "
      printf -v "$1" '%s' "$p"
      return
    fi
    p=$((p + 1))
  done
  die "no free port from $2"
}

# Waits (bounded) until URL answers 200; $2 = pid that must stay alive, $3 = its log.
wait_ready() {
  local url=$1 pid=$2 log=$3 what=$4 code
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { echo "$what exited during start-up; log tail:" >&2; tail -n 30 "$log" >&2; exit 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$certs/ca.crt" "$url" || true)
    [ "$code" = 200 ] && return 0
    sleep 0.1
  done
  echo "$what not ready after 15 s (last status '$code' from $url); log tail:" >&2
  tail -n 30 "$log" >&2
  exit 1
}

certs=$work/certs
cargo run -q -p service-kit --features pki --example issue_certs -- "$certs" localhost 127.0.0.1 >/dev/null

# ---------------------------------------------------------------------------------------------
# Backends: 5 customer-services over HTTPS, access logs off (LOG_LEVEL=warn).
backend_ports=()
next=28001
for i in $(seq "$BACKENDS"); do
  free_port port $next
  next=$((port + 1))
  log=$work/backend-$i.log
  LOG_LEVEL=warn "$bin/customer-services" --host 127.0.0.1 --port "$port" --instance-id "c-$i" \
    --tls-cert "$certs/server.crt" --tls-key "$certs/server.key" --data-dir "$work/data-$i" \
    >"$log" 2>&1 &
  pids+=($!)
  backend_ports+=("$port")
done
for i in $(seq "$BACKENDS"); do
  wait_ready "https://127.0.0.1:${backend_ports[i - 1]}/health" "${pids[i - 1]}" "$work/backend-$i.log" "backend c-$i"
done

free_port GW_PORT 28443
free_port NGX_PORT 28444
free_port GW_ADMIN 29901

# ---------------------------------------------------------------------------------------------
# Proxy configs
write_gateway_config() { # $1 = file
  {
    echo "[runtime]"
    echo "worker_threads = $WORKERS"
    echo "watch_config = false"
    echo "[admin]"
    echo "listen = \"127.0.0.1:$GW_ADMIN\""
    echo "[https]"
    echo "listen = [\"127.0.0.1:$GW_PORT\"]"
    echo "cert = \"$certs/server.crt\""
    echo "key = \"$certs/server.key\""
    echo "[upstream_tls]"
    echo "ca = \"$certs/ca.crt\""
    echo "[upstreams.customer]"
    echo "algorithm = \"least_conn\""
    echo "keepalive = 256"
    echo "keepalive_timeout = \"60s\""
    echo "connect_timeout = \"2s\""
    echo "read_timeout = \"30s\""
    local servers="" p
    for p in "${backend_ports[@]}"; do servers+="{ address = \"127.0.0.1:$p\" }, "; done
    echo "servers = [${servers%, }]"
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"customer\""
  } >"$1"
}

nginx_version=$("$NGINX" -v 2>&1 | grep -o '[0-9][0-9.]*' | head -1)
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
if version_ge "$nginx_version" 1.25.1; then
  ngx_listen="listen 127.0.0.1:$NGX_PORT ssl;
        http2 on;"
else
  ngx_listen="listen 127.0.0.1:$NGX_PORT ssl http2;"
fi

write_nginx_config() { # $1 = file, $2 = access log mode (off|on)
  local dir=$work/nginx access p servers=""
  mkdir -p "$dir/tmp"
  if [ "$2" = on ]; then access="access_log /dev/null combined;"; else access="access_log off;"; fi
  for p in "${backend_ports[@]}"; do servers+="        server 127.0.0.1:$p;
"; done
  cat >"$1" <<EOF
# Generated by bench/gateway_vs_nginx.sh: the gateway's bench config, in NGINX terms.
worker_processes $WORKERS;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events {
    worker_connections 8192;
}
http {
    $access
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # The gateway does not cap requests per connection; NGINX's default (1000) would make it
    # re-handshake with clients and backends every 1000 requests.
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream backends {
        least_conn;
$servers        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }

    server {
        $ngx_listen
        ssl_certificate $certs/server.crt;
        ssl_certificate_key $certs/server.key;
        ssl_protocols TLSv1.2 TLSv1.3;

        location / {
            proxy_pass https://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # The same forwarding headers the gateway sets.
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
            proxy_ssl_trusted_certificate $certs/ca.crt;
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_session_reuse on;
            proxy_connect_timeout 2s;
            proxy_read_timeout 30s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
        }
    }
}
EOF
}

GW_PID=
NGX_PID=
start_proxies() { # $1 = access log mode
  local mode=$1
  write_gateway_config "$work/gateway.toml"
  "$bin/gateway" check --config "$work/gateway.toml" >"$work/gateway-check.log" 2>&1 || {
    echo "gateway rejected its config:" >&2; cat "$work/gateway-check.log" "$work/gateway.toml" >&2; exit 1; }
  if [ "$mode" = on ]; then
    LOG_LEVEL=info "$bin/gateway" --config "$work/gateway.toml" >/dev/null 2>>"$work/gateway.log" &
  else
    LOG_LEVEL=warn "$bin/gateway" --config "$work/gateway.toml" >>"$work/gateway.log" 2>&1 &
  fi
  GW_PID=$!
  pids+=("$GW_PID")
  wait_ready "https://127.0.0.1:$GW_PORT/health" "$GW_PID" "$work/gateway.log" gateway

  write_nginx_config "$work/nginx.conf" "$mode"
  "$NGINX" -t -q -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" \
    >"$work/nginx-check.log" 2>&1 || {
    echo "nginx rejected its config:" >&2; cat "$work/nginx-check.log" >&2; exit 1; }
  "$NGINX" -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" -g 'daemon off;' \
    >>"$work/nginx/error.log" 2>&1 &
  NGX_PID=$!
  pids+=("$NGX_PID")
  wait_ready "https://127.0.0.1:$NGX_PORT/health" "$NGX_PID" "$work/nginx/error.log" nginx
}

stop_proxies() {
  local p
  for p in "$GW_PID" "$NGX_PID"; do
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# ---------------------------------------------------------------------------------------------
# Measurements
proxy_pids() { # $1 = gateway|nginx -> the process and, for nginx, its workers
  if [ "$1" = gateway ]; then echo "$GW_PID"; else echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true); fi
}
cpu_ticks() { # utime+stime of the proxy's processes (all threads), in clock ticks
  local t=0 p
  for p in $(proxy_pids "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo $t
}
mem_kb() { # $2 = VmRSS (from status) or Pss (from smaps_rollup), summed over the processes
  local t=0 p v
  for p in $(proxy_pids "$1"); do
    if [ "$2" = Pss ]; then
      v=$(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)
    else
      v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    fi
    t=$((t + ${v:-0}))
  done
  echo $t
}
alive_or_die() {
  local pid log
  if [ "$1" = gateway ]; then pid=$GW_PID log=$work/gateway.log; else pid=$NGX_PID log=$work/nginx/error.log; fi
  kill -0 "$pid" 2>/dev/null && return
  echo "$1 died during the benchmark; log tail:" >&2; tail -n 30 "$log" >&2; exit 1
}
CLK_TCK=$(getconf CLK_TCK)

port_of() { if [ "$1" = gateway ]; then echo "$GW_PORT"; else echo "$NGX_PORT"; fi; }
wrk_cmd() { echo "wrk -t$WRK_THREADS -c$CONNS -d${1}s --latency https://127.0.0.1:$2/health"; }
h2_cmd() { echo "h2load -c$CONNS -m$H2_STREAMS -t$H2_THREADS -D $1 https://127.0.0.1:$2/health"; }

# One measured round -> appends "rps p50ms p99ms cpu_us_per_req requests non2xx errors" to $4.
round() { # $1 = proto (h1|h2), $2 = proxy, $3 = round number, $4 = results file
  local proto=$1 proxy=$2 port out t0 t1 reqs rps p50 p99 non2xx errs cpu
  port=$(port_of "$proxy")
  out=$work/$mode-$proto-$proxy-$3.out   # $mode: the access-log mode being run
  if [ "$proto" = h1 ]; then
    ((WARMUP == 0)) || timeout $((WARMUP + 30)) $(wrk_cmd "$WARMUP" "$port") >/dev/null 2>&1 || true
    t0=$(cpu_ticks "$proxy")
    timeout $((DURATION + 30)) $(wrk_cmd "$DURATION" "$port") >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed against $proxy"; }
    t1=$(cpu_ticks "$proxy")
    reqs=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50=$(awk '$1 == "50%" {print $2}' "$out" | to_ms)
    p99=$(awk '$1 == "99%" {print $2}' "$out" | to_ms)
    non2xx=$(awk '/Non-2xx or 3xx responses/ {print $NF}' "$out")   # wrk: status >= 400
    errs=$(awk '/Socket errors/ {gsub(/[^0-9]+/, " "); s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' "$out")
  else
    ((WARMUP == 0)) || timeout $((WARMUP + 30)) $(h2_cmd "$WARMUP" "$port") >/dev/null 2>&1 || true
    t0=$(cpu_ticks "$proxy")
    timeout $((DURATION + 30)) $(h2_cmd "$DURATION" "$port") --log-file="$out.log" >"$out" 2>&1 || { cat "$out" >&2; die "h2load failed against $proxy"; }
    t1=$(cpu_ticks "$proxy")
    grep -q '^Application protocol: h2' "$out" || { cat "$out" >&2; die "$proxy did not negotiate h2"; }
    reqs=$(awk '/^requests:/ {gsub(",", ""); print $6}' "$out")   # done
    rps=$(awk '/^finished in/ {print $4}' "$out")
    # --log-file: start (µs since epoch) \t status \t duration (µs); percentiles of durations.
    read -r p50 p99 < <(awk -F'\t' '{print $3}' "$out.log" | sort -n | awk '
      {v[NR] = $1}
      END {
        if (NR == 0) { print "nan nan"; exit }
        i50 = int(NR * 0.50); if (i50 < NR * 0.50) i50++; if (i50 < 1) i50 = 1
        i99 = int(NR * 0.99); if (i99 < NR * 0.99) i99++; if (i99 < 1) i99 = 1
        printf "%.3f %.3f\n", v[i50] / 1000, v[i99] / 1000
      }')
    non2xx=$(awk '/^status codes:/ {gsub(",", ""); print $5 + $7 + $9}' "$out")   # 3xx+4xx+5xx
    errs=$(awk '/^requests:/ {gsub(",", ""); print $12 + $14}' "$out")   # errored + timeout
    rm -f "$out.log"
  fi
  alive_or_die "$proxy"
  [ -n "$reqs" ] && [ "$reqs" -gt 0 ] || { cat "$out" >&2; die "no request completed through $proxy"; }
  cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.2f", d * 1e6 / hz / n}')
  echo "$rps $p50 $p99 $cpu $reqs ${non2xx:-0} ${errs:-0}" >>"$4"
  printf '  %-2s round %d %-7s %10s req/s  p50 %7s ms  p99 %7s ms  %7s µs/req  non-2xx %s  errors %s\n' \
    "$proto" "$3" "$proxy" "$rps" "$p50" "$p99" "$cpu" "${non2xx:-0}" "${errs:-0}" >&2
}
to_ms() { # wrk latency ("812.00us", "1.20ms", "1.01s", "1.00m") -> ms
  awk '{ v = $1 + 0; u = $1; sub(/^[0-9.]+/, "", u)
         if (u == "us") v /= 1000; else if (u == "s") v *= 1000; else if (u == "m") v *= 60000
         printf "%.3f\n", v }'
}
median() { # column $1 of file $2
  awk -v c="$1" '{print $c}' "$2" | sort -g | awk '{v[NR] = $1} END {
    if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
total() { awk -v c="$1" '{s += $c} END {print s + 0}' "$2"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2fx", a / b }'; }
goal() { # $1 = ratio value, $2 = op (>= or <=), $3 = bound
  awk -v r="${1%x}" -v op="$2" -v b="$3" 'BEGIN {
    if (r == "n/a") { print "n/a"; exit }
    ok = (op == ">=") ? (r + 0 >= b) : (r + 0 <= b); printf "%s %s%s", ok ? "MET" : "MISSED", op, b }'
}

# ---------------------------------------------------------------------------------------------
# Run
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
echo "== machine: $(nproc) cores ($cpu_model), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== gateway $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- gateway service-kit 2>/dev/null || echo '+uncommitted'), $WORKERS worker threads; nginx $nginx_version, worker_processes $WORKERS"
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
echo "gateway log: $(wc -l <"$work/gateway.log") lines (warn and above), by level and message:"
if [ -s "$work/gateway.log" ]; then
  sed 's/.*"level":"\([A-Z]*\)".*"message":"\([^"]*\)".*/\1 \2/' "$work/gateway.log" |
    sed 's/([0-9a-f]\{8,\})/(...)/g' | sort | uniq -c | sort -rn | head -n 15
fi
echo "nginx error.log: $(wc -l <"$work/nginx/error.log") lines, by message:"
if [ -s "$work/nginx/error.log" ]; then
  sed 's/^[0-9\/]* [0-9:]* //; s/[0-9]*#[0-9]*: \*\?[0-9]* \?//' "$work/nginx/error.log" |
    sort | uniq -c | sort -rn | head -n 15
fi
if [ "${KEEP_WORKDIR:-0}" = 1 ]; then
  keep=/tmp/gw-vs-nginx-$(date +%Y%m%d-%H%M%S)
  cp -r "$work" "$keep" && rm -rf "$keep/data-"* && echo "configs, logs and raw load-tool output kept in $keep"
fi
