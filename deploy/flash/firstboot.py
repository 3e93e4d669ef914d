"""Render the first-boot provisioning that flash.sh puts on a card's boot partition.

Two flavours, one set of steps (``steps()``): create the ``polelink`` system user (groups dialout,
video), hand it its secrets file, install the agent's venv offline from the wheels flash.sh put in the
release directory, point ``/var/lib/polelink/current`` at it atomically and start the service.

``firstboot.py cloud-init OUTDIR --version V --hostname H [--network-config FILE]``
    writes OUTDIR/user-data, OUTDIR/meta-data, OUTDIR/network-config
``firstboot.py firstrun OUTDIR --version V --hostname H --boot-dir DIR``
    writes OUTDIR/firstrun.sh (the Raspberry Pi Imager's mechanism: cmdline.txt's systemd.run=)
``--no-install``: the image already holds the agent (flash.sh --agent-in-image): no venv, no pip
``firstboot.py cmdline CMDLINE_IN CMDLINE_OUT --script PATH``
    adds the systemd.run= hook to a cmdline.txt, keeping it one line
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

STATE = "/var/lib/polelink"
LOG = "/var/log/polelink-firstboot.log"
HOOK = "systemd.run={script} systemd.run_success_action=reboot systemd.unit=kernel-command-line.target"


def steps(version: str, install: bool = True) -> list[str]:
    """The shell commands that make a flashed card a running pole (run as root, once).
    ``install``: False when the image already holds the agent (``--agent-in-image``): no
    venv, no pip, ``current`` left as the image has it."""
    rel = f"{STATE}/releases/{version}"
    q = shlex.quote
    user = [
        "id -u polelink >/dev/null 2>&1 || useradd --system --user-group --home-dir "
        f"{STATE} --no-create-home --shell /usr/sbin/nologin polelink",
        "usermod -a -G dialout,video polelink",
        "chown polelink:polelink /etc/polelink/secrets.yaml 2>/dev/null || true",
    ]
    venv = [
        f"python3 -m venv {q(rel + '/venv')}",
        f"{q(rel + '/venv/bin/pip')} install --no-index --find-links {q(rel + '/wheels')} "
        f"{q('polelink==' + version)}",
        f"ln -sfn {q('releases/' + version)} {STATE}/current.new",
        f"mv -T {STATE}/current.new {STATE}/current",
    ]
    return [*user, *(venv if install else []), "systemctl daemon-reload",
            "systemctl enable polelink.service"]


def user_data(version: str, hostname: str, install: bool = True) -> str:
    """cloud-init user-data (#cloud-config). JSON is YAML, so no YAML library is needed."""
    doc = {
        "hostname": hostname,
        "users": ["default", {"name": "polelink", "system": True, "groups": "dialout,video",
                              "shell": "/usr/sbin/nologin", "homedir": STATE, "no_create_home": True,
                              "lock_passwd": True}],
        # one script under `set -e`: `current` is linked only after the venv installed
        "runcmd": [["sh", "-ec", "\n".join([f"exec >>{LOG} 2>&1", *steps(version, install)[2:],
                                             "systemctl start --no-block polelink.service"])]],
    }
    return "#cloud-config\n# written by polelink flash.sh: first-boot provisioning (see the README)\n" + \
        json.dumps(doc, indent=2) + "\n"


def meta_data(hostname: str) -> str:
    """cloud-init meta-data for the NoCloud datasource (the boot partition)."""
    return f"instance-id: polelink-{hostname}\nlocal-hostname: {hostname}\n"


NETWORK_CONFIG = """\
# written by polelink flash.sh: wired Ethernet with DHCP (replace with --network-config FILE)
network:
  version: 2
  ethernets:
    eth0:
      dhcp4: true
      optional: true
"""


def firstrun(version: str, hostname: str, boot_dir: str, install: bool = True) -> str:
    """firstrun.sh: the steps, then it removes itself and its cmdline.txt hook, and the Pi reboots.

    The service is enabled, not started: systemd.run_success_action reboots into it.
    """
    body = "\n".join(steps(version, install))
    return f"""#!/bin/bash
# written by polelink flash.sh: first-boot provisioning through cmdline.txt's systemd.run= hook
# (the Raspberry Pi Imager's mechanism). It runs once; whatever happens it removes itself and
# its hook so that the Pi boots normally afterwards. Log: {LOG}
set -u
BOOT={shlex.quote(boot_dir)}
exec >>{LOG} 2>&1
echo "polelink first boot: $(date -Is)"
if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
    /usr/lib/raspberrypi-sys-mods/imager_custom set_hostname {shlex.quote(hostname)}
else
    old=$(tr -d ' \\t\\n\\r' </etc/hostname)
    echo {shlex.quote(hostname)} >/etc/hostname
    sed -i "s/127.0.1.1.*$old/127.0.1.1\\t{hostname}/" /etc/hosts
fi
# the steps stop at the first failure, so `current` is linked only to a venv that installed
(
set -e
{body}
)
rc=$?
rm -f "$BOOT/firstrun.sh"
# remove the hook's own words only, word by word: root= and the rest of the line stay
read -r -a words <"$BOOT/cmdline.txt" || true
kept=()
for w in "${{words[@]}}"; do
    case $w in
        systemd.run=* | systemd.run_success_action=* | systemd.run_failure_action=* | \
            systemd.unit=kernel-command-line.target) ;;
        *) kept+=("$w") ;;
    esac
done
printf '%s\n' "${{kept[*]}}" >"$BOOT/cmdline.txt"
echo "polelink first boot finished (exit $rc); the reboot follows"
exit 0
"""


HOOK_WORD = re.compile(r"systemd\.run=.*|systemd\.run_(success|failure)_action=.*|"
                       r"systemd\.unit=kernel-command-line\.target")


def add_hook(cmdline: str, script: str) -> str:
    """cmdline.txt with the systemd.run= hook appended (an older hook replaced); one line.

    Only the hook's own words are removed (``systemd.run=...``, ``systemd.run_success_action=...``,
    ``systemd.run_failure_action=...``, ``systemd.unit=kernel-command-line.target``): every other
    word stays where it is, whatever follows an older hook.
    """
    words = [w for w in cmdline.split() if not HOOK_WORD.fullmatch(w)]
    return " ".join([*words, HOOK.format(script=script)]) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    for name in ("cloud-init", "firstrun"):
        p = sub.add_parser(name)
        p.add_argument("outdir", type=Path)
        p.add_argument("--version", required=True)
        p.add_argument("--hostname", required=True)
        p.add_argument("--network-config", type=Path)
        p.add_argument("--boot-dir", default="/boot/firmware")
        p.add_argument("--no-install", action="store_true",
                       help="the image already holds the agent: no venv, no pip")
    p = sub.add_parser("cmdline")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--script", required=True)
    args = ap.parse_args(argv)
    try:
        if args.what == "cmdline":
            text = _utf8(args.src, "the image's cmdline.txt")
            args.dst.write_text(add_hook(text, args.script), encoding="utf-8")
        elif args.what == "cloud-init":
            (args.outdir / "user-data").write_text(
                user_data(args.version, args.hostname, not args.no_install), encoding="utf-8")
            (args.outdir / "meta-data").write_text(meta_data(args.hostname), encoding="utf-8")
            net = _utf8(args.network_config, f"--network-config {args.network_config}") \
                if args.network_config else NETWORK_CONFIG
            (args.outdir / "network-config").write_text(net, encoding="utf-8")
        else:
            (args.outdir / "firstrun.sh").write_text(
                firstrun(args.version, args.hostname, args.boot_dir, not args.no_install),
                encoding="utf-8")
    except (OSError, ValueError) as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        return 1
    return 0


def _utf8(path: Path, what: str) -> str:
    """A text file's content; ValueError naming ``what`` when it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} is not UTF-8 text (byte {e.start})") from None


if __name__ == "__main__":
    sys.exit(main())
