#!/usr/bin/env bash
# An emulated Raspberry Pi OS Bookworm userland on an x86 Debian machine, to prove that
# the aarch64 wheelhouse installs offline and the agent runs on the target architecture.
#
#   deploy/pi/arm64-root.sh build   [--root DIR] [--mirror URL]
#   deploy/pi/arm64-root.sh install [--root DIR] [--wheelhouse DIR]
#   deploy/pi/arm64-root.sh run     [--root DIR] -- COMMAND [ARG...]
#
# build:   registers qemu-aarch64 with binfmt_misc if needed, then debootstraps an arm64
#          Debian 12 root (minbase + python3, python3-venv) into DIR (default
#          var/pi/bookworm-arm64), once: a finished root carries a stamp file.
# install: copies the wheelhouse (make wheelhouse) to DIR/opt/polelink/wheelhouse and installs
#          it into the venv DIR/opt/polelink/venv with pip --no-index, in a network
#          namespace with no network at all; prints the venv's installed size.
# run:     runs COMMAND inside the root (emulated), with its own /proc, and no network.
#
# Needs root (chroot, mount, unshare), debootstrap, qemu-user-static and binfmt-support
# (all Debian packages). Exit 77 when this machine cannot do a step (no root, no
# binfmt_misc in the kernel, no qemu, mirror unreachable), with one line saying which and
# why; the arm64 test skips with that line. Exit 1 on any other failure.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="$REPO/var/pi/bookworm-arm64"
WHEELHOUSE="$REPO/var/wheelhouse/aarch64"
MIRROR="${POLELINK_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BINFMT=/proc/sys/fs/binfmt_misc
STAMP=.polelink-arm64-root

cannot() { echo "arm64-root: cannot $1" >&2; exit 77; }
fail() { echo "arm64-root: $1" >&2; exit 1; }

usage() { sed -n '4,6p' "$0" | sed 's/^# *//' >&2; exit 2; }

[[ $# -ge 1 ]] || usage
CMD="$1"; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
        --mirror) MIRROR="$2"; shift 2 ;;
        --) shift; break ;;
        *) usage ;;
    esac
done

need_root() {
    [[ $EUID -eq 0 ]] || cannot "chroot into the arm64 root: needs root (chroot, mount, unshare); run as root"
}

# qemu-aarch64 must be registered with binfmt_misc with the F flag (the kernel opens the
# interpreter at registration), so that arm64 programs run inside the chroot without a
# copy of qemu in it.
ensure_binfmt() {
    if [[ ! -e $BINFMT/status ]]; then
        grep -qw binfmt_misc /proc/filesystems ||
            cannot "emulate arm64: this kernel has no binfmt_misc (CONFIG_BINFMT_MISC)"
        mount -t binfmt_misc binfmt_misc "$BINFMT" 2>/dev/null ||
            cannot "emulate arm64: mounting binfmt_misc on $BINFMT was refused (a container without the privilege?)"
    fi
    if [[ ! -e $BINFMT/qemu-aarch64 ]]; then
        if ! command -v update-binfmts >/dev/null || [[ ! -e /usr/share/binfmts/qemu-aarch64 ]]; then
            cannot "emulate arm64: qemu-aarch64 is not registered; apt-get install qemu-user-static binfmt-support"
        fi
        update-binfmts --enable qemu-aarch64 ||
            cannot "emulate arm64: update-binfmts --enable qemu-aarch64 failed"
    fi
    grep -qx enabled "$BINFMT/qemu-aarch64" || cannot "emulate arm64: $BINFMT/qemu-aarch64 is disabled"
    grep -q '^flags: .*F' "$BINFMT/qemu-aarch64" ||
        cannot "emulate arm64: qemu-aarch64 is registered without the F flag (reinstall qemu-user-static)"
}

