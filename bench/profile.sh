#!/usr/bin/env bash
# Where the gateway spends CPU under the bench load (see PROFILE.md for a run's findings).
#
# Same setup as gateway_vs_nginx.sh: 5 customer-services backends over HTTPS on loopback (the
# static release build), the gateway in front of them (LOG_LEVEL=warn), and
#   wrk -t2 -c64 -d15s --latency https://127.0.0.1:PORT/health
# through it. The gateway is a separate build with symbols (target/release/gateway, not
# static: the workspace profile strips release binaries):
#   CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 cargo build --release -p gateway
# 3 s into the load, `perf record` samples the gateway process for PERF_SECONDS (cpu-clock:
# this VM exposes no hardware PMU), twice: with frame-pointer call chains (`-g`: kernel stacks
# are complete, Rust stacks shallow) for the flat profile and the kernel time by syscall, then
# with DWARF unwinding for callers in user space (who allocates, who copies). Then, with NGINX
# set up as in gateway_vs_nginx.sh, the same load through each proxy under `perf stat`:
# syscalls, context switches and CPU per request, gateway vs NGINX.
#
# Prints: self time grouped (TLS / hyper / our proxy code / allocator / kernel by syscall /
# tokio / ...), the flat top (`perf report --no-children`), allocator and memcpy time by
# calling component, inclusive time of a few frames, and the per-request counts.
#
#   bash bench/profile.sh
#   SKIP_BUILD=1 KEEP_WORKDIR=1 bash bench/profile.sh
#
#   LOAD=h2 bash bench/profile.sh      # h2load -c64 -m10 instead of wrk
#
# Environment (defaults): LOAD=h1 (wrk; h2: h2load -cCONNS -mH2_STREAMS, H2_STREAMS=10),
# DURATION=15 (load seconds), PERF_SECONDS=10, PERF_FREQ=999 (Hz),
# WORKERS=$(nproc), CONNS=64, WRK_THREADS=2, DWARF=1 (0: skip the DWARF pass), NGINX_COUNTS=1
# (0: no gateway-vs-NGINX syscall counts; NGINX is installed with apt-get if missing), SKIP_BUILD=0,
# PROFILE_BIN (a gateway with symbols to use instead of building one), KEEP_WORKDIR=0 (1: keep
# perf.data files and reports in /tmp/gw-profile-DATE).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15}
PERF_SECONDS=${PERF_SECONDS:-10}
PERF_FREQ=${PERF_FREQ:-999}
WORKERS=${WORKERS:-$(nproc)}
CONNS=${CONNS:-64}
WRK_THREADS=${WRK_THREADS:-2}
DWARF=${DWARF:-1}
NGINX_COUNTS=${NGINX_COUNTS:-1}
SKIP_BUILD=${SKIP_BUILD:-0}
WARMUP=2 H2_THREADS=1
H2_STREAMS=${H2_STREAMS:-10}
LOAD=${LOAD:-h1}
BACKENDS=5
. bench/lib.sh

require_positive DURATION PERF_SECONDS PERF_FREQ WORKERS CONNS WRK_THREADS H2_STREAMS
case $LOAD in h1|h2) ;; *) die "LOAD must be h1 (wrk) or h2 (h2load)";; esac

# The load (wrk for h1, h2load for h2) and what it reports: requests done and req/s.
load_cmd() { if [ "$LOAD" = h1 ]; then wrk_cmd "$@"; else h2_cmd "$@"; fi; }
load_requests() {
  if [ "$LOAD" = h1 ]; then awk '/requests in/ {print $1}' "$1"
  else awk '/^requests:/ {print $8}' "$1"; fi
}
load_rps() {
  if [ "$LOAD" = h1 ]; then awk '/^Requests\/sec/ {printf "%.0f", $2}' "$1"
  else awk '/^finished in/ {printf "%.0f", $4}' "$1"; fi
}
((DURATION >= PERF_SECONDS + 4)) || die "DURATION must exceed PERF_SECONDS by 4 s at least"

ensure_tools wrk:wrk h2load:nghttp2-client curl:curl perf:linux-perf
[ "$NGINX_COUNTS" != 1 ] || ensure_tools nginx:nginx
build_release customer-services
profiling=${PROFILE_BIN:-target/release/gateway}
if [ "$SKIP_BUILD" != 1 ] && [ -z "${PROFILE_BIN:-}" ]; then
  echo "building the gateway with symbols (target/release/gateway)..." >&2
  CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=1 cargo build -q --release -p gateway
