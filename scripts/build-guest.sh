#!/usr/bin/env bash
# Builds the programs that run inside Wellcar, where `wellcar build` and the VM tests look for
# them:
# - the initramfs /init (crate wellcar-init), static: target/x86_64-unknown-linux-gnu/initramfs/wellcar-init
# - the on-host programs (wellcar-update, wellcar-update-agent, locksmithd, update_engine_client, locksmithctl, wellcar-install, flatcar-update, flatcar-reset), release builds in target/release,
#   dynamically linked against the same Debian bookworm glibc the image ships.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --profile initramfs --target x86_64-unknown-linux-gnu -p wellcar-init
packages=()
for crate in wellcar-host wellcar-agent wellcar-locksmith wellcar-install; do
  [ -f "crates/$crate/Cargo.toml" ] && packages+=(-p "$crate")
done
if ((${#packages[@]})); then
  cargo build --release "${packages[@]}"
fi
