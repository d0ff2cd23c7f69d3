#!/usr/bin/env bash
# Proves the README's setup on a truly fresh Debian 12 machine (issue 21): in a new minimal
# Debian bookworm chroot (mmdebstrap --variant=minbase, from this host's apt sources, nothing
# else installed), as root with no input and no Rust toolchain (WELLCAR_CHECK_DEPS_NO_RUST=1):
#
#   1. scripts/install-deps.sh installs everything and ends with check-deps.sh's success line;
#   2. scripts/check-deps.sh run again passes;
#   3. scripts/install-deps.sh run again is a no-op (installs nothing, no apt-get update);
#   4. issue 21 itself: qemu-system-x86 purged, qemu-utils and qemu-block-extra installed from
#      bookworm-backports (QEMU 10, whose Breaks: rules out bookworm's qemu-system-common), then
#      backports dropped from the sources again: install-deps.sh must install qemu-system-x86 and
#      leave every QEMU package from the same QEMU source version, with qemu-img and
#      qemu-system-x86_64 running (check-deps.sh runs both);
#   5. check-deps.sh can fail: with sgdisk removed it exits 1 and names the Debian package `gdisk`;
#      without WELLCAR_CHECK_DEPS_NO_RUST it points to rustup, as it will for a README reader.
#
# Any failure exits non-zero with a "fresh-machine: FAIL: ..." line and the failing command's
# whole output. Each step prints its time; of the scripts' output only their own
# "install-deps: ..." / "check-deps: ..." lines are shown (WELLCAR_FRESH_MACHINE_VERBOSE=1: all).
#
# Needs root (mmdebstrap's root mode, chroot) and mmdebstrap (scripts/install-deps.sh installs
# it). Downloaded .debs are kept in ${XDG_CACHE_HOME:-~/.cache}/wellcar/apt-archives (put into
# the chroot's /var/cache/apt/archives before anything is downloaded, new ones put back after
# each install, mmdebstrap's --skip=essential/unlink keeps the essential ones; in root mode a
# setup hook can do what mmdebstrap's sync-in/sync-out special hooks do, with hard links when on
# the same filesystem), so only the first run downloads much. The chroot lives in a temp dir
# under ${TMPDIR:-/tmp} (on a tmpfs when there is memory to spare) and is removed at the end,
# whatever happens. mmdebstrap mounts /proc, /sys and /dev for its hooks, unmounts them
# and keeps services from starting (policy-rc.d) while the hooks run: everything in the chroot
# happens in its --customize-hook, which is this script again (`tests/fresh-machine.sh hook ...`).
#
# Knobs: WELLCAR_FRESH_MACHINE_SOURCES (a deb822 .sources file, default the host's
# /etc/apt/sources.list.d/debian.sources, the file os/wellcar.toml builds from),
# WELLCAR_FRESH_MACHINE_SUITE (default bookworm), WELLCAR_FRESH_MACHINE_NO_BACKPORT=1 skips step 4
# (for a mirror without bookworm-backports), WELLCAR_FRESH_MACHINE_KEEP=1 keeps the chroot.
set -euo pipefail

self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
repo="$(cd "$(dirname "$0")/.." && pwd)"

now() { date +%s.%N; }
# Seconds since $1, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
say() { echo "fresh-machine: $*"; }
fail() {
  echo "fresh-machine: FAIL: $*" >&2
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Hook mode: run by mmdebstrap, on the host, with the chroot's root directory as $3.
# ---------------------------------------------------------------------------------------------

# Runs a command inside the chroot the way a root login on a fresh machine would: a clean
# environment (none of mmdebstrap's or this host's variables), no stdin.
in_chroot() {
  chroot "$root" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    TERM=dumb WELLCAR_CHECK_DEPS_NO_RUST=1 "$@" </dev/null
}

# Runs a command inside the chroot with its output in $log, shows the scripts' own lines of it
# (all of it on failure or with WELLCAR_FRESH_MACHINE_VERBOSE=1); fails unless it exits with $1.
run_step() {
  local want="$1" status=0
  shift
  in_chroot "$@" >"$log" 2>&1 || status=$?
  if [ "$status" != "$want" ] || [ "${WELLCAR_FRESH_MACHINE_VERBOSE:-0}" = 1 ]; then
    echo "fresh-machine: output of \`$*\`:"
    sed 's/^/  | /' "$log"
  else
    grep -E '^(install-deps|check-deps): ' "$log" | sed 's/^/  | /' || true
  fi
  [ "$status" = "$want" ] || fail "\`$*\` in the chroot exited with $status (expected $want)"
}

# Hard-links the .debs of directory $1 that directory $2 lacks (copies them across filesystems;
# never writes into an existing file, which may be another run's link). apt never changes a .deb
# in place (downloads go to partial/ and are renamed), so the links stay intact.
link_debs() {
  local deb to
  for deb in "$1"/*.deb; do
    to="$2/${deb##*/}"
    if [ ! -e "$deb" ] || [ -e "$to" ]; then continue; fi
    ln "$deb" "$to" 2>/dev/null || [ -e "$to" ] || { cp "$deb" "$to.partial.$$" && mv "$to.partial.$$" "$to"; }
  done
}

