#!/usr/bin/env bash
# Installs every host dependency of building, booting and testing Wellcar, in one apt
# transaction, then checks that every command the project runs is there (scripts/check-deps.sh).
# Idempotent: only missing Debian packages are installed. Runs as root (or through sudo), with no
# input.
#
# One transaction matters: a machine may come with a newer qemu-utils (a backport) whose Breaks:
# rule removes it again when qemu-system-x86 is installed on its own afterwards. Here the QEMU
# packages are pinned to the version qemu-system-x86 will have, so apt sees one consistent set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

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
  # offline `systemctl --root` in the image build; losetup, runuser for the tests
  systemd mount util-linux
)

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive

installed_version() { dpkg-query -W -f='${db:Status-Abbrev} ${Version}' "$1" 2>/dev/null | awk '$1=="ii"{print $2}'; }
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}'; }

missing=()
for p in "${packages[@]}"; do
  [ -n "$(installed_version "$p")" ] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  # The QEMU family must share one version (qemu-utils Breaks: older qemu-system-common).
  qemu_version="$(candidate_version qemu-system-x86)"
  if [ -z "$(installed_version qemu-system-x86)" ] && [ -n "$qemu_version" ] &&
    [ "$(installed_version qemu-utils)" != "" ] && [ "$(installed_version qemu-utils)" != "$qemu_version" ]; then
    echo "install-deps: qemu-utils $(installed_version qemu-utils) would break qemu-system-x86 $qemu_version; installing qemu-utils $qemu_version with it"
    for i in "${!missing[@]}"; do [ "${missing[$i]}" = qemu-system-x86 ] && unset 'missing[i]'; done
    missing+=("qemu-system-x86=$qemu_version" "qemu-utils=$qemu_version")
  fi
  "${sudo_cmd[@]}" apt-get install -y -q --allow-downgrades --no-install-recommends \
    -o Dpkg::Progress-Fancy=0 -o APT::Color=0 "${missing[@]}"
fi

exec "$here/check-deps.sh"
