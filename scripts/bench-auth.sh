#!/usr/bin/env bash
# Compares navigator's throughput for one static file served without auth
# and behind Basic auth with a bcrypt cost 10 user (whose check the cache
# keeps), using wrk on loopback. Prints the median of RUNS runs each.
#
# Usage: scripts/bench-auth.sh [path/to/release/navigator]
# Needs: wrk, htpasswd (apache2-utils). Knobs: RUNS (3), DURATION (10s),
# CONNECTIONS (16), THREADS (1).
set -euo pipefail

navigator=${1:-${CARGO_TARGET_DIR:-target}/release/navigator}
runs=${RUNS:-3}
duration=${DURATION:-10s}
connections=${CONNECTIONS:-16}
threads=${THREADS:-1}

for tool in wrk htpasswd; do
  command -v "$tool" > /dev/null || { echo "missing: $tool" >&2; exit 1; }
done
[ -x "$navigator" ] || { echo "not executable: $navigator (cargo build --release)" >&2; exit 1; }

work=$(mktemp -d)
cleanup() {
  local pid
  # `start` runs in a command substitution, so it records pids in a file.
  for pid in $(cat "$work/pids" 2> /dev/null); do
    kill "$pid" 2> /dev/null || true
    while kill -0 "$pid" 2> /dev/null; do sleep 0.1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/public/docs"
printf '<h1>docs</h1>\n%.0s' {1..40} > "$work/public/docs/index.html"
htpasswd -c -b -B -C 10 "$work/htpasswd" judge bcrypt-secret 2> /dev/null
token=$(printf 'judge:bcrypt-secret' | base64)

# $1: config name, $2: extra TOML.
write_config() {
  cat > "$work/$1.toml" <<TOML
[server]
listen = "127.0.0.1:0"
pid_file = "$work/$1.pid"

[server.static]
public_dir = "$work/public"
try_files = ["index.html"]
$2
TOML
}
write_config open ""
write_config auth "
[auth]
enabled = true
realm = \"Bench\"
htpasswd = \"$work/htpasswd\"
public_paths = [\"/assets/\", \"*.css\"]
"

# Starts navigator on config $1 in the background and prints its address.
start() {
  LOG_LEVEL=warn,navigator::server=info "$navigator" --config "$work/$1.toml" > "$work/$1.log" 2>&1 &
  echo $! >> "$work/pids"
  local address
  for _ in $(seq 1 100); do
    address=$(grep -o 'address=[0-9.:]*' "$work/$1.log" | head -n 1 | cut -d= -f2 || true)
    if [ -n "$address" ]; then
      echo "$address"
      return
    fi
    sleep 0.1
  done
  echo "navigator did not start; log:" >&2
  cat "$work/$1.log" >&2
  return 1
}

# $1: address, $2: duration, $3: connections, then extra wrk arguments.
# Prints requests per second; fails when any response was not a 2xx or
# 3xx (a 401 would mean the credentials failed).
measure() {
  local address=$1 run_duration=$2 run_connections=$3 output
  shift 3
  output=$(wrk -t"$threads" -c"$run_connections" -d"$run_duration" "$@" "http://$address/docs/")
  if grep -q 'Non-2xx' <<< "$output"; then
    echo "unexpected responses:" >&2
    echo "$output" >&2
    return 1
  fi
  awk '/^Requests\/sec:/ { print $2 }' <<< "$output"
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}

echo "navigator: $navigator"
echo "wrk -t$threads -c$connections -d$duration, $runs runs each, alternating, loopback"

open_address=$(start open)
auth_address=$(start auth)
credentials=(-H "Authorization: Basic $token")

measure "$open_address" 1s 1 > /dev/null
# The page needs credentials; the first accepted request fills the cache.
if measure "$auth_address" 1s 1 > /dev/null 2>&1; then
  echo "the auth config served /docs/ without credentials" >&2
  exit 1
fi
measure "$auth_address" 1s 1 "${credentials[@]}" > /dev/null

# Runs alternate so that load from other processes hits both alike.
open_runs=()
auth_runs=()
for _ in $(seq 1 "$runs"); do
  open_runs+=("$(measure "$open_address" "$duration" "$connections")")
  auth_runs+=("$(measure "$auth_address" "$duration" "$connections" "${credentials[@]}")")
done

open_median=$(printf '%s\n' "${open_runs[@]}" | median)
auth_median=$(printf '%s\n' "${auth_runs[@]}" | median)
echo "no auth:            ${open_runs[*]} requests/s (median $open_median)"
echo "bcrypt-10, cached:  ${auth_runs[*]} requests/s (median $auth_median)"
awk -v a="$auth_median" -v o="$open_median" 'BEGIN { printf "ratio: %.1f%%\n", 100 * a / o }'