fi
[ -x "$profiling" ] || die "$profiling not found (build it, or unset SKIP_BUILD)"
file -L "$profiling" 2>/dev/null | grep -q 'not stripped' ||
  echo "warning: $profiling looks stripped; build it as above" >&2
perf stat -e cpu-clock true >/dev/null 2>&1 || die "perf cannot sample here (perf_event_open refused)"

setup_workdir gw-profile
# A copy: any other `cargo build --release -p gateway` rewrites target/release/gateway (stripped).
cp "$profiling" "$work/gateway-symbols"
profiling=$work/gateway-symbols
issue_certs
start_backends
free_port GW_PORT 28443
free_port NGX_PORT 28444
free_port GW_ADMIN 29901
write_gateway_config "$work/gateway.toml" "$GW_PORT" "$GW_ADMIN"
start_gateway "$work/gateway.toml" "$GW_PORT" "$work/gateway.log" warn "$profiling"
GW_PID=$started_pid
if [ "$NGINX_COUNTS" = 1 ]; then
  nginx_setup
  start_nginx off
fi
proxy_pids() { # $1 = gateway|nginx (master + workers)
  if [ "$1" = gateway ]; then echo "$GW_PID"; else echo "$NGX_PID" $(pgrep -P "$NGX_PID" || true); fi
}
port_of() { if [ "$1" = gateway ]; then echo "$GW_PORT"; else echo "$NGX_PORT"; fi; }

# perf_pass NAME PROXY CALLGRAPH...: load PROXY (gateway|nginx) for DURATION, sample its
# processes for PERF_SECONDS from 3 s in.
perf_pass() {
  local name=$1 proxy=$2 t0 t1 reqs port list
  shift 2
  port=$(port_of "$proxy")
  list=$(proxy_pids "$proxy" | tr ' ' ',')
  timeout $((WARMUP + 30)) $(load_cmd "$WARMUP" "$port") >/dev/null 2>&1 || true
  t0=$(cpu_ticks "$proxy")
  timeout $((DURATION + 30)) $(load_cmd "$DURATION" "$port") >"$work/wrk-$name.out" 2>&1 &
  local wrk=$!
  sleep 3
  perf record -q -F "$PERF_FREQ" "$@" -p "$list" -o "$work/perf-$name.data" -- sleep "$PERF_SECONDS" \
    >"$work/perf-$name.log" 2>&1 || { cat "$work/perf-$name.log" >&2; die "perf record failed"; }
  wait "$wrk" || { cat "$work/wrk-$name.out" >&2; die "wrk failed"; }
  t1=$(cpu_ticks "$proxy")
  reqs=$(load_requests "$work/wrk-$name.out")
  echo "  $name pass ($proxy): $(load_rps "$work/wrk-$name.out") req/s," \
    "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1e6 / hz / n}') µs CPU/req" \
    "(perf running for ${PERF_SECONDS}s of it), $(perf report -i "$work/perf-$name.data" --stdio 2>/dev/null | awk '/^# Samples:/ {print $3; exit}') samples"
}

