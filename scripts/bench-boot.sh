#!/usr/bin/env bash
# Wellcar's boot against Debian's (issue 21): boots, one VM at a time and with the same QEMU
# settings, Wellcar's first boot (Ignition) and a later boot of the same disk, and a plain
# Debian bookworm disk with the same kernel and packages (GRUB + initramfs-tools, cached in
# ~/.cache/wellcar/bench/), then prints the medians, the ratios Wellcar/Debian with their goals,
# memory after boot and Wellcar's systemd critical chain (tests/benches/boot/).
#
# Usage: scripts/bench-boot.sh [--runs N] [--build DIR] [--verbose]
#   --runs N     boots of each kind (default 3); medians are printed
#   --build DIR  use an existing `wellcar build` output (relative: to the repository root)
#                instead of building os/wellcar.toml into target/vmtest/bench
#   --verbose    print each boot's ssh banner probes and the guest's journal lines about ssh,
#                network and targets, on the same time axis
# WELLCAR_ACCEL=tcg|kvm overrides the accelerator probe (crates/wellcar-vm). Needs root (the
# Debian disk is made with mmdebstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build-guest.sh
exec cargo bench --quiet -p wellcar-vmtests --bench boot -- "$@"
