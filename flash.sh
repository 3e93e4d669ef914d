#!/usr/bin/env bash
# flash.sh: write Raspberry Pi OS and polelink onto a pole's SD card, verified.
# See docs/technicians/flashing.md. Exit codes: 0 done, 1 bad input or refused target,
# 2 usage error, 3 the write or its verification failed (do not use the card).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIB=$HERE/deploy/flash
# the repository's venv (make test/demo creates it) has pip, setuptools and wheel for the build
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=python3; fi
fi

usage() {
    cat <<'EOF'
usage: flash.sh node --port /dev/ttyUSB0 --config NODE.json [--board esp32|rp2040] [--firmware FILE]
                     [--umqtt DIR] [--yes] [--dry-run] [--verify-only]   (a lamp node: flash.sh node --help)
       flash.sh --image IMAGE[.xz] --config POLE.yaml [--secrets SECRETS.yaml] [--site SITE.yaml]
                (--wheelhouse DIR | --agent-in-image) [--hostname NAME] [--network-config FILE]
                [--provision auto|cloud-init|firstrun] [--no-validate]
                (--device /dev/sdX [--yes --expect-serial SERIAL] | --to-file OUT.img [--force])

Writes the image, verifies it by reading it back, then puts the agent (a wheel of this
repository, plus the wheels in --wheelhouse), the pole's files (/etc/polelink/), the systemd
unit and the first-boot provisioning on it, and reads those back too. Before writing
anything it checks every input: the image (partition table, boot partition, cmdline.txt, room
on the root), the wheels, the network-config, and the pole's files with the agent's own
`agent validate` (as the pole will have them: pole.yaml, site.yaml, secrets.yaml).

  --image FILE          Raspberry Pi OS image, raw or .xz (streamed, never unpacked to disk)
  --config FILE         the pole's provisioning file -> /etc/polelink/pole.yaml
  --secrets FILE        -> /etc/polelink/secrets.yaml, mode 0600, on the root partition
                           (without it: an empty one; the unit hands it to the agent)
  --site FILE           the site defaults file -> /etc/polelink/site.yaml
  --wheelhouse DIR      required: the wheels the Pi installs from, offline (aarch64, CPython
                        3.11; `make wheelhouse` builds them in var/wheelhouse/aarch64); checked
                        before writing with pip install --dry-run for the Pi. A polelink wheel
                        in it is used as is, otherwise one is built from this repository
  --agent-in-image      instead of --wheelhouse: the image already holds the agent (a
                        golden image: /var/lib/polelink/current -> releases/V with
                        venv/bin/agent); checked before writing a raw image, after
                        writing an .xz one; first boot then installs nothing
  --hostname NAME       the Pi's hostname (default: the config file's name without .yaml)
  --network-config FILE cloud-init network-config to use instead of DHCP on eth0
  --provision KIND      first-boot mechanism; auto (default) detects it from the image
  --no-validate         skip `agent validate` (for a python that cannot import the agent)
  --device DEV          the SD card's whole disk; refused unless removable, unmounted and
                        not the system disk; asks for its serial to be typed
  --yes --expect-serial SERIAL
                        no question: go on only if the card's serial is SERIAL
  --to-file FILE        write an image file instead of a card (--force: overwrite a regular
                        file); written beside it under a temporary name, renamed when verified

Exit codes: 0 done; 1 bad input or refused target, nothing written; 2 usage error; 3 the
write or its verification failed, or it was interrupted while writing (do not use the card;
a --to-file output is removed).
EOF
}

# Ctrl-C ends a Python helper as the signal itself, from its first line on: no
# KeyboardInterrupt traceback however early it comes, and bash, seeing its child die of
# SIGINT, runs the INT trap below, which says in one line what was left behind. The helpers'
# temporary files live in the work directory (TMPDIR), which the trap removes.
QUIET='import signal; signal.signal(signal.SIGINT, signal.SIG_DFL)
'
helper() {  # helper NAME.py ARGS...: a script of deploy/flash, run as its own __main__
    local script=$LIB/$1
    shift
    "$PYTHON" -c "$QUIET"'import os, runpy, sys
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")' "$script" "$@"
}
free_bytes() {  # free_bytes DIR: what an unprivileged writer may still write there
    "$PYTHON" -c "$QUIET"'import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_bavail * s.f_frsize)' "$1"
}

