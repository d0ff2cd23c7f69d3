#!/usr/bin/env bash
# The test suite, exactly what CI runs: lints, unit tests of every crate, and the VM tests under
# tests/ (real images built with mmdebstrap, booted in QEMU). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# One image build per run, shared by all VM test binaries.
export WELLCAR_TEST_BUILD_ID="${WELLCAR_TEST_BUILD_ID:-$(date +%s)-$$}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
scripts/build-guest.sh
# A private PostgreSQL for the update server's tests (started here, stopped on exit).
if [ -x scripts/postgres.sh ]; then
  eval "$(scripts/postgres.sh start)"
  trap 'scripts/postgres.sh stop' EXIT
fi
cargo test --workspace
