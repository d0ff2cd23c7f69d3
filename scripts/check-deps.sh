#!/usr/bin/env bash
# Checks that every host command Wellcar's build, boot and tests run is installed (and, for the
# ones that can break half-way, works), and names the Debian package of each one that is
# missing. scripts/install-deps.sh ends with it; the fresh-machine test (tests/fresh-machine.sh)
# runs it in a new Debian chroot. Exit 1 when anything is missing. Changes nothing (it links a
# test program in a temp dir, removed again).
# WELLCAR_CHECK_DEPS_NO_RUST=1 skips the Rust toolchain (a chroot has none).
#
# Keep the list in step with what the code runs: Command::new(...) in crates/ and tests/ (grep
# for it), wellcar-image's src/tools.rs, crates/wellcar-vm, wellcar-test-support's pg_cluster.rs
# and tools.rs (its tests check that each of its tools is listed here with the same package) and
# scripts/. install-deps.sh installs every package named here.
set -euo pipefail

# command:package, one per command the project calls.
commands=(
  # wellcar-image (src/tools.rs, reshape.rs)
  mmdebstrap:mmdebstrap
  mkfs.erofs:erofs-utils
  mkfs.ext4:e2fsprogs
  mkfs.vfat:dosfstools
  mcopy:mtools mmd:mtools
  grub-mkimage:grub-common grub-mkrescue:grub-common xorriso:xorriso
  qemu-img:qemu-utils
  dpkg-query:dpkg
  systemctl:systemd
  cp:coreutils
  # wellcar-vm: boot
  qemu-system-x86_64:qemu-system-x86
  # VM tests (tests/*.rs): readers and cross-checks, the e2e test's workload image and ssh
  sgdisk:gdisk
  veritysetup:cryptsetup-bin
  debugfs:e2fsprogs
  dd:coreutils
  ssh:openssh-client ssh-keygen:openssh-client scp:openssh-client
  tar:tar gzip:gzip
  # unit tests: payload (loop devices, checksums, bench), initramfs (cpio), ignition (mkfs, blkid,
  # wipefs on an image file)
  losetup:mount
  sha256sum:coreutils
  zstd:zstd
  cpio:cpio
  blkid:util-linux wipefs:util-linux
  # update server tests: a private PostgreSQL cluster run as `postgres`, crash tests kill -9
  runuser:util-linux chown:coreutils id:coreutils
  kill:procps
  # Rust: the linker, and crates that build C
  cc:gcc gcc:gcc pkg-config:pkg-config
  # scripts/fuzz.sh
  afl-fuzz:afl++
  # reboot coordination tests (locksmith's etcd-lock against a real etcd)
  etcd:etcd-server
  # dashboard tests (WebDriver)
  chromium:chromium chromedriver:chromium-driver
  # Ignition: the differential oracle, the storage section's tools, TFTP/DHCP servers
  ignition-validate:ignition mkfs.xfs:xfsprogs mkfs.btrfs:btrfs-progs mkfs.vfat:dosfstools
  mdadm:mdadm dnsmasq:dnsmasq-base
  # D-Bus tests: a private bus and a real client
  dbus-daemon:dbus-daemon busctl:systemd
  # platform VM tests: a relay per guest connection
  socat:socat
)
# Files rather than commands.
files=(
  /usr/lib/grub/i386-pc/boot.img:grub-pc-bin
  # PXE boots in the VM tests: virtio-net's option ROM
  /usr/lib/ipxe/qemu/efi-virtio.rom:ipxe-qemu
  /usr/lib/grub/x86_64-efi/linux.mod:grub-efi-amd64-bin
  /usr/share/OVMF/OVMF_CODE_4M.fd:ovmf
  /usr/share/OVMF/OVMF_VARS_4M.fd:ovmf
  # the e2e test copies this very file into the workload's container image
  /bin/busybox:busybox-static
  # the Ignition differential test runs Ignition's own binary (not on PATH)
  /usr/lib/dracut/modules.d/30ignition/ignition:ignition
  # scripts/fuzz.sh links the fuzz targets against AFL++'s runtime
  /usr/lib/afl/afl-compiler-rt.o:afl++
)

missing=0
need() {
  echo "check-deps: $1: install the Debian package \`$2\` (apt-get install $2)" >&2
  missing=1
}

# Root's tools live in the sbin directories, which a user's PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
for entry in "${commands[@]}"; do
  cmd="${entry%%:*}" pkg="${entry#*:}"
  command -v "$cmd" >/dev/null 2>&1 || need "command \`$cmd\` not found" "$pkg"
done
for entry in "${files[@]}"; do
  file="${entry%%:*}" pkg="${entry#*:}"
  [ -e "$file" ] || need "file $file not found" "$pkg"
done

# Present is not enough for QEMU: a qemu-utils left from another QEMU version (issue 21) or a
# missing library shows up only when the program runs.
for entry in qemu-img:qemu-utils qemu-system-x86_64:qemu-system-x86; do
  cmd="${entry%%:*}" pkg="${entry#*:}"
  if command -v "$cmd" >/dev/null 2>&1 && ! out="$("$cmd" --version 2>&1)"; then
    need "\`$cmd --version\` fails ($(printf '%s' "$out" | tail -n 1))" "$pkg"
  fi
done

# PostgreSQL's server binaries live in a versioned directory; the tests run them as `postgres`.
if ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || ! compgen -G '/usr/lib/postgresql/*/bin/pg_ctl' >/dev/null; then
  need "PostgreSQL's initdb and pg_ctl not found under /usr/lib/postgresql/*/bin" postgresql
elif ! getent passwd postgres >/dev/null; then
  need "user \`postgres\` not found" postgresql-common
fi

# Cargo links through cc, dynamically for the host programs and statically for the initramfs:
# both need the C library's development files, which gcc only recommends.
if command -v cc >/dev/null 2>&1; then
  tmp="$(mktemp -d)"
  printf 'int main(void) { return 0; }\n' >"$tmp/t.c"
  if ! cc -o "$tmp/t" "$tmp/t.c" >/dev/null 2>&1 || ! cc -static -o "$tmp/t" "$tmp/t.c" >/dev/null 2>&1; then
    need "cc cannot link a C program (dynamically and with -static)" libc6-dev
  fi
  rm -rf "$tmp"
fi

if [ "${WELLCAR_CHECK_DEPS_NO_RUST:-0}" != 1 ] && ! command -v cargo >/dev/null 2>&1; then
  echo "check-deps: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  missing=1
fi
if [ "$missing" = 0 ]; then
  echo "check-deps: every command Wellcar runs is installed"
fi
exit "$missing"
