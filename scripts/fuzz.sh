#!/usr/bin/env bash
# Fuzzes every target of crates/wellcar-fuzz with AFL++ for SECONDS each (default 20), one after
# the other, and prints a table: target, executions, corpus entries, crashes, hangs. Exits 1 when
# any target crashed (the inputs are under OUT/<target>/default/crashes/; replay one with
# `cargo run -p wellcar-fuzz --bin fuzz-<target> -- FILE`), 2 when AFL++ could not run.
#
#   scripts/fuzz.sh [SECONDS]
#
# AFL++ is Debian's `afl++` package (scripts/install-deps.sh installs it): its afl-fuzz and its
# compiler runtime (/usr/lib/afl/afl-compiler-rt.o). The targets are built with the flags
# cargo-afl passes (LLVM SanitizerCoverage: trace-pc-guard edges plus compare tracing, debug
# assertions and overflow checks) and linked against that runtime, so no AFL++ build from source
# is needed. The build goes to its own target directory, WELLCAR_FUZZ_TARGET_DIR (default
# ${CARGO_TARGET_DIR:-target}/afl), so it never invalidates the normal build; the findings go to
# WELLCAR_FUZZ_OUT (default WELLCAR_FUZZ_TARGET_DIR/out), cleared per target at each run.
# WELLCAR_FUZZ_TARGETS="a b" runs only those targets.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
case "$seconds" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS]" >&2; exit 2 ;; esac
runtime="${AFL_COMPILER_RT:-/usr/lib/afl/afl-compiler-rt.o}"
if ! command -v afl-fuzz >/dev/null 2>&1 || [ ! -f "$runtime" ]; then
  echo "fuzz: afl-fuzz or $runtime not found: install the Debian package afl++ (scripts/install-deps.sh)" >&2
  exit 2
fi
target_dir="${WELLCAR_FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/afl}"
out="${WELLCAR_FUZZ_OUT:-$target_dir/out}"
corpus=crates/wellcar-fuzz/corpus
targets=(${WELLCAR_FUZZ_TARGETS:-omaha-request omaha-response payload-header payload-manifest
  payload-head ignition update-conf kernel-cmdline grub-envblock})

# The instrumentation cargo-afl uses (SanitizerCoverage's module pass at level 3, every block
# kept, comparisons traced for AFL++'s compare splitting), AFL++'s runtime, and checks on.
rustflags=(
  -C passes=sancov-module
  -C llvm-args=-sanitizer-coverage-level=3
  -C llvm-args=-sanitizer-coverage-trace-pc-guard
  -C llvm-args=-sanitizer-coverage-prune-blocks=0
  -C llvm-args=-sanitizer-coverage-trace-compares
  -C debug-assertions
  -C overflow-checks
  -C "link-arg=$runtime"
)
echo "fuzz: building the targets with AFL++ instrumentation into $target_dir"
RUSTFLAGS="${rustflags[*]}" CARGO_TARGET_DIR="$target_dir" \
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
  cargo build --quiet --release --locked -p wellcar-fuzz --features afl --bins

# Quiet, unattended, sharing the CPUs: no UI, no core binding, no CPU governor or core_pattern
# demands (crashes are detected by the fork server, not core dumps), fresh output per run.
export AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_FAST_CAL=1 AFL_NO_STARTUP_CALIBRATION=1

afl_stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"; }

crashed=0
rows=()
for t in "${targets[@]}"; do
  bin="$target_dir/release/fuzz-$t"
  [ -x "$bin" ] || { echo "fuzz: no binary $bin for target $t" >&2; exit 2; }
  rm -rf "${out:?}/$t"
  mkdir -p "$out/$t"
  echo "fuzz: $t for ${seconds}s"
  if ! afl-fuzz -V "$seconds" -i "$corpus/$t" -o "$out/$t" -- "$bin" >"$out/$t/afl-fuzz.log" 2>&1; then
    tail -n 20 "$out/$t/afl-fuzz.log" >&2
    echo "fuzz: afl-fuzz failed on $t (log: $out/$t/afl-fuzz.log)" >&2
    exit 2
  fi
  stats="$out/$t/default/fuzzer_stats"
  execs="$(afl_stat execs_done "$stats")"
  crashes="$(afl_stat saved_crashes "$stats")"
  crashes="${crashes:-$(afl_stat unique_crashes "$stats")}"
  hangs="$(afl_stat saved_hangs "$stats")"
  hangs="${hangs:-$(afl_stat unique_hangs "$stats")}"
  rows+=("$(printf '%-18s %12s %8s %8s %6s' "$t" "$execs" "$(afl_stat corpus_count "$stats")" "$crashes" "$hangs")")
  if [ "${crashes:-0}" != 0 ]; then
    crashed=1
    echo "fuzz: $t crashed; inputs in $out/$t/default/crashes/" >&2
  fi
done

printf '%-18s %12s %8s %8s %6s\n' target execs corpus crashes hangs
printf '%s\n' "${rows[@]}"
if [ "$crashed" = 1 ]; then
  echo "fuzz: crashes found (see above)" >&2
  exit 1
fi
