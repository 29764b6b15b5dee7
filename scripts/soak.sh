#!/usr/bin/env bash
# Soak test: runs navigator under mixed traffic (static files, tenants,
# WebSocket tunnels, SIGHUP reloads, idle reaping, crashes and restarts;
# see examples/soak.rs) and samples its resident memory, open file
# descriptors and threads into a CSV. Not part of CI.
#
# Usage: scripts/soak.sh
#   DURATION  seconds of traffic (default 3600)
#   SAMPLE    seconds between samples (default 10)
#   OUT       directory for the CSV, navigator's log and the work files
#             (default: a new temp dir, kept)
#   PROFILE   cargo profile to build (default release)
#
# Pass condition: flat lines. Over the second half of the run (after
# warm-up and the first reaps and reloads), a least-squares line is fitted
# to each series; the rise of that line across the half must stay below:
#   RSS      4096 KiB
#   fds      16
#   threads  4
# Open descriptors and threads move with the load (pooled upstream
# connections, tokio's blocking threads), so the bounds allow that noise;
# a leak of one descriptor per crash or 1 KiB per request exceeds them
# within minutes. Every request must also get a response.
set -euo pipefail

cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.."

duration=${DURATION:-3600}
sample=${SAMPLE:-10}
profile=${PROFILE:-release}
out=${OUT:-$(mktemp -d /tmp/navigator-soak.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)

echo "soak.sh: building ($profile)"
cargo build --profile "$profile" --bin navigator --example soak
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
profile_dir=$profile
[ "$profile" = dev ] && profile_dir=debug

csv=$out/soak.csv
echo "soak.sh: ${duration}s of traffic, a sample every ${sample}s, into $csv"
status=0
"$target_dir/$profile_dir/examples/soak" \
  --navigator "$target_dir/$profile_dir/navigator" \
  --dir "$out" --duration "$duration" --sample "$sample" --csv "$csv" || status=$?

# Fits value = a + b * seconds over the samples of the second half and
# prints the rise b * (last - first seconds) of each series.
verdict=$(awk -F, '
  NR == 1 { next }
  { t[n] = $1; rss[n] = $2; fds[n] = $3; threads[n] = $4; n++ }
  function rise(values,    i, st, sv, stt, stv, mean_t, slope, count, first) {
    first = int(n / 2); count = n - first
    st = sv = stt = stv = 0
    for (i = first; i < n; i++) { st += t[i]; sv += values[i]; stt += t[i] * t[i]; stv += t[i] * values[i] }
    if (count < 3 || stt * count == st * st) return 0
    slope = (count * stv - st * sv) / (count * stt - st * st)
    return slope * (t[n - 1] - t[first])
  }
  function mean(values,    i, sum) { for (i = int(n / 2); i < n; i++) sum += values[i]; return sum / (n - int(n / 2)) }
  END {
    if (n < 6) { print "FAIL too few samples (" n ")"; exit }
    r = rise(rss); f = rise(fds); h = rise(threads)
    printf "rss      mean %9.0f KiB   rise %8.1f KiB   bound 4096  %s\n", mean(rss), r, (r < 4096 ? "ok" : "FAIL")
    printf "fds      mean %9.1f       rise %8.2f       bound 16    %s\n", mean(fds), f, (f < 16 ? "ok" : "FAIL")
    printf "threads  mean %9.1f       rise %8.2f       bound 4     %s\n", mean(threads), h, (h < 4 ? "ok" : "FAIL")
  }' "$csv")

echo
echo "second half of $(($(wc -l < "$csv") - 1)) samples:"
echo "$verdict"
if [ "$status" -ne 0 ] || grep -q FAIL <<< "$verdict"; then
  echo "soak.sh: FAIL (driver exit $status); files in $out"
  exit 1
fi
echo "soak.sh: PASS; files in $out"
