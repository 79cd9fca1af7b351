#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine, then runs every
# test of the workspace with cargo-nextest (installed when missing: its test groups and
# timeouts are part of how the suite runs).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# The store tests start their own PostgreSQL servers (initdb, postgres, psql).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
# The registry test pushes our images to a real registry it starts on loopback.
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
# The gateway's DNS discovery test asks a real DNS server (pebble's challenge test server).
# ...and its ACME tests run pebble itself; the OCSP test uses openssl as responder and client.
command -v pebble-challtestsrv >/dev/null 2>&1 || missing+=(pebble)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v st >/dev/null 2>&1 || command -v pip3 >/dev/null 2>&1 || missing+=(python3-pip)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "note: not root, cannot install ${missing[*]}; tests that need them will say so" >&2
  fi
fi

# PyPI tools the tests run: schemathesis (`st`: the backends fuzzed from their OpenAPI
# documents) and kubernetes-validate (the rendered Kubernetes manifests against the published
# schemas).
pip=$(command -v pip3 || command -v pip || true)
for spec in st:schemathesis kubernetes-validate:kubernetes-validate; do
  cmd=${spec%%:*} pkg=${spec#*:}
  command -v "$cmd" >/dev/null 2>&1 && continue
  if [ -n "$pip" ]; then
    # Debian's own Python refuses system-wide pip installs (PEP 668) unless told otherwise.
    "$pip" install --quiet --disable-pip-version-check "$pkg" 2>/dev/null \
      || "$pip" install --quiet --disable-pip-version-check --break-system-packages "$pkg" \
      || echo "note: pip could not install $pkg; its tests will say so" >&2
    hash -r
  else
    echo "note: no pip (apt-get install python3-pip), cannot install $pkg; its tests will say so" >&2
  fi
done

# devctl's end-to-end tests run the static release binaries in FROM-scratch images; build them
# here, once, so no test waits on a cold LTO build (devctl skips it when they are up to date).
# Under CI (a fresh clone, built once) the images skip the fat LTO that production's get: the
# same code, built in 7.3 min instead of 9.9 on 2 cores. Exported, so devctl's own build in the
# tests finds these binaries up to date. On a workstation the tests share `devctl up`'s build.
if [ -n "${CI:-}" ]; then
  export CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16
fi
echo "== static release binaries for the images (at ${SECONDS} s)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked \
  --target x86_64-unknown-linux-gnu -p admin-server -p customer-services -p gateway

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "installing cargo-nextest (cargo install --locked cargo-nextest)" >&2
  cargo install --locked cargo-nextest
fi

profile=default
[ -n "${CI:-}" ] && profile=ci
echo "== cargo nextest run (at ${SECONDS} s)"
cargo nextest run --workspace --locked --profile "$profile" "$@"