# After a successful run: drop what apt can no longer download (apt-get autoclean in the chroot),
# then every cached .deb the chroot no longer has.
prune_cache() {
  local deb
  in_chroot apt-get -qq autoclean
  for deb in "$cache"/*.deb; do
    [ -e "$deb" ] || continue
    [ -e "$archives/${deb##*/}" ] || rm -f "$deb"
  done
}

qemu_state() {
  # shellcheck disable=SC2016 # dpkg-query's ${fields}
  in_chroot dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version} ${source:Version}\n' \
    qemu-utils qemu-system-x86 qemu-block-extra 2>/dev/null | awk '$1 == "ii" { print $2, $3, $4 }'
}

hook_setup() {
  # The chroot resolves names (deb.debian.org may be in this host's /etc/hosts) and downloads
  # the way this host does; mmdebstrap has copied /etc/resolv.conf.
  cp /etc/hosts "$root/etc/hosts"
  mkdir -p "$archives"
  link_debs "$cache" "$archives"
  say "setup: $(find "$archives" -maxdepth 1 -name '*.deb' | wc -l) cached .debs linked into the chroot"
}

hook_customize() {
  local t
  say "bootstrap (mmdebstrap --variant=minbase): ok ($(since "$WELLCAR_FRESH_T0"))"
  mkdir -p "$root/wellcar"
  cp -a "$repo/scripts" "$root/wellcar/"

  t="$(now)"
  say "step 1: scripts/install-deps.sh on the fresh machine"
  run_step 0 /wellcar/scripts/install-deps.sh
  link_debs "$archives" "$cache"
  grep -q '^install-deps: installing ' "$log" || fail "install-deps.sh installed nothing on a fresh machine"
  grep -q '^check-deps: every command Wellcar runs is installed$' "$log" ||
    fail "install-deps.sh did not end with check-deps.sh's success line"
  say "step 1: ok ($(since "$t"))"

  t="$(now)"
  say "step 2: scripts/check-deps.sh again"
  run_step 0 /wellcar/scripts/check-deps.sh
  say "step 2: ok ($(since "$t"))"

  t="$(now)"
  say "step 3: scripts/install-deps.sh again is a no-op"
  run_step 0 /wellcar/scripts/install-deps.sh
  if grep -q '^install-deps: installing ' "$log"; then
    fail "install-deps.sh installed packages again: $(grep '^install-deps: installing ' "$log")"
  fi
  say "step 3: ok ($(since "$t"))"

  if [ "${WELLCAR_FRESH_MACHINE_NO_BACKPORT:-0}" = 1 ]; then
    prune_cache
    say "step 4: skipped (WELLCAR_FRESH_MACHINE_NO_BACKPORT=1)"
  else
    t="$(now)"
    say "step 4: issue 21: qemu-utils from $suite-backports and no qemu-system-x86, then scripts/install-deps.sh"
    # Issue 21's machine: qemu-utils (and its Recommends, qemu-block-extra) from backports, whose
    # Breaks: rules out bookworm's qemu-system-common, and no qemu-system-x86; backports no
    # longer in the sources, so the newer qemu-utils is known only from dpkg's status. (With
    # qemu-system-x86 installed, apt would move the whole QEMU family to the backport instead.)
    local bpo="$root/etc/apt/sources.list.d/wellcar-backports.sources"
    # bookworm-backports from the same mirror (URIs, Components, Signed-By) as the main suite.
    awk -v RS= -v suite="$suite" '$0 ~ "Suites:[^\n]*(^|[ \t])" suite "([ \t\n]|$)" { print; exit }' "$sources" |
      sed "s/^Suites:.*/Suites: $suite-backports/" >"$bpo"
    grep -q "^Suites: $suite-backports\$" "$bpo" ||
      fail "no stanza for suite $suite in $sources to derive $suite-backports from"
    run_step 0 apt-get purge -y -q -o Dpkg::Progress-Fancy=0 qemu-system-x86 qemu-system-common qemu-system-data
    run_step 0 apt-get update -qq
    run_step 0 apt-get install -y -q -o Dpkg::Progress-Fancy=0 -t "$suite-backports" qemu-utils qemu-block-extra
    link_debs "$archives" "$cache"
    # Prune while backports' .debs still count as downloadable.
    prune_cache
    rm "$bpo"
    run_step 0 apt-get update -qq
    local state
    state="$(qemu_state)"
    say "QEMU packages now: $(echo "$state" | tr '\n' ';')"
    grep -q '^qemu-utils .*~bpo' <<<"$state" || fail "qemu-utils did not come from $suite-backports"
    grep -q '^qemu-block-extra .*~bpo' <<<"$state" || fail "qemu-block-extra did not come from $suite-backports"
    ! grep -q '^qemu-system-x86 ' <<<"$state" || fail "qemu-system-x86 is still installed"

    run_step 0 /wellcar/scripts/install-deps.sh
    link_debs "$archives" "$cache"
    grep -q '^check-deps: every command Wellcar runs is installed$' "$log" ||
      fail "install-deps.sh did not end with check-deps.sh's success line"
    state="$(qemu_state)"
    say "QEMU packages now: $(echo "$state" | tr '\n' ';')"
    # Every package of the qemu source from the same source version (field 3).
    local utils system extra
    utils="$(awk '$1 == "qemu-utils" { print $3 }' <<<"$state")"
    system="$(awk '$1 == "qemu-system-x86" { print $3 }' <<<"$state")"
    extra="$(awk '$1 == "qemu-block-extra" { print $3 }' <<<"$state")"
    [ -n "$utils" ] || fail "qemu-utils is not installed after install-deps.sh"
    [ -n "$system" ] || fail "qemu-system-x86 is not installed after install-deps.sh"
    [ "$utils" = "$system" ] || fail "qemu-utils (from qemu $utils) and qemu-system-x86 (from qemu $system) differ"
    [ -z "$extra" ] || [ "$extra" = "$system" ] ||
      fail "qemu-block-extra (from qemu $extra) and qemu-system-x86 (from qemu $system) differ"
    say "step 4: ok ($(since "$t"))"
  fi

  t="$(now)"
  say "step 5: check-deps.sh names what is missing"
  # What a README reader sees on a fresh machine: only the Rust toolchain is still missing.
  run_step 1 env WELLCAR_CHECK_DEPS_NO_RUST=0 /wellcar/scripts/check-deps.sh
  grep -qxF 'check-deps: cargo not found: install a Rust toolchain (https://rustup.rs) first' "$log" ||
    fail "check-deps.sh did not point to rustup for a missing cargo"
  [ "$(grep -c . "$log")" = 1 ] || fail "check-deps.sh found more than cargo missing"
  local sgdisk
  sgdisk="$(in_chroot sh -c 'command -v sgdisk')" || fail "sgdisk is not installed in the chroot"
  rm "$root$sgdisk"
  run_step 1 /wellcar/scripts/check-deps.sh
  # shellcheck disable=SC2016 # the backquotes are check-deps.sh's
  grep -qxF 'check-deps: command `sgdisk` not found: install the Debian package `gdisk` (apt-get install gdisk)' "$log" ||
    fail "check-deps.sh did not name the package gdisk for a missing sgdisk"
  say "step 5: ok ($(since "$t"))"
}

