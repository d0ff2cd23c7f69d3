#!/usr/bin/env bash
# The test suite, exactly what CI runs: lints, unit tests of every crate, and the VM tests under
# tests/ (real images built with mmdebstrap, booted in QEMU). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
# Free space at the start and the end: a full disk shows up as odd test failures otherwise.
df -h . /tmp >&2
trap 'df -h . /tmp >&2' EXIT
scripts/install-deps.sh
tests/fresh-machine.sh
# One image build per run, shared by all VM test binaries.
export WELLCAR_TEST_BUILD_ID="${WELLCAR_TEST_BUILD_ID:-$(date +%s)-$$}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/build-guest.sh
# The update server's PostgreSQL tests start a private cluster themselves (initdb from the
# postgresql package into a temp dir, on a free loopback port); WELLCAR_TEST_POSTGRES_URL points
# them at an existing server instead. The Omaha and Ignition compatibility corpora are read from
# ../shared/corpus beside the checkout; WELLCAR_CORPUS names another directory holding omaha/ and
# ignition/.
cargo test --workspace
# Fuzzing: every parser target 10 s under AFL++ (scripts/fuzz.sh: its own instrumented build in
# target/afl); fails on any crash, which then becomes a regression test.
scripts/fuzz.sh 10
