#!/usr/bin/env bash
# Backend figures: static binary size, idle RSS, and GET /health req/s over HTTPS keep-alive
# (wrk for HTTP/1.1, h2load for h2). Everything runs on loopback; load and server share the
# machine's cores, so req/s is a floor, not a ceiling.
#
#   bash bench/backends.sh            # DURATION=10 CONNS=64 LOG_LEVEL=info by default
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
export LOG_LEVEL=${LOG_LEVEL:-info}

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release --target $target \
  -p admin-server -p customer-services
bin=target/$target/release

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo run -q -p service-kit --features pki --example issue_certs -- "$work/certs" >/dev/null

start() { # name -> prints the bound port
  local name=$1 log="$work/$1.log"
  "$bin/$name" --host 127.0.0.1 --port 0 --instance-id "$name-bench" \
    --tls-cert "$work/certs/server.crt" --tls-key "$work/certs/server.key" \
    --data-dir "$work/data-$name" --no-auth >"$log" 2>&1 &
  echo $! >"$work/$name.pid"
  for _ in $(seq 200); do
    port=$(grep -o '"addr":"127.0.0.1:[0-9]*"' "$log" 2>/dev/null | grep -o '[0-9]*"$' | tr -d '"' || true)
    [ -n "$port" ] && { echo "$port"; return; }
    sleep 0.05
  done
  echo "$name did not start" >&2; cat "$log" >&2; exit 1
}

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

printf '%-18s %10s %10s %10s %12s %12s %10s\n' service "size(MB)" "idle(MB)" "load(MB)" "h1 req/s" "h2 req/s" "h1 p99"
for name in admin-server customer-services; do
  port=$(start $name)
  pid=$(cat "$work/$name.pid")
  sleep 1
  idle=$(rss_kb "$pid")
  url="https://127.0.0.1:$port/health"
  wrk_out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$url")
  h1=$(awk '/Requests\/sec/ {print $2}' <<<"$wrk_out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$wrk_out")
  h2_out=$(h2load -c"$CONNS" -m10 -D"$DURATION" "$url" 2>&1)
  h2=$(awk '/^finished in/ {gsub(",","",$4); print $4}' <<<"$h2_out")
  loaded=$(rss_kb "$pid")
  size=$(stat -c %s "$bin/$name")
  printf '%-18s %10.1f %10.1f %10.1f %12s %12s %10s\n' "$name" \
    "$(echo "$size/1048576" | bc -l)" "$(echo "$idle/1024" | bc -l)" "$(echo "$loaded/1024" | bc -l)" \
    "$h1" "$h2" "$p99"
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
echo "machine: $(nproc) cores; wrk -t2 -c$CONNS -d${DURATION}s; h2load -c$CONNS -m10 -D$DURATION; LOG_LEVEL=$LOG_LEVEL"