die() {  # die CODE MESSAGE...
    local code=$1
    shift
    echo "flash.sh: $*" >&2
    exit "$code"
}
step() { echo "==> $*" >&2; }

image='' config='' secrets='' site='' wheelhouse='' device='' to_file='' yes=0 expect_serial=''
agent_in_image=0
hostname='' network_config='' provision=auto force=0 validate=1

if [ $# -gt 0 ] && [[ $1 != -* ]]; then
    case $1 in
        node) shift; exec "$PYTHON" "$LIB/node.py" "$@" ;;  # a lamp node (ESP32/RP2040): see its --help
        help) usage; exit 0 ;;
        *) die 2 "unknown subcommand '$1' (flash.sh takes options only; see flash.sh --help)" ;;
    esac
fi
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then die 2 "$1 needs a value (see flash.sh --help)"; fi
}
while [ $# -gt 0 ]; do
    opt=$1
    if [[ $opt == --*=* ]]; then
        set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
        opt=$1
    fi
    case $opt in
        --image) need_value "$@"; image=$2; shift 2 ;;
        --config) need_value "$@"; config=$2; shift 2 ;;
        --secrets) need_value "$@"; secrets=$2; shift 2 ;;
        --site) need_value "$@"; site=$2; shift 2 ;;
        --wheelhouse) need_value "$@"; wheelhouse=$2; shift 2 ;;
        --device) need_value "$@"; device=$2; shift 2 ;;
        --to-file) need_value "$@"; to_file=$2; shift 2 ;;
        --expect-serial) need_value "$@"; expect_serial=$2; shift 2 ;;
        --hostname) need_value "$@"; hostname=$2; shift 2 ;;
        --network-config) need_value "$@"; network_config=$2; shift 2 ;;
        --provision) need_value "$@"; provision=$2; shift 2 ;;
        --yes) yes=1; shift ;;
        --force) force=1; shift ;;
        --no-validate) validate=0; shift ;;
        --agent-in-image) agent_in_image=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) die 2 "unknown option '$opt' (see flash.sh --help)" ;;
    esac
done

# ---- the command line --------------------------------------------------------------------
[ -n "$image" ] || die 2 "--image is required (see flash.sh --help)"
[ -n "$config" ] || die 2 "--config is required (see flash.sh --help)"
if [ -n "$device" ] && [ -n "$to_file" ]; then die 2 "give --device or --to-file, not both"; fi
if [ -z "$device" ] && [ -z "$to_file" ]; then die 2 "give --device /dev/sdX or --to-file OUT.img"; fi
if [ "$yes" = 1 ] && [ -z "$expect_serial" ]; then
    die 2 "--yes needs --expect-serial SERIAL: the card's serial is the proof that it is the right one"
fi
if [ -n "$expect_serial" ] && [ "$yes" = 0 ]; then die 2 "--expect-serial goes with --yes"; fi
if [ -n "$to_file" ] && { [ "$yes" = 1 ] || [ -n "$expect_serial" ]; }; then
    die 2 "--yes and --expect-serial are for --device; --to-file asks nothing"
fi
case $provision in auto | cloud-init | firstrun) ;; *) die 2 "--provision must be auto, cloud-init or firstrun, not '$provision'" ;; esac

readable_file() {  # readable_file OPTION PATH
    [ -e "$2" ] || die 1 "$1 $2: no such file"
    [ -f "$2" ] || die 1 "$1 $2: not a regular file"
    [ -r "$2" ] || die 1 "$1 $2: not readable"
    [ -s "$2" ] || die 1 "$1 $2: empty file"
}
readable_file --image "$image"
readable_file --config "$config"
if [ -n "$secrets" ]; then readable_file --secrets "$secrets"; fi
if [ -n "$site" ]; then readable_file --site "$site"; fi
if [ -n "$network_config" ]; then readable_file --network-config "$network_config"; fi
if [ -n "$wheelhouse" ] && [ "$agent_in_image" = 1 ]; then
    die 2 "give --wheelhouse or --agent-in-image, not both"
