#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a while with cargo-fuzz (libFuzzer)
# on the nightly toolchain, seeding the corpora first. Not part of CI.
#
# Usage: scripts/fuzz.sh [TARGET...]
#   FUZZ_SECONDS  run time per target (default 60)
#   FUZZ_JOBS     parallel libFuzzer jobs per target (default 1)
#   CARGO_TARGET_DIR  build directory (default fuzz/target)
#
# A crash leaves its input in fuzz/artifacts/TARGET/; reproduce it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...`. Every
# crash becomes a unit test next to the parser it broke.
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."
root=$(pwd)

seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
all_targets=(config_toml config_yaml htpasswd canonical_path units cgi_head fly_replay cable_message upstream_response)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: the nightly toolchain is missing; install it with" >&2
  echo "  rustup toolchain install nightly --profile minimal" >&2
  exit 2
fi
if ! cargo fuzz --version > /dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

corpus=$root/fuzz/corpus

# Writes stdin to the seed file CORPUS_DIR/NAME.
seed() {
  mkdir -p "$corpus/$1"
  cat > "$corpus/$1/$2"
}

seed_configs() {
  local file
  for file in config/*.toml examples/*.toml examples/rack/config/*.toml; do
    [ -f "$file" ] || continue
    seed config_toml "$(basename "$file")" < "$file"
  done
  seed config_toml small.toml <<'EOF'
[server]
listen = "127.0.0.1:3000"
root_path = "/showcase"

[applications]
startup_timeout = "5s"
response_timeout = "5m"

[applications.pools]
max_size = 4
timeout = "5m"
start_port = 4000

[[applications.tenants]]
path = "/showcase/2025/boston/"
var = { database = "2025-boston" }
env = { RAILS_APP_OWNER = "Boston" }

[[routes.redirects]]
from = "^/$"
to = "/showcase/"

[[routes.fly.replay]]
path = "^/showcase/.+\\.pdf$"
app = "smooth-pdf"
EOF
  seed config_yaml navigator.yml <<'EOF'
server:
  listen: 3000
  root_path: /showcase
  public_dir: ${HOME}/public
  idle:
    action: suspend
    timeout: 20m
auth:
  enabled: true
  realm: Showcase
  htpasswd: /data/db/htpasswd
  public_paths:
    - /showcase/assets/
    - "*.css"
applications:
  global_env:
    RAILS_ENV: production
  tenants:
    - path: /showcase/2025/boston/
      var:
        database: 2025-boston
      env:
        RAILS_APP_OWNER: Boston
    - path: /showcase/2025/raleigh/
      var: {database: 2025-raleigh}
  pools:
    max_size: 10
    timeout: 5m
    start_port: 4000
routes:
  fly_replay:
    - path: "^/showcase/regions/syd/.+$"
      region: syd
      status: 307
managed_processes:
  - name: redis
    command: redis-server
    auto_restart: true
anchors: &defaults
  a: 1
reuse: *defaults
EOF
  seed config_yaml flow.yml <<'EOF'
{server: {listen: "127.0.0.1:0", root_path: ""}, applications: {tenants: [{path: /a/}]}}
EOF
}

seed_htpasswd() {
  {
    echo "secret"
    echo "# users"
    echo "plain:secret"
    echo "sha:{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ="
    if command -v htpasswd > /dev/null; then
      htpasswd -nbB -C 4 bcrypt secret | head -n 1
      htpasswd -nbm apr secret | head -n 1
    fi
    if command -v openssl > /dev/null; then
      echo "md5:$(openssl passwd -1 -salt abcdefgh secret)"
      echo "apr1:$(openssl passwd -apr1 -salt abcdefgh secret)"
      echo "sha256:$(openssl passwd -5 -salt abcdefgh secret)"
      echo "sha512:$(openssl passwd -6 -salt abcdefgh secret)"
    fi
    echo 'rounds:$5$rounds=1000$abcdefgh$'
    echo "broken"
    echo ":nouser"
  } | seed htpasswd users.htpasswd
}

seed_lines() {
  # Each remaining argument becomes one seed file of target $1.
  local target=$1
  shift
  local index=0 text
  for text in "$@"; do
    printf '%s' "$text" | seed "$target" "seed-$index"
    index=$((index + 1))
  done
}

seed_paths() {
  seed_lines canonical_path / /showcase/2025/boston/ '//a///b' '/caf%C3%A9' '/a/%2e%2e/b' \
    '/a%2f..%2fb' '/%252e' '/.well-known/acme' '/a/./b' '/%c0%ae' '/%00' '/a\b' \
    '/showcase/2025/boston/heats.json?x' '/%zz'
}

seed_units() {
  seed_lines units 30s 5m 1h30m 500ms 0 1.5h 2d 1w 1y 250us 10ns 1234567ms \
    512M 1G 1.5G 64K 1024 3000 :3000 127.0.0.1:3000 '[::1]:9000' localhost:80 '*:8080'
}

seed_cgi() {
  seed_lines cgi_head $'Content-Type: text/html\r\n\r\n<p>hi</p>' \
    $'Status: 404 Not Found\nContent-Type: text/plain\n\nmissing' \
    $'Location: /showcase/\n\n' \
    $'Status: 200\nConnection: close\nTransfer-Encoding: chunked\nX-Reload: 1\n\n' \
    $'no colon here\n\n' $'Status: 999\n\n'
}

seed_upstream() {
  # The first byte picks the method (even: GET, odd: HEAD).
  seed_lines upstream_response $'GHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok' \
    $'GHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nT: 1\r\n\r\n' \
    $'GHTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n' \
    $'HHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n' \
    $'GHTTP/1.1 304 Not Modified\r\nETag: "a"\r\n\r\n' \
    $'GHTTP/1.1 200 OK\r\n\r\nuntil close'
}

seed_replay() {
  # The input is decoded by `arbitrary`, so any bytes are a valid seed.
  head -c 256 /dev/urandom | seed fly_replay random-0
  printf '/showcase/2025/clearwater/heats.pdf\x00GET\x00' | seed fly_replay path-0
}

seed_cable() {
  seed_lines cable_message '{"type":"subscribe","stream":"2025-boston-heats"}' \
    '{"type":"unsubscribe","stream":"s"}' '{"type":"pong"}' '{"type":"subscribe"}' \
    '{"type":"subscribe","stream":""}' '{"type":"x","stream":7}' \
    '{"stream":"scores","data":"<turbo-stream></turbo-stream>"}' '{"stream":"s","data":null}' \
    '{"type":"subscribe","stream":"\u00e9\ud83d\ude00"}'
}

seed_configs
seed_htpasswd
seed_paths
seed_units
seed_cgi
seed_upstream
seed_replay
seed_cable

echo "fuzz.sh: building the targets"
cargo +nightly fuzz build

summary=()
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$corpus/$target"
  log=$(mktemp)
  echo "fuzz.sh: running $target for ${seconds}s"
  status=0
  # -timeout: an input taking longer than 10 s counts as a hang.
  # -rss_limit_mb: a run growing past 2 GiB counts as a memory blowup.
  parallel=()
  if [ "$jobs" -gt 1 ]; then
    parallel=(-jobs="$jobs" -workers="$jobs")
  fi
  cargo +nightly fuzz run "$target" "$corpus/$target" -- \
    -max_total_time="$seconds" "${parallel[@]}" \
    -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 > "$log" 2>&1 || status=$?
  # Parallel jobs write their output to fuzz-N.log in the working directory.
  if compgen -G 'fuzz-*.log' > /dev/null; then
    cat fuzz-*.log >> "$log"
    rm -f fuzz-*.log
  fi
  executions=$(grep -h 'stat::number_of_executed_units' "$log" | awk '{sum += $2} END {print sum + 0}')
  corpus_files=$(find "$corpus/$target" -type f | wc -l)
  artifacts=$(find "fuzz/artifacts/$target" -type f 2> /dev/null | wc -l)
  if [ "$status" -ne 0 ]; then
    failed=1
    echo "fuzz.sh: $target FAILED (exit $status); the end of its log:"
    grep -E 'panicked|ERROR|SUMMARY|Test unit written|artifact_prefix' "$log" | tail -n 20 || true
    tail -n 20 "$log"
  fi
  summary+=("$(printf '%-16s %12s %8s %10s %s' "$target" "$executions" "$corpus_files" "$artifacts" \
    "$([ "$status" -eq 0 ] && echo ok || echo FAILED)")")
  rm -f "$log"
done

echo
printf '%-16s %12s %8s %10s %s\n' target executions corpus artifacts result
printf '%s\n' "${summary[@]}"
exit "$failed"
