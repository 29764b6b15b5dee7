#!/usr/bin/env bash
# Load runs against a direct connection, nginx and navigator on loopback,
# in alternation, printing medians and ratios. Needs wrk and nginx
# (Debian: apt-get install wrk nginx-light).
#
# Usage: bench/run.sh [proxy|static|memory|all] [ROUNDS]
#   proxy   small responses through a warm tenant, keep-alive
#   static  4 KiB and 1 MiB static files
#   memory  navigator RSS idle with 370 tenants, and under 1,000 connections
#
# Environment: DURATION (seconds per wrk run, default 10), CONNECTIONS
# (default 50), THREADS (wrk threads, default 2), MAX_CONCURRENCY (memory
# run only: the tenant's max_concurrency, with room for 2,000 queued).
set -euo pipefail

what=${1:-all}
rounds=${2:-3}
duration=${DURATION:-10}
connections=${CONNECTIONS:-50}
threads=${THREADS:-2}

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
work=$(mktemp -d /tmp/navigator-bench.XXXXXX)
# nginx workers run as an unprivileged user and must read the files.
chmod 755 "$work"
pids=()

cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for tool in wrk nginx; do
  command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done

target_dir=${CARGO_TARGET_DIR:-$root/target}
if [ -z "${NO_BUILD:-}" ]; then
  echo "building release binaries..." >&2
  (cd "$root" && cargo build --release --quiet --bin navigator --example backend)
fi
navigator="$target_dir/release/navigator"
backend="$target_dir/release/examples/backend"

navigator_port=18080
nginx_port=18090
tenant_port=18100

wait_for_port() {
  local port=$1
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.05
  done
  echo "bench: nothing listens on port $port" >&2
  exit 1
}

start_nginx() {
  local location=$1
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx.conf" <<EOF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  upstream tenant { server 127.0.0.1:$tenant_port; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    $location
  }
}
EOF
  nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  wait_for_port "$nginx_port"
}

start_navigator() {
  local config=$1
  "$navigator" --config "$config" >"$work/navigator.log" 2>&1 &
  navigator_pid=$!
  pids+=($navigator_pid)
  wait_for_port "$navigator_port"
}

# Prints "requests_per_second p50_ms p99_ms" for one wrk run.
measure() {
  local url=$1
  wrk -t"$threads" -c"$connections" -d"${duration}s" --latency "$url" | tee "$work/wrk.out" | awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
      if (v ~ /s$/) { sub(/s$/, "", v); return v * 1000 }
      return v
    }
    /^ +50%/ { p50 = ms($2) }
    /^ +99%/ { p99 = ms($2) }
    /^Requests\/sec/ { rps = $2 }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
  if grep -q 'Non-2xx' "$work/wrk.out"; then
    echo "bench: $url answered with errors:" >&2
    cat "$work/wrk.out" >&2
    exit 1
  fi
}

median() {
  sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# Runs each named target ROUNDS times in alternation and prints a table.
compare() {
  local -n urls=$1
  local name
  for round in $(seq 1 "$rounds"); do
    for name in "${!urls[@]}"; do
      measure "${urls[$name]}" >>"$work/result.$name"
      echo "round $round $name: $(tail -1 "$work/result.$name")" >&2
    done
  done
  printf '%-12s %12s %10s %10s  (median of %s runs, spread min-max)\n' target req/s p50_ms p99_ms "$rounds"
  for name in "${!urls[@]}"; do
    local file="$work/result.$name"
    local rps p50 p99
    rps=$(cut -d' ' -f1 "$file" | median)
    p50=$(cut -d' ' -f2 "$file" | median)
    p99=$(cut -d' ' -f3 "$file" | median)
    local spread
    spread=$(cut -d' ' -f1 "$file" | sort -n | awk 'NR == 1 { lo = $1 } { hi = $1 } END { print lo "-" hi }')
    printf '%-12s %12s %10s %10s  req/s %s\n' "$name" "$rps" "$p50" "$p99" "$spread"
    echo "$rps $p50 $p99" >"$work/median.$name"
  done
  rm -f "$work"/result.*
}

ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'
}

