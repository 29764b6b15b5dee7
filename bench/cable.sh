#!/usr/bin/env bash
# Cable benchmarks on loopback: broadcast latency to 1,000 subscribers and
# resident memory per idle connection with 10,000 connections. Each run
# starts a fresh release-mode navigator; prints one result line per run.
#
# Usage: bench/cable.sh [RUNS]   (default 3)
# Environment: CARGO_TARGET_DIR is honoured; PORT (default 39871) is the
# loopback port navigator listens on.
set -euo pipefail

runs=${1:-3}
port=${PORT:-39871}
cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

# 10,000 WebSockets need 10,000 descriptors in navigator and in the tool;
# raise the soft limit as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)"
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
  echo "the open-file limit $(ulimit -n) is below the 10,100 this benchmark needs" >&2
  exit 1
fi

cargo build --release --bin navigator --example cable_load
target=${CARGO_TARGET_DIR:-target}/release
navigator_bin=$target/navigator
load_bin=$target/examples/cable_load

work=$(mktemp -d)
navigator_pid=""
cleanup() {
  if [ -n "$navigator_pid" ]; then
    kill "$navigator_pid" 2> /dev/null || true
    wait "$navigator_pid" 2> /dev/null || true
  fi
  rm -rf -- "$work"
}
trap cleanup EXIT

cat > "$work/navigator.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
pid_file = "$work/navigator.pid"

[server.limits]
max_connections = 20000
TOML

start_navigator() {
  "$navigator_bin" --config "$work/navigator.toml" > "$work/navigator.log" 2>&1 &
  navigator_pid=$!
  for _ in $(seq 1 100); do
    if grep -q "listening" "$work/navigator.log"; then
      return
    fi
    sleep 0.1
  done
  echo "navigator did not start; log:" >&2
  cat "$work/navigator.log" >&2
  exit 1
}

stop_navigator() {
  kill "$navigator_pid"
  wait "$navigator_pid" || true
  navigator_pid=""
}

for run in $(seq 1 "$runs"); do
  start_navigator
  echo "run $run: $("$load_bin" latency "127.0.0.1:$port" 1000 200)"
  stop_navigator
done

for run in $(seq 1 "$runs"); do
  start_navigator
  echo "run $run: $("$load_bin" idle "127.0.0.1:$port" "$navigator_pid" 10000)"
  stop_navigator
done
