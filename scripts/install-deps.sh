#!/usr/bin/env bash
# Installs every host dependency of building, booting and testing Wellcar. Idempotent: only
# missing Debian packages are installed. Runs as root (or through sudo), with no input.
set -euo pipefail

packages=(
  # image build
  mmdebstrap erofs-utils e2fsprogs dosfstools mtools grub-common grub-pc-bin grub-efi-amd64-bin
  qemu-utils zstd cpio
  # boot
  qemu-system-x86 ovmf
  # tests: independent readers and cross-checks
  gdisk cryptsetup-bin openssh-client
  # end-to-end test: the container workload's image (/bin/busybox)
  busybox-static
  # update server tests
  postgresql
  # Rust crates that build C
  gcc pkg-config
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
