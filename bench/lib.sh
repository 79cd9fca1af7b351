# Shared pieces of the bench scripts (gateway_vs_nginx.sh, policies.sh, profile.sh).
# Sourced from the repository root, after the script has set its knobs (DURATION, WARMUP,
# WORKERS, CONNS, WRK_THREADS, H2_STREAMS, H2_THREADS, SKIP_BUILD, BACKENDS).
#
# A script that measures with `round`, `cpu_ticks` or `mem_kb` defines three hooks for the
# names it gives its proxies:
#   proxy_pids NAME    -> the pids whose CPU and memory count for NAME
#   port_of NAME       -> the HTTPS port the load goes to
#   alive_or_die NAME  -> exits with a log tail when NAME's process is gone

die() { echo "error: $*" >&2; exit 1; }

# Each named variable must hold a positive integer.
require_positive() {
  local v
  for v in "$@"; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "$v must be a positive integer" >&2; exit 2; }
  done
}

# ensure_tools CMD:PACKAGE ... installs (apt-get) the packages whose command is missing.
ensure_tools() {
  local need=() spec cmd pkg
  for spec in "$@"; do
    cmd=${spec%%:*} pkg=${spec#*:}
    command -v "$cmd" >/dev/null || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
  done
  ((${#need[@]})) || return 0
  echo "installing ${need[*]} with apt-get..." >&2
  ((EUID == 0)) || die "missing ${need[*]}; run as root or install them"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
    apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
  }
}

# build_release PACKAGE... : the static release binaries (unless SKIP_BUILD=1); sets $bin.
target=x86_64-unknown-linux-gnu
bin=target/$target/release
build_release() {
  local args=() p
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    echo "building release binaries (static)..." >&2
    for p in "$@"; do args+=(-p "$p"); done
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target $target "${args[@]}"
  fi
  for p in "$@"; do
    [ -x "$bin/$p" ] || die "$bin/$p not found (build it, or unset SKIP_BUILD)"
  done
}

# ---------------------------------------------------------------------------------------------
# Housekeeping: setup_workdir NAME makes $work; every pid added to `pids` is stopped on exit.
pids=()
work=
setup_workdir() {
  work=$(mktemp -d "/tmp/$1.XXXXXX")
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}
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
  [ -z "$work" ] || rm -rf "$work"
  exit $rc
}

# keep_workdir PREFIX: with KEEP_WORKDIR=1, copies $work (minus backend data) to /tmp/PREFIX-DATE.
keep_workdir() {
  [ "${KEEP_WORKDIR:-0}" = 1 ] || return 0
  local keep
  keep=/tmp/$1-$(date +%Y%m%d-%H%M%S)
  cp -r "$work" "$keep" && rm -rf "$keep/data-"* || return 0
  # The kept configs name the kept files (certificates), so they run as they are.
  local f
  for f in "$keep"/*.toml "$keep"/*.conf "$keep"/*.cfg; do
    [ -f "$f" ] && sed -i "s#$work#$keep#g" "$f"
  done
  echo "configs, logs and raw load-tool output kept in $keep"
}

# Stops one process we started (TERM, then KILL after 10 s).
stop_pid() {
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

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

# Waits (up to 10 s) until nothing listens on 127.0.0.1:$1 (a process just stopped may hold it).
wait_port_free() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null || return 0
    sleep 0.1
  done
  echo "port $1 still in use:" >&2
  ss -ltnp "sport = :$1" >&2 2>/dev/null || true
  exit 1
}

# A throwaway CA and a server certificate for localhost / 127.0.0.1 in $work/certs.
issue_certs() {
  certs=$work/certs
  cargo run -q -p service-kit --features pki --example issue_certs -- "$certs" localhost 127.0.0.1 >/dev/null
}

# BACKENDS customer-services over HTTPS, access logs off (LOG_LEVEL=warn); sets backend_ports
# and backend_pids.
backend_ports=()
backend_pids=()
start_backends() {
  local next=28001 i port log
  for i in $(seq "$BACKENDS"); do
    free_port port $next
    next=$((port + 1))
    log=$work/backend-$i.log
    LOG_LEVEL=warn "$bin/customer-services" --host 127.0.0.1 --port "$port" --instance-id "c-$i" \
      --tls-cert "$certs/server.crt" --tls-key "$certs/server.key" --data-dir "$work/data-$i" --no-auth \
      >"$log" 2>&1 &
    pids+=($!)
    backend_pids+=($!)
    backend_ports+=("$port")
  done
  for i in $(seq "$BACKENDS"); do
    wait_ready "https://127.0.0.1:${backend_ports[i - 1]}/health" "${pids[i - 1]}" "$work/backend-$i.log" "backend c-$i"
  done
}

# ---------------------------------------------------------------------------------------------
# The gateway
#
# write_gateway_config FILE PORT ADMIN_PORT [ROUTE_KEYS] [EXTRA_TOML]: the bench config (one
# route `/` to the backends over verified TLS, least_conn, keepalive 256). ROUTE_KEYS go into
# the `/` route's table, EXTRA_TOML (whole tables, more [[routes]]) at the end; the variable
# runtime_extra (if set) adds lines to [runtime].
write_gateway_config() {
  local file=$1 port=$2 admin=$3 route_keys=${4:-} extra=${5:-} servers="" p
  for p in "${backend_ports[@]}"; do servers+="{ address = \"127.0.0.1:$p\" }, "; done
  {
    echo "[runtime]"
    echo "worker_threads = $WORKERS"
    echo "watch_config = false"
    [ -z "${runtime_extra:-}" ] || printf '%s\n' "$runtime_extra"
    echo "[admin]"
    echo "listen = \"127.0.0.1:$admin\""
    echo "[https]"
    echo "listen = [\"127.0.0.1:$port\"]"
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
    echo "servers = [${servers%, }]"
    echo "[[routes]]"
    echo "prefix = \"/\""
    echo "upstream = \"customer\""
    [ -z "$route_keys" ] || printf '%s\n' "$route_keys"
    [ -z "$extra" ] || printf '%s\n' "$extra"
  } >"$file"
}

# start_gateway CONFIG PORT LOG LEVEL [BINARY]: checks the config, starts the gateway, waits
# until /health answers through it; sets $started_pid. LEVEL=info (access logs) sends stdout
# (one JSON line per request) to /dev/null and stderr to LOG; otherwise both go to LOG.
started_pid=
start_gateway() {
  local config=$1 port=$2 log=$3 level=$4 gw=${5:-$bin/gateway}
  wait_port_free "$port"
  "$gw" check --config "$config" >"$log.check" 2>&1 || {
    echo "gateway rejected its config:" >&2; cat "$log.check" "$config" >&2; exit 1; }
  if [ "$level" = info ]; then
    LOG_LEVEL=info "$gw" --config "$config" >/dev/null 2>>"$log" &
  else
    LOG_LEVEL=$level "$gw" --config "$config" >>"$log" 2>&1 &
  fi
  started_pid=$!
  pids+=("$started_pid")
  wait_ready "https://127.0.0.1:$port/health" "$started_pid" "$log" gateway
}

# The gateway's log (warn and above, JSON lines), grouped by level and message.
summarize_gateway_log() { # $1 = log file, $2 = title
  echo "$2: $(wc -l <"$1") lines (warn and above), by level and message:"
  [ -s "$1" ] || return 0
  sed 's/.*"level":"\([A-Z]*\)".*"message":"\([^"]*\)".*/\1 \2/' "$1" |
    sed 's/([0-9a-f]\{8,\})/(...)/g' | sort | uniq -c | sort -rn | head -n 15
}

# ---------------------------------------------------------------------------------------------
# NGINX, configured as the gateway's bench config in NGINX terms (see README.md): nginx_setup
# once NGX_PORT is chosen, then start_nginx MODE (access logs off|on) sets NGX_PID.
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
nginx_setup() { # after NGX_PORT is chosen
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  nginx_version=$("$NGINX" -v 2>&1 | grep -o '[0-9][0-9.]*' | head -1)
  if version_ge "$nginx_version" 1.25.1; then
    ngx_listen="listen 127.0.0.1:$NGX_PORT ssl;
        http2 on;"
  else
    ngx_listen="listen 127.0.0.1:$NGX_PORT ssl http2;"
  fi
}

write_nginx_config() { # $1 = file, $2 = access log mode (off|on)
  local dir=$work/nginx access p servers=""
  mkdir -p "$dir/tmp"
  if [ "$2" = on ]; then access="access_log /dev/null combined;"; else access="access_log off;"; fi
  for p in "${backend_ports[@]}"; do servers+="        server 127.0.0.1:$p;
"; done
  # Like for like: the response headers the gateway adds by default (policy::headers::builtin;
  # it also drops Server, NGINX sends "Server: nginx"). NGINX_SECURITY_HEADERS=0 leaves them
  # out, as runs before this option did.
  local ngx_headers=""
  if [ "${NGINX_SECURITY_HEADERS:-1}" = 1 ]; then
    ngx_headers='        add_header Strict-Transport-Security "max-age=31536000; includeSubDomains" always;
        add_header Content-Security-Policy "default-src '"'self'; frame-ancestors 'none'"'" always;
        add_header X-Frame-Options "DENY" always;
        add_header X-Content-Type-Options "nosniff" always;
        add_header X-XSS-Protection "1; mode=block" always;
        add_header Referrer-Policy "strict-origin-when-cross-origin" always;
        add_header Permissions-Policy "geolocation=(), microphone=(), camera=()" always;
        proxy_hide_header X-Powered-By;
'
  fi
  cat >"$1" <<EOF
# Generated by bench/lib.sh: the gateway's bench config, in NGINX terms.
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
$ngx_headers
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

NGX_PID=
start_nginx() { # $1 = access log mode (off|on)
  write_nginx_config "$work/nginx.conf" "$1"
  "$NGINX" -t -q -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" \
    >"$work/nginx-check.log" 2>&1 || {
    echo "nginx rejected its config:" >&2; cat "$work/nginx-check.log" >&2; exit 1; }
  "$NGINX" -c "$work/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" -g 'daemon off;' \
    >>"$work/nginx/error.log" 2>&1 &
  NGX_PID=$!
  pids+=("$NGX_PID")
  wait_ready "https://127.0.0.1:$NGX_PORT/health" "$NGX_PID" "$work/nginx/error.log" nginx
}

# ---------------------------------------------------------------------------------------------
# Measurements
cpu_ticks() { # utime+stime of NAME's processes (all threads), in clock ticks
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
CLK_TCK=$(getconf CLK_TCK)

wrk_cmd() { echo "wrk -t$WRK_THREADS -c$CONNS -d${1}s --latency https://127.0.0.1:$2/health"; }
h2_cmd() { echo "h2load -c$CONNS -m$H2_STREAMS -t$H2_THREADS -D $1 https://127.0.0.1:$2/health"; }

# One measured round -> appends "rps p50ms p99ms cpu_us_per_req requests non2xx errors" to $4.
round() { # $1 = proto (h1|h2), $2 = proxy name, $3 = round number, $4 = results file
  local proto=$1 proxy=$2 port out t0 t1 reqs rps p50 p99 non2xx errs cpu
  port=$(port_of "$proxy")
  out=$work/${mode:-run}-$proto-$proxy-$3.out   # $mode: what the caller is running, if anything
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
ratio() { # $1 / $2 as "0.97x"; $3 = decimals (2)
  awk -v a="$1" -v b="$2" -v d="${3:-2}" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.*fx", d, a / b }'
}
goal() { # $1 = ratio value, $2 = op (>= or <=), $3 = bound
  awk -v r="${1%x}" -v op="$2" -v b="$3" 'BEGIN {
    if (r == "n/a") { print "n/a"; exit }
    ok = (op == ">=") ? (r + 0 >= b) : (r + 0 <= b); printf "%s %s%s", ok ? "MET" : "MISSED", op, b }'
}

# Two gateways (or configs) side by side: run_pair PROTO A B runs ROUNDS measured rounds of
# each, interleaved ABBA (A B, B A, A B, ...), into $work/res-PROTO-A and -B; pair_table
# PROTO A B prints their medians and the B/A ratios of the medians (3 decimals), left in
# r_rps, r_p50, r_p99 and r_cpu, then the paired ratios: B/A within each round (B and A of a
# round ran back to back) and their medians, left in p_rps and p_cpu.
run_pair() {
  local proto=$1 a=$2 b=$3 r name order
  local res=$work/res-$proto
  : >"$res-$a"; : >"$res-$b"
  for r in $(seq "$ROUNDS"); do
    # A script may restart its processes here (before_round ROUND), e.g. so that the
    # difference between two process instances does not count as a difference between configs.
    if declare -F before_round >/dev/null; then before_round "$r"; fi
    if ((r % 2)); then order=("$a" "$b"); else order=("$b" "$a"); fi
    for name in "${order[@]}"; do round "$proto" "$name" "$r" "$res-$name"; done
  done
}
pair_table() {
  local proto=$1 a=$2 b=$3 f name
  local res=$work/res-$proto
  printf '%-15s %12s %9s %9s %11s %8s %9s %7s\n' "" "req/s" "p50 ms" "p99 ms" "CPU µs/req" "RSS MB" "non-2xx" errors
  for name in "$a" "$b"; do
    f=$res-$name
    printf '%-15s %12.0f %9.3f %9.3f %11.1f %8.1f %9s %7s\n' "$name" \
      "$(median 1 "$f")" "$(median 2 "$f")" "$(median 3 "$f")" "$(median 4 "$f")" \
      "$(awk -v k="$(mem_kb "$name" VmRSS)" 'BEGIN {print k / 1024}')" "$(total 6 "$f")" "$(total 7 "$f")"
  done
  r_rps=$(ratio "$(median 1 "$res-$b")" "$(median 1 "$res-$a")" 3)
  r_p50=$(ratio "$(median 2 "$res-$b")" "$(median 2 "$res-$a")" 3)
  r_p99=$(ratio "$(median 3 "$res-$b")" "$(median 3 "$res-$a")" 3)
  r_cpu=$(ratio "$(median 4 "$res-$b")" "$(median 4 "$res-$a")" 3)
  printf '%-15s %12s %9s %9s %11s\n' "$b/$a" "$r_rps" "$r_p50" "$r_p99" "$r_cpu"
  # Paired: the median over rounds of B/A within each round (B and A ran back to back), which
  # cancels slow spells of the machine that last longer than a round.
  paste -d' ' "$res-$b" "$res-$a" | awk '{printf "%.4f %.4f\n", $1 / $8, $4 / $11}' >"$res-paired"
  p_rps="$(median 1 "$res-paired")x" p_cpu="$(median 2 "$res-paired")x"
  printf '%-15s %12s %9s %9s %11s\n' "$b/$a paired" "$(printf '%.3fx' "${p_rps%x}")" "" "" "$(printf '%.3fx' "${p_cpu%x}")"
  echo "  req/s $b/$a per round: $(awk '{printf "%s%.3f", sep, $1; sep = " "}' "$res-paired")"
  echo "  CPU/req $b/$a per round: $(awk '{printf "%s%.3f", sep, $2; sep = " "}' "$res-paired")"
}
proto_title() { if [ "$1" = h1 ]; then echo "TLS HTTP/1.1 keep-alive (wrk)"; else echo "TLS h2 (h2load, -m$H2_STREAMS)"; fi; }
proto_latency() { if [ "$1" = h1 ]; then echo "(wrk --latency)"; else echo "(h2load --log-file percentiles)"; fi; }

machine_line() {
  local cpu_model
  cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
  echo "== machine: $(nproc) cores ($cpu_model), kernel $(uname -r), load average $(cut -d' ' -f1-3 /proc/loadavg)"
}
# Short commit of the checkout, +uncommitted when gateway/ or service-kit/ differ from it.
gateway_revision() {
  echo "$(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- gateway service-kit 2>/dev/null || echo '+uncommitted')"
}