run_proxy() {
  cat >"$work/proxy.toml" <<EOF
[server]
listen = "127.0.0.1:$navigator_port"
pid_file = "$work/navigator.pid"
[applications]
health_check = "/"
[applications.framework]
command = "$backend"
args = ["-p", "\${port}"]
[applications.pools]
start_port = $tenant_port
[[applications.tenants]]
path = "/"
[logging]
format = "text"
EOF
  LOG_LEVEL=warn start_navigator "$work/proxy.toml"
  curl -fsS "http://127.0.0.1:$navigator_port/" >/dev/null
  wait_for_port "$tenant_port"
  start_nginx "location / { proxy_pass http://tenant; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host \$host; }"

  declare -A targets=(
    [direct]="http://127.0.0.1:$tenant_port/"
    [nginx]="http://127.0.0.1:$nginx_port/"
    [navigator]="http://127.0.0.1:$navigator_port/"
  )
  echo "== proxy: small responses through a warm tenant, $connections connections, keep-alive"
  compare targets
  read -r d_rps d_p50 d_p99 <"$work/median.direct"
  read -r x_rps _ _ <"$work/median.nginx"
  read -r n_rps n_p50 n_p99 <"$work/median.navigator"
  echo "navigator/nginx throughput: $(ratio "$n_rps" "$x_rps")"
  echo "navigator/direct throughput: $(ratio "$n_rps" "$d_rps")"
  awk -v a="$n_p50" -v b="$d_p50" -v c="$n_p99" -v d="$d_p99" \
    'BEGIN { printf "latency difference at saturation: p50 %.3f ms, p99 %.3f ms\n", a - b, c - d }'

  # At saturation a request's latency is mostly its wait behind the other
  # connections' requests, so the difference above follows throughput.
  # The latency a proxy adds to each request is measured with one
  # connection: every request goes out as soon as the last one is back.
  local saved_connections=$connections saved_threads=$threads
  connections=1
  threads=1
  echo "== proxy: added latency, one connection, keep-alive"
  compare targets
  connections=$saved_connections
  threads=$saved_threads
  read -r _ d_p50 d_p99 <"$work/median.direct"
  read -r _ x_p50 x_p99 <"$work/median.nginx"
  read -r _ n_p50 n_p99 <"$work/median.navigator"
  awk -v a="$n_p50" -v b="$d_p50" -v c="$n_p99" -v d="$d_p99" \
    'BEGIN { printf "navigator added latency: p50 %.3f ms, p99 %.3f ms\n", a - b, c - d }'
  awk -v a="$x_p50" -v b="$d_p50" -v c="$x_p99" -v d="$d_p99" \
    'BEGIN { printf "nginx added latency: p50 %.3f ms, p99 %.3f ms\n", a - b, c - d }'
  stop_all
}

run_static() {
  mkdir -p "$work/public"
  chmod 755 "$work/public"
  head -c 4096 /dev/urandom | base64 -w 0 | head -c 4096 >"$work/public/small.txt"
  head -c 1048576 /dev/urandom >"$work/public/large.bin"
  cat >"$work/static.toml" <<EOF
[server]
listen = "127.0.0.1:$navigator_port"
pid_file = "$work/navigator.pid"
[server.static]
public_dir = "$work/public"
[logging]
format = "text"
EOF
  LOG_LEVEL=warn start_navigator "$work/static.toml"
  start_nginx "location / { root $work/public; }"
  for file in small.txt large.bin; do
    declare -A targets=(
      [nginx]="http://127.0.0.1:$nginx_port/$file"
      [navigator]="http://127.0.0.1:$navigator_port/$file"
    )
    echo "== static: $file ($(stat -c %s "$work/public/$file") bytes), $connections connections"
    compare targets
    read -r x_rps _ _ <"$work/median.nginx"
    read -r n_rps _ _ <"$work/median.navigator"
    echo "navigator/nginx throughput: $(ratio "$n_rps" "$x_rps")"
    unset targets
  done
  stop_all
}

rss_kib() {
  awk '/^VmRSS/ { print $2 }' "/proc/$1/status"
}

run_memory() {
  {
    cat <<EOF
[server]
listen = "127.0.0.1:$navigator_port"
pid_file = "$work/navigator.pid"
root_path = "/showcase"
[applications]
health_check = "/"
[applications.framework]
command = "$backend"
args = ["-p", "\${port}"]
[applications.env]
DATABASE_URL = "sqlite3:///data/db/\${database}.sqlite3"
[applications.pools]
start_port = $tenant_port
EOF
    if [ -n "${MAX_CONCURRENCY:-}" ]; then
      printf 'max_concurrency = %d\nmax_queue = 2000\n' "$MAX_CONCURRENCY"
    fi
    for i in $(seq 0 369); do
      printf '[[applications.tenants]]\npath = "/showcase/%d/studio%d/event%d/"\nvar = { database = "db%d" }\n' \
        $((2025 - i / 100)) $((i / 5)) "$i" "$i"
    done
  } >"$work/memory.toml"
  LOG_LEVEL=warn start_navigator "$work/memory.toml"
  sleep 1
  echo "== memory: 370-tenant config loaded, idle: $(rss_kib "$navigator_pid") KiB RSS"
  curl -fsS "http://127.0.0.1:$navigator_port/showcase/2025/studio0/event0/" >/dev/null
  wrk -t2 -c1000 -d"${duration}s" "http://127.0.0.1:$navigator_port/showcase/2025/studio0/event0/" >"$work/wrk-memory.out" &
  local wrk_pid=$!
  sleep $((duration / 2))
  echo "== memory: serving 1,000 keep-alive connections: $(rss_kib "$navigator_pid") KiB RSS"
  wait "$wrk_pid"
  awk '/^Requests\/sec/ { printf "   (%s req/s", $2 } /Non-2xx/ { printf ", %s non-2xx responses", $NF } END { print ")" }' "$work/wrk-memory.out"
  stop_all
}

stop_all() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  pids=()
}

ulimit -n 65536 2>/dev/null || true
case $what in
  proxy) run_proxy ;;
  static) run_static ;;
  memory) run_memory ;;
  all) run_proxy; run_static; run_memory ;;
  *) echo "usage: bench/run.sh [proxy|static|memory|all] [ROUNDS]" >&2; exit 2 ;;
esac