fi
if [ "$agent_in_image" = 0 ]; then
    [ -n "$wheelhouse" ] || die 2 "--wheelhouse DIR is required: the wheels the Pi installs the agent from," \
        "offline (aarch64, CPython 3.11); make wheelhouse builds them in var/wheelhouse/aarch64" \
        "(--agent-in-image instead, for an image that already holds the agent)"
    [ -d "$wheelhouse" ] || die 1 "--wheelhouse $wheelhouse: not a directory"
    compgen -G "$wheelhouse/*.whl" >/dev/null || die 1 "--wheelhouse $wheelhouse: no .whl files in it"
fi
# debugfs splits its arguments at white space and '?', mtools reads '@@' as an offset: the paths
# they get (the target, the work directory) must be plain
plain_path() { [[ $1 =~ ^[A-Za-z0-9._/+,=-]+$ ]]; }
[ -n "$hostname" ] || hostname=$(basename "$config" .yaml)
hostname=${hostname%.yml}
[[ $hostname =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] ||
    die 1 "hostname '$hostname' is not valid (lower-case letters, digits and '-', at most 63): use --hostname"

missing=()
for tool in "$PYTHON":python3 sfdisk:fdisk debugfs:e2fsprogs dumpe2fs:e2fsprogs e2fsck:e2fsprogs mcopy:mtools mtype:mtools \
    mdir:mtools flock:util-linux; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool%%:*} (Debian package ${tool#*:})")
done
[ ${#missing[@]} -eq 0 ] || die 1 "missing tools: ${missing[*]}"

tmp_root=${TMPDIR:-/tmp}
plain_path "$tmp_root" ||
    die 1 "TMPDIR '$tmp_root' has characters debugfs and mtools cannot take (only letters, digits, ._/+,=-)"
WORK=$(mktemp -d "$tmp_root/polelink-flash.XXXXXX") || die 1 "cannot make a work directory in $tmp_root"
export TMPDIR=$WORK  # every helper's and tool's temporary files: removed with it, whatever happens
partial=''   # the --to-file output being written, under its temporary name
writing=0    # 1 once the target is being written: a failure then is exit 3
cleanup() {
    if [ -n "$partial" ]; then rm -f -- "$partial"; fi
    rm -rf -- "$WORK"
}
interrupted() {
    trap - INT TERM
    if [ "$writing" = 0 ]; then
        echo "flash.sh: interrupted: nothing written" >&2
        exit 1
    elif [ -n "$device" ]; then
        echo "flash.sh: interrupted while writing $device: do not use this card (flash it again)" >&2
    else
        echo "flash.sh: interrupted: the partial output was removed, nothing at $to_file" >&2
    fi
    exit 3
}
trap cleanup EXIT
trap interrupted INT TERM
# a step that failed after the write began: exit 3 (its message is already out); a step
# killed by Ctrl-C or TERM is an interruption, whichever of this and the trap bash runs first
failed() {
    case $? in 130|143) interrupted ;; esac
    exit 3
}

image_size=$("$PYTHON" "$LIB/imagecopy.py" size "$image") || exit 1  # it said why, in one line
[ "$image_size" -gt 0 ] || die 1 "--image $image: empty image"

# ---- the target: refuse anything but the right card ------------------------------------
if [ -n "$device" ]; then
    if [ -n "${POLELINK_FLASH_LSBLK_JSON:-}" ]; then
        echo "flash.sh: TEST MODE: disk facts from $POLELINK_FLASH_LSBLK_JSON and" \
            "${POLELINK_FLASH_MOUNTS:-/proc/mounts} (POLELINK_FLASH_LSBLK_JSON is for tests only)" >&2
    fi
    facts=$(helper disks.py --image-size "$image_size" -- "$device") || exit 1
    field() { "$PYTHON" -c "$QUIET"'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$facts" "$1"; }
    target=$(field path)
    model=$(field model)
    serial=$(field serial)
    size_human=$(field size_human)
    token=${serial:-$(basename "$target")}
    {
        echo
        echo "  target: $target"
        echo "  model:  ${model:-(none reported)}"
        echo "  size:   $size_human"
        if [ -n "$serial" ]; then
            echo "  serial: $serial"
        else
            echo "  serial: (none reported: the disk's name, $token, stands for it)"
        fi
        echo "  EVERYTHING ON IT WILL BE ERASED."
        echo
    } >&2
    if [ "$yes" = 1 ]; then
        [ "$expect_serial" = "$token" ] ||
            die 1 "refused: $target's serial is '$token', not '$expect_serial' (--expect-serial): wrong card?"
    else
        printf 'Type the serial shown above to write to %s: ' "$target" >&2
        answer=''
        IFS= read -r answer || die 1 "refused: no answer on stdin (unattended: --yes --expect-serial SERIAL)"
        [ "$answer" = "$token" ] || die 1 "refused: '$answer' is not the serial '$token': nothing written"
    fi
    [ -w "$target" ] || die 1 "cannot write to $target: run flash.sh as root (sudo)"
    plain_path "$target" || die 1 "$target: a device path debugfs and mtools cannot take"
    # one flash.sh per card; LOCK_EX on the whole disk also keeps udev from probing it meanwhile
    exec 9<"$target" || die 1 "cannot open $target"
    flock -n 9 || die 1 "$target is being written by another flash.sh (or locked by another tool): wait for it"
else
    out_dir=$(dirname -- "$to_file")
    [ ! -b "$to_file" ] || die 1 "--to-file $to_file is a block device: use --device for cards"
    plain_path "$to_file" ||
        die 1 "--to-file '$to_file': only letters, digits and ._/+,=- (debugfs and mtools cannot take the others)"
    [ ! -L "$to_file" ] || die 1 "--to-file $to_file is a symbolic link: give the file itself"
    [ -d "$out_dir" ] || die 1 "--to-file $to_file: no such directory $out_dir"
    if [ -e "$to_file" ]; then
        [ -f "$to_file" ] || die 1 "--to-file $to_file exists and is not a regular file: refusing to replace it"
        [ "$force" = 1 ] || die 1 "--to-file $to_file exists (--force overwrites it)"
        for input in "$image" "$config" "$secrets" "$site" "$network_config" "$wheelhouse"/*.whl; do
            if [ -n "$input" ] && [ "$to_file" -ef "$input" ]; then
                die 1 "--to-file $to_file is one of the inputs ($input): refusing to overwrite it"
            fi
        done
    fi
    # the whole image is written beside the old output before replacing it: room for all of it
    free=$(free_bytes "$out_dir") ||
        die 1 "--to-file $to_file: cannot read the free space of $out_dir"
    [ "$free" -ge "$image_size" ] ||
        die 1 "--to-file $to_file: $out_dir has $((free / 1000000)) MB free, the image needs" \
            "$(((image_size + 999999) / 1000000)) MB: free some space or write elsewhere; nothing written"
    # one flash.sh at a time per output directory
    exec 9<"$out_dir" || die 1 "cannot open $out_dir"
    flock -n 9 || die 1 "another flash.sh is writing into $out_dir: wait for it to finish"
    # written under a temporary name beside it, renamed over it only when verified
    partial=$(mktemp "$out_dir/.polelink-flash.XXXXXX") || die 1 "--to-file: cannot create a file in $out_dir"
    chmod "$(printf '%04o' $((0666 & ~0$(umask))))" "$partial"  # mktemp's 0600, as a new file would be
    target=$partial
fi

# ---- the agent: a wheel of this repository, and the wheelhouse --------------------------
mkdir -p "$WORK/wheels" "$WORK/stage" "$WORK/boot"
if [ "$agent_in_image" = 1 ]; then
    :  # nothing to install: the image's own release (checked with the image, below)
else
    # the work directory holds a copy of the wheelhouse, the agent's source and wheel and, for
    # an .xz image, the start of the image (its boot partition: up to a few hundred MB)
    need=$(( $(du -cb -- "$wheelhouse"/*.whl | tail -n 1 | cut -f1) + 160 * 1024 * 1024 ))
    tmp_free=$(free_bytes "$WORK") || die 1 "cannot read the free space of $tmp_root (TMPDIR)"
    [ "$tmp_free" -ge "$need" ] ||
        die 1 "TMPDIR $tmp_root has $((tmp_free / 1000000)) MB free, flash.sh needs about" \
            "$((need / 1000000)) MB there (the wheelhouse and the image's start): set TMPDIR to a folder with room"
    helper checks.py wheels "$wheelhouse"/*.whl || exit 1
    cp -- "$wheelhouse"/*.whl "$WORK/wheels/" || die 1 "--wheelhouse $wheelhouse: cannot copy its wheels"
    shopt -s nocaseglob  # PoleLink-*.whl is the agent's wheel too (distribution names ignore case)
    if ! compgen -G "$WORK/wheels/polelink-*.whl" >/dev/null; then
        step "building the agent's wheel (pip wheel --no-deps)"
        # from a clean copy of the files git knows (committed or not, ignored ones left out): an
        # old build/ in the checkout could otherwise slip stale modules into the wheel
        src=$HERE
        if git -C "$HERE" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
            src=$WORK/src
            mkdir -p "$src"
            (cd "$HERE" && git ls-files -z --cached --others --exclude-standard |
                while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done |
                tar --null -T - -cf -) | tar -xf - -C "$src"
        fi
        "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WORK/wheels" "$src" >"$WORK/pip.log" 2>&1 ||
            die 1 "building the agent's wheel failed (needs pip, setuptools and wheel): $(tail -n 1 "$WORK/pip.log")"
    fi
    agent_wheels=("$WORK"/wheels/polelink-*.whl)
    shopt -u nocaseglob
    [ ${#agent_wheels[@]} -eq 1 ] || die 1 "more than one polelink wheel in the wheelhouse: ${agent_wheels[*]##*/}"
    helper checks.py wheels "${agent_wheels[0]}" || exit 1
    version=$(helper checks.py version "${agent_wheels[0]}") || exit 1
    # the unit, the update guard and first boot on the card come from this checkout: its agent
    ours=$(sed -n 's/^__version__ = "\(.*\)".*/\1/p' "$HERE/agent/__init__.py")
    [ "$version" = "$ours" ] ||
        die 1 "--wheelhouse $wheelhouse: its agent is polelink $version, this checkout is $ours (the" \
            "unit and update guard on the card come from the checkout): make wheelhouse again, or" \
            "remove ${agent_wheels[0]##*/} from it to build this checkout's"
    # the card's first boot installs with pip --no-index from these wheels alone: a wheelhouse that
    # lacks a dependency, or holds another machine's wheels, would make a card that never runs
    step "checking that polelink $version installs from the wheelhouse on the Pi (pip --dry-run, offline)"
    helper checks.py installable "$WORK/wheels" "$version" "$wheelhouse" || exit 1
fi

# ---- the pole's files and the image, checked before anything is written ----------------------
if [ -n "$network_config" ]; then helper checks.py netconfig "$network_config" || exit 1; fi
if [ "$validate" = 1 ]; then
    step "validating the pole's files (agent validate, as /etc/polelink/ on the pole)"
    helper checks.py validate "$WORK/etc" "$config" "${secrets:--}" "${site:--}" || exit 1
fi
if [ -z "$secrets" ]; then
    secrets=$WORK/no-secrets.yaml
    printf '# no secrets given to flash.sh: references to secrets in the config fail validation\n{}\n' >"$secrets"
fi

step "inspecting $image"
inspected=$image
inspect_opts=()
if "$PYTHON" -c "$QUIET"'import sys; sys.exit(open(sys.argv[1], "rb").read(6) != b"\xfd7zXZ\x00")' "$image"; then
    inspected=$WORK/prefix.img  # the partition table, the boot partition, the root's start
    "$PYTHON" "$LIB/imagecopy.py" prefix "$image" "$inspected" || exit 1
    inspect_opts=(--boot-only)
fi
image_facts=$(helper inject.py inspect "$inspected" "$WORK/cmdline.in" "${inspect_opts[@]}" ||
    exit 1) || exit 1
# the wheels are for the Pi's Python (3.11, aarch64): a 32-bit or a Trixie image could never
# install them. A raw image's root is all here; an .xz one's is known after writing.
if [ "$agent_in_image" = 0 ] && [ "$inspected" = "$image" ]; then
    py_found=$(helper inject.py python "$image" --before) || exit 1
    echo "the image runs Python $py_found" >&2
fi
if [ "$agent_in_image" = 1 ]; then
    if [ "$inspected" = "$image" ]; then  # a raw image: its root is all here
        version=$(helper inject.py installed "$image" --before) || exit 1
        echo "the image holds polelink $version (--agent-in-image)" >&2
    else
        version='(in the image)'  # an .xz: its root is known after writing
    fi
fi
jget() { "$PYTHON" -c "$QUIET"'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
image_flavour=$provision
if [ "$provision" = auto ]; then image_flavour=$(jget "$image_facts" flavour); fi
if [ -n "$network_config" ] && [ "$image_flavour" = firstrun ]; then
    die 1 "--network-config needs a cloud-init image (this one uses firstrun.sh)"
fi
if [ -n "$network_config" ] && [ -z "$image_flavour" ]; then
    die 1 "--network-config: whether this .xz image uses cloud-init shows only in its root partition," \
        "after writing: give --provision cloud-init if it does"
fi
if [ "$image_flavour" != cloud-init ] && [ "$(jget "$image_facts" cmdline)" != True ]; then
    die 1 "the image's boot partition has no cmdline.txt: not a Raspberry Pi OS image? (--provision cloud-init?)"
fi
rel=/var/lib/polelink/releases/$version
manifest=$WORK/manifest
n=0
entry() { printf '%s\t%s\t%s\t%s\n' "$@" >>"$manifest"; }  # entry FS MODE SOURCE DEST
stage() {  # stage FS MODE SOURCE DEST: copy SOURCE under a plain name, add it to the manifest
    n=$((n + 1))
    ln "$3" "$WORK/stage/$n" 2>/dev/null || cp "$3" "$WORK/stage/$n"  # a link: wheels are big
    entry "$1" "$2" "$WORK/stage/$n" "$4"
}
entry dir 0755 - /etc/polelink
stage root 0644 "$config" /etc/polelink/pole.yaml
if [ -n "$site" ]; then stage root 0644 "$site" /etc/polelink/site.yaml; fi
# secrets on the ext4 root, 0600: the FAT boot partition has no permissions, and anyone who
# takes the card out of the pole reads it in any computer
# (always one: the unit hands it to the agent with LoadCredential=, which needs the file)
stage root 0600 "$secrets" /etc/polelink/secrets.yaml
stage root 0644 "$HERE/deploy/systemd/polelink.service" /etc/systemd/system/polelink.service
# systemd-sysusers creates the agent's user and its groups early in the first boot
stage root 0644 "$HERE/deploy/systemd/polelink.sysusers.conf" /usr/lib/sysusers.d/polelink.conf
cat >"$WORK/dropin.conf" <<'EOF'
# written by flash.sh: until first boot has installed the agent, the unit is skipped (a
# condition, not a failure that would use up the restart limit); first boot starts it.
[Unit]
ConditionPathExists=/var/lib/polelink/current/venv/bin/agent
EOF
stage root 0644 "$WORK/dropin.conf" /etc/systemd/system/polelink.service.d/10-first-boot.conf
entry link - /etc/systemd/system/polelink.service /etc/systemd/system/multi-user.target.wants/polelink.service
# the update guard lives outside the releases it judges (a release that crashes at start
# never runs its own code), and its timer checks a release on trial against its deadline
entry dir 0755 - /usr/local/lib/polelink
stage root 0644 "$HERE/agent/update/guard.py" /usr/local/lib/polelink/update-guard.py
stage root 0644 "$HERE/deploy/systemd/polelink-update-guard.service" /etc/systemd/system/polelink-update-guard.service
stage root 0644 "$HERE/deploy/systemd/polelink-update-guard.timer" /etc/systemd/system/polelink-update-guard.timer
entry link - /etc/systemd/system/polelink-update-guard.timer /etc/systemd/system/timers.target.wants/polelink-update-guard.timer
entry dir 0750 - /var/lib/polelink
if [ "$agent_in_image" = 0 ]; then
    entry dir 0755 - /var/lib/polelink/releases
    entry dir 0755 - "$rel"
fi
if [ "$agent_in_image" = 0 ]; then
    for whl in "$WORK"/wheels/*.whl; do stage root 0644 "$whl" "$rel/wheels/$(basename "$whl")"; done
    stage root 0644 "$HERE/README.md" "$rel/README.md"
    # the technicians' pages, which the README links: read at the pole, without a network
    entry dir 0755 - "$rel/docs"
    entry dir 0755 - "$rel/docs/technicians"
    for page in "$HERE"/docs/technicians/*.md; do
        stage root 0644 "$page" "$rel/docs/technicians/$(basename "$page")"
    done
fi

helper inject.py space "$inspected" "$manifest" || exit 1

# ---- write, then read back --------------------------------------------------------------
step "writing $image ($image_size bytes) to ${to_file:-$target}"
writing=1
kind='file'
if [ -n "$device" ]; then kind=device; fi
source_sha=$("$PYTHON" "$LIB/imagecopy.py" write "$image" "$target" "$kind" "${to_file:-$target}") || failed
if [ -n "${POLELINK_FLASH_TEST_CORRUPT_AT:-}" ]; then  # test only: a card that lies
    echo "flash.sh: TEST HOOK: flipping the byte at ${POLELINK_FLASH_TEST_CORRUPT_AT}" >&2
    "$PYTHON" "$LIB/imagecopy.py" flip "$target" "$POLELINK_FLASH_TEST_CORRUPT_AT"
fi
if [ -n "$device" ]; then blockdev --flushbufs "$target" 2>/dev/null || true; fi
step "verifying: reading $image_size bytes back"
written_sha=$("$PYTHON" "$LIB/imagecopy.py" hash "$target" "$image_size") || failed
[ "$source_sha" = "$written_sha" ] ||
    die 3 "VERIFY FAILED: $target reads back as sha256 $written_sha, the image is $source_sha. Do not use this card (try another one)."
echo "verified: sha256 $source_sha" >&2

# ---- what goes on it ---------------------------------------------------------------------
if [ -n "$device" ]; then  # a desktop may automount the new partitions: never write under a mount
    helper disks.py -- "$device" >/dev/null ||
        die 3 "$target was mounted while flash.sh wrote it (desktop automount?): unmount it and flash again"
fi
detected=$(helper inject.py detect "$target") || failed
if [ "$agent_in_image" = 1 ]; then
    version=$(helper inject.py installed "$target") || failed
elif [ "$inspected" != "$image" ]; then
    py_found=$(helper inject.py python "$target") || failed
    echo "the image runs Python $py_found" >&2
fi
boot_dir=$(jget "$detected" boot_dir)
if [ "$provision" = auto ]; then
    provision=$(jget "$detected" flavour)
    echo "first boot: $provision ($(jget "$detected" why))" >&2
else
    echo "first boot: $provision (--provision)" >&2
fi

fb=(--version "$version" --hostname "$hostname")
if [ "$agent_in_image" = 1 ]; then fb+=(--no-install); fi
if [ "$provision" = cloud-init ]; then
    if [ -n "$network_config" ]; then fb+=(--network-config "$network_config"); fi
    helper firstboot.py cloud-init "$WORK/boot" "${fb[@]}" || failed
    for f in user-data meta-data network-config; do stage boot - "$WORK/boot/$f" "/$f"; done
else
    [ -z "$network_config" ] || die 3 "--network-config needs a cloud-init image (this one uses firstrun.sh)"
    helper firstboot.py firstrun "$WORK/boot" "${fb[@]}" --boot-dir "$boot_dir" || failed
    stage boot - "$WORK/boot/firstrun.sh" /firstrun.sh
    [ -s "$WORK/cmdline.in" ] ||
        die 3 "the image's boot partition has no cmdline.txt: not a Raspberry Pi OS image? (--provision cloud-init?)"
    helper firstboot.py cmdline "$WORK/cmdline.in" "$WORK/boot/cmdline.txt" \
        --script "$boot_dir/firstrun.sh" || failed
    stage boot - "$WORK/boot/cmdline.txt" /cmdline.txt
fi

step "installing polelink $version, the pole's files and first boot ($provision) on the partitions"
helper inject.py write "$target" "$manifest" || failed
sync
if [ -n "$device" ]; then blockdev --flushbufs "$target" 2>/dev/null || true; fi
step "verifying: reading the installed files back"
checked=$(helper inject.py verify "$target" "$manifest") || die 3 "Do not use this card."
echo "verified: $checked files and links read back with their content and modes; e2fsck: clean" >&2
if [ -n "$to_file" ]; then
    mv -f -- "$partial" "$to_file" || die 3 "cannot rename $partial to $to_file"
    partial=''
    target=$to_file
fi
echo "done: $target holds the image and polelink $version for $hostname (first boot: $provision)" >&2
