#!/usr/bin/env bash
# Warm `devctl up` (images built) to all healthy, against `docker-compose up -d` on the
# rendered compose file plus waiting for the same containers to be healthy, in interleaved
# rounds. Also: `scale admin 6` to the first request served by admin-6, and image sizes.
# Usage: bash devctl/bench/up_vs_compose.sh [rounds]   (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
cargo build -q -p devctl
devctl=target/debug/devctl
ca=.devctl/certs/ca.crt
now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

$devctl up >/dev/null 2>&1            # builds images once
$devctl down --volumes >/dev/null 2>&1
$devctl render --out .devctl/render >/dev/null
services=$(docker-compose -f compose/docker-compose.yml config --services | grep -v grafana | tr '\n' ' ')
export PROMETHEUS_IMAGE=insightserenity/prometheus:local

wait_compose_healthy() {
  while :; do
    local ids; ids=$(docker-compose -f compose/docker-compose.yml ps -q)
    local bad=0
    for id in $ids; do
      s=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
      case "$s" in "running healthy"|"running none") ;; *) bad=1 ;; esac
    done
    [ "$bad" = 0 ] && [ -n "$ids" ] && return
    sleep 0.2
  done
}

for r in $(seq 1 "$rounds"); do
  t=$(now); $devctl up >/dev/null 2>&1; d=$(elapsed "$t")
  echo "round $r: devctl up (warm, from nothing): ${d}s"
  t=$(now); $devctl up >/dev/null 2>&1; echo "round $r: devctl up (nothing changed): $(elapsed "$t")s"
  $devctl down --volumes >/dev/null 2>&1
  t=$(now)
  # shellcheck disable=SC2086
  docker-compose -f compose/docker-compose.yml up -d $services >/dev/null 2>&1
  wait_compose_healthy
  echo "round $r: docker-compose up -d + wait healthy: $(elapsed "$t")s"
  docker-compose -f compose/docker-compose.yml down -v >/dev/null 2>&1
done

$devctl up >/dev/null 2>&1
t=$(now)
$devctl scale admin 6 >/dev/null 2>&1
until curl -s -D - -o /dev/null --cacert "$ca" https://127.0.0.1:8443/api/v1/admin/health | grep -qi 'x-served-by: admin-6'; do sleep 0.05; done
echo "scale admin 6 -> first request served by admin-6: $(elapsed "$t")s"
$devctl scale admin 5 >/dev/null 2>&1
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep insightserenity
$devctl down --volumes >/dev/null 2>&1
