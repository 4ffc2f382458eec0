#!/usr/bin/env bash
# Build every fuzz target once, then run each for a bounded time against a
# copy of its committed corpus (fuzz/corpus/<target>/, which this never
# changes). Exits non-zero if any target crashed, panicked, timed out or ran
# out of memory, after printing each such input's path and bytes; the
# inputs are also kept in fuzz/artifacts/<target>/.
#
#   bash fuzz/run.sh                 # every target, FUZZ_SECONDS each
#   bash fuzz/run.sh fuzz_coap       # only the targets named
#
# FUZZ_SECONDS     seconds per target (default 30)
# FUZZ_JOBS        targets run at once (default: the number of cores)
# FUZZ_TARGET_DIR  cargo target dir of the fuzz build (default fuzz/target;
#                  keep it apart from the workspace's: other RUSTFLAGS)
#
# Built with `cargo fuzz build -O -a -s none`: optimized, debug assertions
# and overflow checks on, no AddressSanitizer. Verge forbids unsafe code, so
# ASan would add little but slower runs; and `-s address` needs a nightly
# compiler (or RUSTC_BOOTSTRAP=1) where CI has stable.
set -euo pipefail
cd "$(dirname "$0")"
secs=${FUZZ_SECONDS:-30}
jobs=${FUZZ_JOBS:-$(nproc)}
target_dir=${FUZZ_TARGET_DIR:-$PWD/target}
mkdir -p "$target_dir"
target_dir=$(cd "$target_dir" && pwd)

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# Fails if fuzz/Cargo.lock is out of date (cargo fuzz has no --locked).
cargo fetch --locked --quiet
t0=$(date +%s)
cargo fuzz build -O -a -s none --target-dir "$target_dir"
echo "fuzz build: $(($(date +%s) - t0))s"

host=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One target: libFuzzer on a copy of the seeds; its log and exit code go to
# $work/<target>/.
run_one() {
  local t=$1
  mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
  if [ -d "corpus/$t" ]; then
    cp -R "corpus/$t/." "$work/$t/corpus/"
  fi
  local rc=0
  "$bin_dir/$t" "$work/$t/corpus" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$work/$t/artifacts/" -print_final_stats=1 \
    >"$work/$t/log" 2>&1 || rc=$?
  echo "$rc" >"$work/$t/rc"
}

# FUZZ_JOBS targets at a time (each uses one core).
echo "running ${#targets[@]} targets, ${secs}s each, $jobs at a time"
t0=$(date +%s)
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
  done
  run_one "$t" &
done
wait
echo "fuzz runs: $(($(date +%s) - t0))s"

failed=()
for t in "${targets[@]}"; do
  rc=$(cat "$work/$t/rc")
  seeds=$(find "corpus/$t" -type f 2>/dev/null | wc -l)
  echo "=== $t (${secs}s from $seeds seed inputs)"
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$work/$t/log" || true
  found=$(find "$work/$t/artifacts" -type f | sort)
  if [ "$rc" -ne 0 ] || [ -n "$found" ]; then
    failed+=("$t")
    echo "FAILED: $t (exit $rc); the end of its log:"
    tail -n 40 "$work/$t/log"
    mkdir -p "artifacts/$t"
    for f in $found; do
      cp "$f" "artifacts/$t/"
      echo "input $PWD/artifacts/$t/$(basename "$f") ($(wc -c <"$f") bytes):"
      od -A x -t x1z -v "$f" | head -n 32
    done
  else
    echo "ok: $t"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found failures in: ${failed[*]}"
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${secs}s each, no failures"