# Syscalls, context switches and CPU per request through $1 (gateway|nginx): perf stat over
# the whole wrk run (DURATION s), divided by the requests wrk completed. Writes
# "event count_per_request" lines to $work/counts-$1.
SYSCALLS="read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait epoll_ctl futex getrandom sched_yield madvise"
count_pass() {
  local name=$1 port events="raw_syscalls:sys_enter,context-switches,cpu-migrations" sc reqs list
  local u0 s0 u1 s1 b0 b1 m0 m1 n0 n1 i0 i1
  port=$(port_of "$name")
  for sc in $SYSCALLS; do events+=",syscalls:sys_enter_$sc"; done
  list=$(proxy_pids "$name" | tr ' ' ',')
  timeout $((WARMUP + 30)) $(load_cmd "$WARMUP" "$port") >/dev/null 2>&1 || true
  # Counting covers the whole wrk run: from 0.5 s before it to 0.5 s after (idle: ~nothing).
  perf stat -x, -e "$events" -p "$list" -o "$work/stat-$name.csv" -- sleep $((DURATION + 1)) &
  local perf=$!
  sleep 0.5
  read -r u0 s0 < <(user_sys_ticks $(proxy_pids "$name"))
  b0=$(user_sys_ticks "${backend_pids[@]}" | awk '{print $1 + $2}')
  read -r m0 n0 i0 < <(machine_ticks)
  # wrk's own CPU: the children times of the shell that waited for it.
  timeout $((DURATION + 30)) sh -c "$(load_cmd "$DURATION" "$port") >'$work/wrk-count-$name.out' 2>&1; rc=\$?
    sed 's/^.*) //' /proc/\$\$/stat | awk '{print \$14 + \$15}' >'$work/wrk-count-$name.cpu'; exit \$rc" ||
    { cat "$work/wrk-count-$name.out" >&2; die "wrk failed against $name"; }
  read -r m1 n1 i1 < <(machine_ticks)
  read -r u1 s1 < <(user_sys_ticks $(proxy_pids "$name"))
  b1=$(user_sys_ticks "${backend_pids[@]}" | awk '{print $1 + $2}')
  wait "$perf" || die "perf stat failed ($work/stat-$name.csv)"
  reqs=$(load_requests "$work/wrk-count-$name.out")
  {
    echo "req/s $(load_rps "$work/wrk-count-$name.out")"
    per_req() { awk -v d="$2" -v hz="$CLK_TCK" -v n="$reqs" -v k="$1" 'BEGIN {printf "%s %.1f\n", k, d * 1e6 / hz / n}'; }
    per_req proxy_cpu_us $((u1 - u0 + s1 - s0))
    per_req proxy_user_us $((u1 - u0))
    per_req proxy_sys_us $((s1 - s0))
    per_req backends_cpu_us $((b1 - b0))
    per_req wrk_cpu_us "$(cat "$work/wrk-count-$name.cpu")"
    per_req machine_busy_us $((m1 - m0))
    per_req niced_us $((n1 - n0))
    per_req machine_idle_us $((i1 - i0))
    echo "response_bytes $(curl -s -o /dev/null -w '%{size_header} + %{size_download}' --cacert "$certs/ca.crt" "https://127.0.0.1:$port/health" | tr -d ' ')"
    awk -F, -v n="$reqs" '$1 ~ /^[0-9]+$/ {e = $3; sub(/^syscalls:sys_enter_/, "", e); sub(/^raw_syscalls:sys_enter$/, "syscalls", e); printf "%s %.2f\n", e, $1 / n}' "$work/stat-$name.csv"
  } >"$work/counts-$name"
}
machine_ticks() { # all CPUs, from /proc/stat: busy (not idle/iowait), of which niced, idle
  awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9, $3, $5 + $6; exit}' /proc/stat
}
user_sys_ticks() { # utime and stime summed over the pids (all threads)
  local u=0 s=0 p a b
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    read -r a b < <(sed 's/^.*) //' "/proc/$p/stat" | awk '{print $12, $13}')
    u=$((u + a)) s=$((s + b))
  done
  echo "$u $s"
}

