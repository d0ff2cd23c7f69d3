#!/usr/bin/env bash
# Builds the static initramfs /init (crate wellcar-init) into
# target/x86_64-unknown-linux-gnu/initramfs/wellcar-init, where `wellcar build` looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --quiet --profile initramfs --target x86_64-unknown-linux-gnu -p wellcar-init