if [ "${1:-}" = hook ]; then
  step="$2" root="$3"
  cache="${WELLCAR_FRESH_CACHE:?}" sources="${WELLCAR_FRESH_SOURCES:?}" suite="${WELLCAR_FRESH_SUITE:?}"
  log="${WELLCAR_FRESH_LOG:?}"
  archives="$root/var/cache/apt/archives"
  "hook_$step"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# Main: make the chroot with mmdebstrap, whose hooks do the rest.
# ---------------------------------------------------------------------------------------------
t0="$(now)"
[ "$(id -u)" = 0 ] || fail "run as root (mmdebstrap's root mode and chroot need it)"
command -v mmdebstrap >/dev/null || fail "mmdebstrap not found: apt-get install mmdebstrap (scripts/install-deps.sh does)"
sources="${WELLCAR_FRESH_MACHINE_SOURCES:-/etc/apt/sources.list.d/debian.sources}"
[ -f "$sources" ] || fail "no apt sources file $sources (set WELLCAR_FRESH_MACHINE_SOURCES)"
suite="${WELLCAR_FRESH_MACHINE_SUITE:-bookworm}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wellcar/apt-archives"
mkdir -p "$cache"

work="$(mktemp -d "${TMPDIR:-/tmp}/wellcar-fresh-machine.XXXXXX")"
tmpfs=0
cleanup() {
  local status=$? mnt
  # mmdebstrap unmounts what it mounted; should it have died half-way, unmount here (deepest
  # first), and never remove a tree that still has something mounted in it.
  for mnt in $(findmnt -rn -o TARGET | grep -F "$work/" | sort -r); do
    umount -l "$mnt" || true
  done
  if [ "${WELLCAR_FRESH_MACHINE_KEEP:-0}" = 1 ]; then
    say "kept the chroot in $work/root$([ "$tmpfs" = 0 ] || echo " (a tmpfs: umount $work when done)")"
  else
    [ "$tmpfs" = 0 ] || umount "$work" || umount -l "$work" || true
    if findmnt -rn -o TARGET | grep -qxF -e "$work" -e "$work/"; then
      echo "fresh-machine: still mounted under $work, not removing it" >&2
    else
      rm -rf --one-file-system "$work"
    fi
  fi
  if [ "$status" = 0 ]; then
    say "PASS ($(since "$t0") in all)"
  else
    echo "fresh-machine: FAILED after $(since "$t0") (exit $status); see the messages above" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The chroot goes on a tmpfs when there is memory to spare (it needs about 1.5 GiB): dpkg's
# ~40,000 files are written and removed far faster there than on disk (WELLCAR_FRESH_MACHINE_TMPFS
# =1 forces it, =0 keeps the chroot on disk).
available_kib="$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)"
case "${WELLCAR_FRESH_MACHINE_TMPFS:-auto}" in
  1) tmpfs=1 ;;
  auto) [ "${available_kib:-0}" -lt $((6 * 1024 * 1024)) ] || tmpfs=1 ;;
