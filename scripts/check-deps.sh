#!/usr/bin/env bash
# Checks that every host command Wellcar's build, boot and tests run is installed, and names the
# Debian package of each one that is missing. scripts/install-deps.sh ends with it; the
# fresh-machine test (tests/fresh_machine.sh) runs it in a new chroot. Exit 1 when anything is
# missing. WELLCAR_CHECK_DEPS_NO_RUST=1 skips the Rust toolchain (a chroot has none).
set -uo pipefail

# command:package, one per command the project calls (wellcar-image's tools.rs, the VM tests,
# the server's PostgreSQL tests, the scripts).
commands=(
  mmdebstrap:mmdebstrap
  mkfs.erofs:erofs-utils
  mkfs.ext4:e2fsprogs debugfs:e2fsprogs
  mkfs.vfat:dosfstools
  mcopy:mtools mmd:mtools
  grub-mkimage:grub-common
  qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86
  zstd:zstd cpio:cpio gzip:gzip tar:tar
  sgdisk:gdisk
  veritysetup:cryptsetup-bin
  ssh:openssh-client ssh-keygen:openssh-client
  busybox:busybox-static
  dpkg-query:dpkg systemctl:systemd
  losetup:mount
  runuser:util-linux
  sha256sum:coreutils
  gcc:gcc pkg-config:pkg-config
)
# Files rather than commands.
files=(
  /usr/lib/grub/i386-pc/boot.img:grub-pc-bin
  /usr/lib/grub/x86_64-efi/linux.mod:grub-efi-amd64-bin
  /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf
  /usr/share/OVMF/OVMF_VARS_4M.fd:ovmf
)

missing=0
PATH="$PATH:/usr/sbin:/sbin"
for entry in "${commands[@]}"; do
  cmd="${entry%%:*}" pkg="${entry#*:}"
  if ! command -v "$cmd" >/dev/null 2>&1; then
    echo "check-deps: command \`$cmd\` not found: install the Debian package \`$pkg\` (apt-get install $pkg)" >&2
    missing=1
  fi
done
for entry in "${files[@]}"; do
  file="${entry%%:*}" pkg="${entry#*:}"
  if [ ! -e "$file" ]; then
    echo "check-deps: file $file not found: install the Debian package \`$pkg\` (apt-get install $pkg)" >&2
    missing=1
  fi
done
# PostgreSQL's server binaries live in a versioned directory.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "check-deps: PostgreSQL's initdb not found under /usr/lib/postgresql/*/bin: install the Debian package \`postgresql\`" >&2
  missing=1
fi
if [ "${WELLCAR_CHECK_DEPS_NO_RUST:-0}" != 1 ] && ! command -v cargo >/dev/null 2>&1; then
  echo "check-deps: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  missing=1
fi
if [ "$missing" = 0 ]; then
  echo "check-deps: every command Wellcar runs is installed"
fi
exit "$missing"
