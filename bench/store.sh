#!/usr/bin/env bash
# The store's figures: one read (GET /api/v1/admin/users/ID) and one write (POST
# /api/v1/admin/users) of admin-server through the gateway, 5 replicas, on SQLite (one shared
# file, WAL) and on PostgreSQL (one local server, default durability: every commit is
# flushed), in the same run. Everything on loopback: compare within the run.
#
#   bash bench/store.sh                        # DURATION=10 CONNS=32
#   SKIP_BUILD=1 DURATION=5 bash bench/store.sh
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-32}
WRK_THREADS=${WRK_THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
BACKENDS=5
# shellcheck source=bench/lib.sh
source bench/lib.sh
require_positive DURATION CONNS WRK_THREADS WORKERS

ensure_tools wrk:wrk curl:curl psql:postgresql-client
PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$PG_BIN/postgres" ] || { ensure_tools pg_ctlcluster:postgresql; PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); }
build_release gateway admin-server
setup_workdir store-bench
issue_certs
chmod 755 "$work"

# PostgreSQL refuses root: run it as nobody then.
as_pg() { if ((EUID == 0)); then runuser -u nobody -- "$@"; else "$@"; fi; }
mkdir -p "$work/pg"
((EUID != 0)) || chown nobody "$work/pg"
as_pg "$PG_BIN/initdb" -D "$work/pg" -U postgres --auth=trust -E UTF8 >/dev/null
free_port PG_PORT 25432
as_pg "$PG_BIN/postgres" -D "$work/pg" -k "$work/pg" -p "$PG_PORT" \
  -c listen_addresses=127.0.0.1 -c max_connections=200 >"$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" && break
  sleep 0.1
done
psql -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "CREATE DATABASE admin" >/dev/null

# start_stack KIND: 5 admin-server replicas on KIND's store and the gateway in front; sets
# GW_PORT and stack_pids.
stack_pids=()
start_stack() {
  local kind=$1 next=28101 i port store=()
  backend_ports=()
  stack_pids=()
  if [ "$kind" = postgres ]; then
    store=(--database-url "postgres://postgres@127.0.0.1:$PG_PORT/admin" --database-pool-size 10)
  fi
  for i in $(seq "$BACKENDS"); do
    free_port port $next
    next=$((port + 1))
    LOG_LEVEL=warn "$bin/admin-server" --host 127.0.0.1 --port "$port" --instance-id "a-$i" \
      --tls-cert "$certs/server.crt" --tls-key "$certs/server.key" --data-dir "$work/sqlite" \
      --no-auth "${store[@]}" >"$work/$kind-admin-$i.log" 2>&1 &
    pids+=($!)
    stack_pids+=($!)
    backend_ports+=("$port")
  done
  for i in $(seq "$BACKENDS"); do
    wait_ready "https://127.0.0.1:${backend_ports[i - 1]}/ready" "${stack_pids[i - 1]}" "$work/$kind-admin-$i.log" "admin-server a-$i ($kind)"
  done
  free_port GW_PORT 28443
  free_port GW_ADMIN 28990
  write_gateway_config "$work/$kind-gateway.toml" "$GW_PORT" "$GW_ADMIN"
  start_gateway "$work/$kind-gateway.toml" "$GW_PORT" "$work/$kind-gateway.log" warn
  stack_pids+=("$started_pid")
}
stop_stack() {
  local p
  for p in "${stack_pids[@]}"; do stop_pid "$p"; done
}

# measure KIND ENDPOINT: one warm-up and one measured wrk run; appends a table row.
results=$work/results
measure() {
  local kind=$1 endpoint=$2 out=$work/$1-$2.out url script=() rps p50 p99 non2xx errs
  if [ "$endpoint" = read ]; then
    url="https://127.0.0.1:$GW_PORT/api/v1/admin/users/$seed_id"
  else
    url="https://127.0.0.1:$GW_PORT/api/v1/admin/users"
    # Emails unique across threads and runs (the warm-up writes too): a UNIQUE conflict
    # would be a 409, not a write.
    cat >"$work/$kind-write.lua" <<LUA
local next_id = 0
local run = os.time() .. "-" .. math.floor(os.clock() * 1000000)
function setup(thread) thread:set("tid", next_id); next_id = next_id + 1 end
local n = 0
request = function()
  n = n + 1
  local body = string.format('{"email":"$kind-%s-%d-%d@bench.test","name":"Bench","role":"viewer"}', run, tid, n)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end
LUA
    script=(-s "$work/$kind-write.lua")
  fi
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${WARMUP}s" "${script[@]}" "$url" >/dev/null 2>&1 || true
  sleep 1
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "${script[@]}" "$url" >"$out" 2>&1 ||
    { cat "$out" >&2; die "wrk failed ($kind $endpoint)"; }
  rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
  p50=$(awk '$1 == "50%" {print $2}' "$out" | to_ms)
  p99=$(awk '$1 == "99%" {print $2}' "$out" | to_ms)
  non2xx=$(awk '/Non-2xx or 3xx responses/ {print $NF}' "$out")
  errs=$(awk '/Socket errors/ {gsub(/[^0-9]+/, " "); s = 0; for (i = 1; i <= NF; i++) s += $i; print s}' "$out")
  printf '%-9s %-6s %10.0f %9.3f %9.3f %8s %7s\n' "$kind" "$endpoint" "$rps" "$p50" "$p99" "${non2xx:-0}" "${errs:-0}" >>"$results"
  echo "  $kind $endpoint: $rps req/s, p99 $p99 ms" >&2
}

: >"$results"
for kind in sqlite postgres; do
  echo "== $kind: 5 admin-server replicas behind the gateway" >&2
  start_stack "$kind"
  seed_id=$(curl -s --cacert "$certs/ca.crt" -H 'content-type: application/json' \
    -d "{\"email\":\"seed-$kind@bench.test\",\"name\":\"Seed\",\"role\":\"viewer\"}" \
    "https://127.0.0.1:$GW_PORT/api/v1/admin/users" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  [ -n "$seed_id" ] || die "could not create the seed user on $kind"
  measure "$kind" read
  measure "$kind" write
  stop_stack
done

machine_line
echo "== admin-server x5 through the gateway, wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s, TLS HTTP/1.1 keep-alive"
printf '%-9s %-6s %10s %9s %9s %8s %7s\n' store op req/s "p50 ms" "p99 ms" non-2xx errors
sort -k2,2 -k1,1r "$results"