build() {
    need_root
    ensure_binfmt
    if [[ -e $ROOT/$STAMP ]]; then
        echo "arm64 root: $ROOT (already built)" >&2
        return
    fi
    command -v debootstrap >/dev/null || cannot "build the arm64 root: no debootstrap; apt-get install debootstrap"
    rm -rf "$ROOT"
    mkdir -p "$ROOT"
    echo "debootstrap --arch=arm64 --variant=minbase bookworm from $MIRROR (a few minutes) ..." >&2
    local log="$ROOT.debootstrap.log" cache="$ROOT.debs"
    mkdir -p "$cache"  # the downloaded .debs, kept so that a rebuild downloads nothing
    if ! debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv \
            --cache-dir="$cache" bookworm "$ROOT" "$MIRROR" >"$log" 2>&1; then
        if grep -qiE 'Failed getting release file|could not resolve|unable to fetch|Connection refused' "$log"; then
            cannot "build the arm64 root: the mirror $MIRROR is unreachable (set POLELINK_DEBIAN_MIRROR); see $log"
        fi
        fail "debootstrap failed; see $log"
    fi
    local arch
    arch="$(chroot "$ROOT" /usr/bin/python3 -c 'import platform; print(platform.machine())')"
    [[ $arch == aarch64 ]] || fail "the root's python3 reports machine '$arch', not aarch64"
    date -u +%FT%TZ >"$ROOT/$STAMP"
    echo "arm64 root: $ROOT ($(du -sm "$ROOT" | cut -f1) MB)" >&2
}

# Run a command in the root: its own mount namespace with /proc, no network at all, and a
# clean environment (nothing of this machine's pip or Python settings leaks in). /sys is
# left out on purpose: with it, onnxruntime's cpuinfo goes on to parse the host's x86
# /proc/cpuinfo as an ARM one and crashes under qemu-user; without it, it warns and runs.
in_root() {
    unshare --net --mount --pid --fork --mount-proc="$ROOT/proc" chroot "$ROOT" \
        /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

install_wheelhouse() {
    need_root
    ensure_binfmt
    [[ -e $ROOT/$STAMP ]] || fail "no arm64 root at $ROOT; run: $0 build --root $ROOT"
    [[ -e $WHEELHOUSE/requirements.txt ]] || fail "no wheelhouse at $WHEELHOUSE; run: make wheelhouse"
    local agent_wheel
    agent_wheel="$(cd "$WHEELHOUSE" && ls polelink-*.whl)" || fail "no polelink wheel in $WHEELHOUSE"
    rm -rf "$ROOT/opt/polelink/wheelhouse"
    mkdir -p "$ROOT/opt/polelink"
    cp -a "$WHEELHOUSE" "$ROOT/opt/polelink/wheelhouse"
    [[ -x $ROOT/opt/polelink/venv/bin/python ]] || in_root python3 -m venv /opt/polelink/venv
    echo "installing the wheelhouse offline (pip --no-index, no network) ..." >&2
    in_root /opt/polelink/venv/bin/pip install --quiet --no-index --disable-pip-version-check \
        --find-links /opt/polelink/wheelhouse --require-hashes -r /opt/polelink/wheelhouse/requirements.txt
    in_root /opt/polelink/venv/bin/pip install --quiet --no-index --disable-pip-version-check \
        --no-deps --force-reinstall "/opt/polelink/wheelhouse/$agent_wheel"
    local venv_mb
    venv_mb="$(du -sm "$ROOT/opt/polelink/venv" | cut -f1)"
    echo "installed: $ROOT/opt/polelink/venv is $venv_mb MB" >&2
    echo "{\"venv_mb\": $venv_mb}"
}

case "$CMD" in
    build) build ;;
    install) install_wheelhouse ;;
    run)
        need_root
        ensure_binfmt
        [[ -e $ROOT/$STAMP ]] || fail "no arm64 root at $ROOT; run: $0 build --root $ROOT"
        [[ $# -ge 1 ]] || usage
        in_root "$@"
        ;;
    *) usage ;;
esac
