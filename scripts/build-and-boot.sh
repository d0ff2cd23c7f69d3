#!/usr/bin/env bash
# The main job: install what is missing, build the Wellcar image from os/wellcar.toml into out/,
# and boot it in QEMU with the serial console on this terminal (core is logged in
# automatically; quit with Ctrl-A X). Extra arguments go to `wellcar run` (e.g. --uefi,
# --ignition config.ign). WELLCAR_NO_BOOT=1 stops after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release -p wellcar-cli
scripts/build-guest.sh
./target/release/wellcar build --output out
if [ "${WELLCAR_NO_BOOT:-0}" = 1 ]; then exit 0; fi
exec ./target/release/wellcar run out/wellcar.qcow2 "$@"