# perf script of $1 -> one line per sample: "kernel|user<TAB>group<TAB>caller group".
# Kernel samples are grouped by the syscall they ran under (the frame below do_syscall_64),
# user samples by the leaf symbol; for allocator and memcpy samples the caller group is that
# of the first frame up the stack that belongs to a component (TLS, hyper, proxy, tokio...).
classify() {
  perf script -i "$1" -F ip,sym,dso 2>/dev/null | awk -v by_dso="${2:-}" '
    function group(d, s) {
      if (d ~ /vdso/) return "clock_gettime (vDSO: Instant::now)"
      if (s ~ /aws_lc|aes_|gcm_|ghash|chacha|poly1305|sha[0-9]|^ecp_|bn_|CRYPTO_|EVP_/) return "TLS: aws-lc crypto"
      if (s ~ /rustls/) return "TLS: rustls, tokio-rustls"
      if (s ~ /^_?mi_|malloc|^free|^cfree|realloc|calloc|_int_free|_int_malloc|tcache|__rust_(alloc|dealloc|realloc)|alloc::alloc::/) return "allocator (mimalloc / malloc)"
      if (s ~ /memcpy|memmove|memset|memcmp|bcmp|strlen/) return "libc memcpy/memmove/memset"
      if (s ~ /httparse|hyper::proto::h1::role|hyper::proto::h1::encode|hyper::proto::h1::decode|hyper::proto::h2|^h2::|<h2::/) return "hyper: HTTP parsing/encoding"
      if (s ~ /hyper_util|hyper::|http_body|want::/) return "hyper: dispatch, conn state, channels"
      if (s ~ /http::/) return "http: HeaderMap, Uri, HeaderValue"
      if (s ~ /uuid|getrandom|rand::|rand_core/) return "proxy: request id (uuid v4)"
      if (s ~ /prometheus/) return "proxy: metrics (prometheus)"
      if (s ~ /tracing/) return "proxy: tracing (log filter)"
      if (s ~ /gateway::|service_kit::/) return "proxy: gateway code (handle, forward, pools)"
      if (s ~ /tokio|mio::/) return "tokio: scheduler, I/O driver, timers"
      if (s ~ /^bytes::|<bytes::/) return "bytes (buffers, refcounts)"
      if (s ~ /^(__GI___|__libc_|__)?(read|write|writev|readv|recv|send|epoll|syscall|futex)/) return "libc syscall wrappers"
      if (s ~ /fmt/) return "formatting (core::fmt)"
      if (s ~ /dashmap|governor|arc_swap|parking_lot|std::sync|futex/) return "locks, arc-swap, maps"
      return "other user space (core, std, alloc glue)"
    }
    function component(g) {
      return g !~ /^(allocator|libc memcpy|other user|libc syscall|bytes|formatting)/
    }
    function flush(   k, sc, g, c, j) {
      if (n == 0) return
      if (D[1] ~ /kernel/) {
        sc = ""
        for (k = 2; k <= n; k++) if (S[k] == "do_syscall_64") { sc = S[k - 1]; break }
        if (sc == "exit_to_user_mode_loop" || sc == "syscall_exit_to_user_mode") g = "kernel: rescheduling on syscall return"
        else if (sc != "") {
          gsub(/^(__x64_sys_|__do_sys_|__se_sys_|__sys_|ksys_|do_)/, "", sc); sub(/^sys_/, "", sc)
          g = "kernel: syscall " sc
        } else {
          g = "kernel: interrupts, faults, other"
          for (k = 1; k <= n; k++) if (S[k] ~ /page_fault/) { g = "kernel: page faults"; break }
        }
        printf "kernel\t%s\t-\n", g
      } else if (by_dso != "") {
        d = D[1]; sub(/^.*\//, "", d)
        if (d ~ /libcrypto|libssl/) g = "TLS: OpenSSL (" d ")"
        else if (d ~ /^libc/ && S[1] ~ /malloc|free|_int_|tcache|realloc|calloc/) g = "allocator (glibc malloc)"
        else if (d ~ /^libc/ && S[1] ~ /mem|str/) g = "libc memcpy/memmove/memset"
        else g = d
        printf "user\t%s\t-\n", g
      } else {
        g = group(D[1], S[1]); c = "-"
        if (g ~ /^(allocator|libc memcpy)/) {
          c = "unknown (stack not unwound)"
          for (j = 2; j <= n; j++) { cg = group(D[j], S[j]); if (component(cg)) { c = cg; break } }
        }
        printf "user\t%s\t%s\n", g, c
      }
      n = 0
    }
    /^[ \t]*$/ { flush(); next }
    /^[ \t]+[0-9a-f]+ / {
      line = $0; sub(/^[ \t]+[0-9a-f]+ /, "", line)
      dso = line; sub(/^.* \(/, "", dso); sub(/\)$/, "", dso)
      sym = line; sub(/ \([^()]*\)$/, "", sym); sub(/\+0x[0-9a-f]+$/, "", sym)
      n++; S[n] = sym; D[n] = dso
      next
    }
    END { flush() }'
}

# Percentages of the lines of stdin by field $1 (tab separated): "pct  key".
tally() {
  awk -F'\t' -v f="$1" '{c[$f]++; t++} END {for (k in c) printf "%6.2f%%  %s\n", 100 * c[k] / t, k}' | sort -rn
}

machine_line
echo "== gateway $(gateway_revision) built with symbols (${PROFILE_BIN:-target/release/gateway}), $WORKERS worker threads, LOG_LEVEL=warn"
echo "== $BACKENDS customer-services backends on 127.0.0.1:${backend_ports[*]} (HTTPS); load: $(load_cmd "$DURATION" PORT)"
echo "== perf record -F $PERF_FREQ -p GATEWAY_PID -- sleep $PERF_SECONDS, from 3 s into the load (event: cpu-clock)"
perf_pass fp gateway -g
[ "$DWARF" != 1 ] || perf_pass dwarf gateway --call-graph dwarf,32768
if [ "$NGINX_COUNTS" = 1 ]; then
  perf_pass nginx nginx -g
  echo "  perf stat passes (syscall counts; tracepoints slow both proxies a little)..."
  count_pass gateway
  count_pass nginx
fi
echo

classify "$work/perf-fp.data" >"$work/samples-fp.tsv"
echo "### Where the gateway's CPU goes (frame-pointer pass, $(wc -l <"$work/samples-fp.tsv") samples)"
echo "kernel vs user space:"
tally 1 <"$work/samples-fp.tsv"
echo "by group (kernel time by the syscall it ran under; user time by the leaf symbol's component):"
tally 2 <"$work/samples-fp.tsv"
echo

echo "### Top symbols, self time (perf report --no-children --stdio)"
perf report -i "$work/perf-fp.data" --no-children --stdio -g none --percent-limit 0.3 2>/dev/null |
  grep -v '^#' | grep -v '^$' | head -60
echo

if [ "$DWARF" = 1 ]; then
  classify "$work/perf-dwarf.data" >"$work/samples-dwarf.tsv"
  echo "### Allocator and memcpy time by calling component (DWARF pass, % of all samples)"
  awk -F'\t' '{t++} $3 != "-" {c[$2 " <- " $3]++} END {for (k in c) printf "%6.2f%%  %s\n", 100 * c[k] / t, k}' \
    "$work/samples-dwarf.tsv" | sort -rn | head -20
  echo
  echo "### Inclusive time of chosen frames (DWARF pass; % of samples with the frame on the stack)"
  perf report -i "$work/perf-dwarf.data" --children --stdio -g none --sort symbol --percent-limit 0.2 2>/dev/null |
    awk '/^ *[0-9.]+%/' >"$work/children.txt"
  for pat in 'gateway::proxy::handle' 'gateway::proxy::forward' 'gateway::proxy::upstream_headers' \
    'gateway::proxy::strip_hop_by_hop' 'gateway::policy::headers' 'RequestId::generate' \
    'gateway::upstream::' 'prometheus::' 'hyper::proto::h1::dispatch' 'hyper::proto::h1::role' \
    'hyper::client' 'rustls::conn' 'tokio_rustls' 'tokio::runtime::scheduler' \
    'tokio::runtime::io' 'tokio::runtime::time' 'entry_SYSCALL_64'; do
    awk -v p="$pat" 'index($0, p) {printf "%7s  %s\n", $1, p; found = 1; exit} END {if (!found) printf "%7s  %s\n", "-", p}' "$work/children.txt"
  done
  echo
fi

if [ "$NGINX_COUNTS" = 1 ]; then
  classify "$work/perf-nginx.data" nginx >"$work/samples-nginx.tsv"
  echo "### For comparison: NGINX workers under the same load (frame-pointer pass, $(wc -l <"$work/samples-nginx.tsv") samples)"
  tally 1 <"$work/samples-nginx.tsv"
  tally 2 <"$work/samples-nginx.tsv" | head -20
  echo

  echo "### Per request through each proxy (perf stat over a ${DURATION}s wrk run; syscalls by name, only those seen)"
  printf '%-18s %10s %10s\n' "" gateway nginx
  awk 'FNR == 1 {f++} {v[$1, f] = $2; if (!seen[$1]++) order[++n] = $1}
    END {for (i = 1; i <= n; i++) { k = order[i]; a = v[k, 1] + 0; b = v[k, 2] + 0
      if (k ~ /^(req\/s|syscalls|context-switches|cpu-migrations)$/ || k ~ /_us$|bytes/ || a > 0.005 || b > 0.005)
        printf "%-18s %10s %10s\n", k, v[k, 1], v[k, 2] } }' "$work/counts-gateway" "$work/counts-nginx"
  echo "  (CPU in µs per request, measured under perf stat, which slows syscalls a little; nginx: master + workers;"
  echo "   backends: the 5 customer-services; wrk: the load generator; machine: all $(nproc) CPUs from /proc/stat, busy"
  echo "   = anything not idle, niced = niced processes (e.g. builds running meanwhile: the run is disturbed when"
  echo "   this is not ~0), idle = capacity left unused; response_bytes: head + body of one GET /health)"
  echo
fi
keep_workdir gw-profile
