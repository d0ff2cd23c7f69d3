#!/usr/bin/env bash
# Installs every host dependency of building, booting and testing Wellcar, in one apt
# transaction, then checks that every command the project runs is there (scripts/check-deps.sh).
# Idempotent: only missing Debian packages are installed; when nothing is missing this is a quick
# no-op (no apt-get update). Runs as root (or through sudo), with no input.
# tests/fresh-machine.sh proves it on a new minimal Debian 12 chroot.
#
# One transaction, and one QEMU version, matter (issue 21): a machine may come with a newer
# qemu-utils (a backport, e.g. 1:10.0.2+ds-2+deb13u1~bpo12+1) that counts as present, but whose
# Breaks: on the older qemu-system-common makes apt remove it again when qemu-system-x86 is
# installed afterwards. So when a QEMU package is missing, the installed ones built from the
# `qemu` source (qemu-utils, qemu-block-extra, qemu-system-*) are pinned to the release's QEMU
# (the source version of qemu-system-x86's candidate), downgrading a backport if need be, and apt
# sees one consistent set.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

packages=(
  # image build
  mmdebstrap erofs-utils e2fsprogs dosfstools mtools grub-common grub-pc-bin grub-efi-amd64-bin
  qemu-utils zstd cpio
  # the live ISO (grub-mkrescue drives xorriso); PXE boots through the NIC's iPXE ROM
  xorriso ipxe-qemu
  # offline `systemctl --root` in the image build; losetup (mount), runuser/blkid/wipefs
  # (util-linux) and kill (procps) in the tests
  systemd mount util-linux procps
  # boot
  qemu-system-x86 ovmf
  # tests: independent readers and cross-checks
  gdisk cryptsetup-bin openssh-client
  # end-to-end test: the container workload's image (/bin/busybox)
  busybox-static
  # update server tests
  postgresql
  # fuzzing (scripts/fuzz.sh): afl-fuzz and AFL++'s compiler runtime
  afl++
  # reboot coordination tests: a real etcd (locksmith's etcd-lock, v2 keys API)
  etcd-server
  # dashboard tests: a real browser driven over WebDriver
  chromium chromium-driver
  # Ignition tests: coreos/ignition 2.14 as the differential oracle (files stage, validate);
  # the storage section's tools on loop devices; TFTP and DHCP servers (dnsmasq)
  ignition xfsprogs btrfs-progs mdadm dnsmasq-base
  # D-Bus tests (com.coreos.update1): a private dbus-daemon, busctl as a real client
  dbus-daemon systemd
  # platform VM tests: one relay per guest connection to the host's fake metadata and config
  # servers (QEMU guestfwd cmd:), so TLS and closed connections work
  socat
  # Rust: the linker (cc) with the C library to link against (libc6-dev is only a Recommends
  # of gcc), crates that build C; ca-certificates for cargo's HTTPS, curl for rustup
  gcc libc6-dev pkg-config ca-certificates curl
)
# The packages built from the `qemu` source that we install.
qemu_packages=(qemu-utils qemu-system-x86)

sudo_cmd=()
[ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive

# Installed version of a package ("" when not installed).
installed_version() {
  dpkg-query -W -f='${db:Status-Abbrev} ${Version}\n' "$1" 2>/dev/null | awk '$1 == "ii" { print $2; exit }'
}
# apt's candidate version of a package ("" or "(none)" when there is none).
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2; exit }'; }
# Source version of an available binary package version: the binary version, or what the
# Source: field names in parentheses (binNMUs, e.g. 1:7.2+dfsg-7+deb12u18+b3 -> 1:7.2+dfsg-7+deb12u18).
source_version() {
  apt-cache show "$1=$2" 2>/dev/null |
    awk -v v="$2" '/^Source:/ && match($0, /\(.*\)/) { v = substr($0, RSTART + 1, RLENGTH - 2) } /^$/ { exit } END { print v }'
}
# The newest available version of package $1 built from source version $2 ("" when there is
# none). apt-cache madison lists the newest first.
version_from_source() {
  local v
  for v in $(apt-cache madison "$1" 2>/dev/null | awk -F' *[|] *' '!seen[$2]++ { print $2 }'); do
    if [ "$(source_version "$1" "$v")" = "$2" ]; then
      echo "$v"
      return
    fi
  done
}

missing=()
for p in "${packages[@]}"; do
  [ -n "$(installed_version "$p")" ] || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq

  # One QEMU version (see the header): when a QEMU package is missing, pin the installed QEMU
  # packages that must match it (qemu-utils, qemu-block-extra, qemu-system-*; not e.g. a
  # qemu-guest-agent) to the version the release's qemu-system-x86 comes from.
  qemu_missing=0
  for p in "${qemu_packages[@]}"; do
    [ -n "$(installed_version "$p")" ] || qemu_missing=1
  done
  qemu_candidate="$(candidate_version qemu-system-x86)"
  if [ "$qemu_missing" = 1 ] && [ -n "$qemu_candidate" ] && [ "$qemu_candidate" != "(none)" ]; then
    qemu_source="$(source_version qemu-system-x86 "$qemu_candidate")"
    pins=()
    # Installed packages of the qemu source whose source version differs.
    while read -r pkg src src_version; do
      if [ "$src" != qemu ] || [ "$src_version" = "$qemu_source" ]; then continue; fi
      case "$pkg" in qemu-utils | qemu-block-extra | qemu-system-*) ;; *) continue ;; esac
      v="$(version_from_source "$pkg" "$qemu_source")"
      if [ -n "$v" ]; then
        echo "install-deps: $pkg $(installed_version "$pkg") does not match qemu-system-x86 $qemu_candidate; installing $pkg $v with it"
        pins+=("$pkg=$v")
      else
        echo "install-deps: $pkg $(installed_version "$pkg") does not match qemu-system-x86 $qemu_candidate and has no version built from qemu $qemu_source; apt may remove it" >&2
      fi
    done < <(dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${source:Package} ${source:Version}\n' 2>/dev/null |
      awk '$1 == "ii" { print $2, $3, $4 }')
    if ((${#pins[@]})); then
      # The missing QEMU packages at the same version, so apt cannot pick another one.
      for i in "${!missing[@]}"; do
        for p in "${qemu_packages[@]}"; do
          if [ "${missing[$i]}" = "$p" ]; then
            v="$(version_from_source "$p" "$qemu_source")"
            [ -z "$v" ] || missing[i]="$p=$v"
          fi
        done
      done
      missing+=("${pins[@]}")
    fi
  fi

  "${sudo_cmd[@]}" apt-get install -y -q --allow-downgrades --no-install-recommends \
    -o Dpkg::Progress-Fancy=0 -o APT::Color=0 "${missing[@]}"
fi

exec "$here/check-deps.sh"