esac
if [ "$tmpfs" = 1 ]; then
  mount -t tmpfs -o size=4g,mode=755 wellcar-fresh-machine "$work" || fail "cannot mount a tmpfs on $work"
fi
chmod 755 "$work" # apt's download sandbox user (_apt) writes into the chroot's lists

# The apt settings this host needs to reach its mirror (a proxy, an old snapshot's dates), so
# that apt inside the chroot reaches it too.
aptopts=()
while read -r line; do
  aptopts+=("--aptopt=$line")
done < <(apt-config dump | grep -E '^Acquire::(https?::Proxy|Check-Valid-Until|Check-Date) ' || true)

export WELLCAR_FRESH_CACHE="$cache" WELLCAR_FRESH_SOURCES="$sources" WELLCAR_FRESH_SUITE="$suite"
export WELLCAR_FRESH_LOG="$work/step.log" WELLCAR_FRESH_SELF="$self" WELLCAR_FRESH_T0
WELLCAR_FRESH_T0="$(now)"
say "a fresh $suite (minbase) from $sources in $work/root$([ "$tmpfs" = 0 ] || echo " (tmpfs)"); .debs cached in $cache"
# dpkg's force-unsafe-io (no fsync per unpacked file, as in Docker's Debian images) cuts step 1
# by about a third here; it lands in the chroot's /etc/dpkg/dpkg.cfg.d, so install-deps.sh's
# installs get it too. It changes nothing about what gets installed.
# shellcheck disable=SC2016 # $1 is for the hook's shell: the chroot directory
mmdebstrap --mode=root --variant=minbase --skip=essential/unlink "${aptopts[@]}" --dpkgopt=force-unsafe-io \
  --setup-hook='"$WELLCAR_FRESH_SELF" hook setup "$1"' \
  --customize-hook='"$WELLCAR_FRESH_SELF" hook customize "$1"' \
  "$suite" "$work/root" "$sources" ||
  fail "mmdebstrap or a step in its hooks failed (see above)"
