"""``agent broker-acl``: write the mosquitto ``acl_file`` for a fleet of poles and the platform.

Each pole is named by its provisioning file (``device.id``, ``device.site``, ``mqtt.prefix``,
``mqtt.primary_host``) or by ``--device SITE/DEVICE`` (with ``--prefix``). The device id is
the pole's MQTT username, so it must be unique fleet-wide; a duplicate is refused.

Per device, a ``user <device>`` block grants exactly what the agent does, under its own
site and id only::

    topic write <prefix>/<site>/<device>/status          (retained birth and will)
    topic write <prefix>/<site>/<device>/health
    topic write <prefix>/<site>/<device>/event
    topic write <prefix>/<site>/<device>/traffic/+
    topic write <prefix>/<site>/<device>/lighting/+
    topic write <prefix>/<site>/<device>/diagnostics/+
    topic write <prefix>/<site>/<device>/cmd/response
    topic read  <prefix>/<site>/<device>/cmd              (its own commands)
    topic read  <prefix>/<site>/<device>/ack              (the platform's acknowledgements)
    topic read  <prefix>/STATE/+                          (the platform's online state)

The platform's block: read ``<prefix>/#``, write ``<prefix>/+/+/cmd`` and
``<prefix>/+/+/ack``, readwrite
``<prefix>/STATE/<platform user>`` (its retained state and will: the platform's Sparkplug
host id is its username). Nothing else is granted; mosquitto denies what no line allows.

With ``--platform-consumers N`` (several platform processes sharing one subscription),
users ``<platform user>-2`` … ``-N`` get the same block: the shipped broker config makes
the username the client id (``use_username_as_clientid``), so each consumer needs a
username of its own. ``<platform user>-state`` may only readwrite
``<prefix>/STATE/<platform user>``: the connection on which the one consumer that holds
the STATE lease speaks for all of them (``sim.platform``'s STATE client; it cannot share
a username with a consumer, whose client id it would take over).

Exit codes: 0 written, 1 bad input (unreadable or invalid config, bad ``--device``,
duplicate device id, a device named like the platform user, a device waiting for another
platform host's STATE), 2 usage error.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

EXIT_OK, EXIT_INVALID = 0, 1

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9_/-]{0,62}$")

#: What a device publishes, relative to ``<prefix>/<site>/<device>/`` (``+``: camera or group).
DEVICE_WRITES: tuple[str, ...] = ("status", "health", "event", "traffic/+", "lighting/+",
                                  "diagnostics/+", "cmd/response")


class AclError(ValueError):
    """Bad input for the ACL: the message is a one-line explanation."""


@dataclass(frozen=True)
class DeviceEntry:
    """One pole as the broker sees it: its username (= device id), site and topic prefix."""

    device: str
    site: str
    prefix: str = "polelink"
    primary_host: str | None = None
    source: str = "--device"


def entry_from_config(path: Path) -> DeviceEntry:
    """The :class:`DeviceEntry` of a provisioning file (AclError if it is not valid)."""
    from agent.settings.schema import load_config
    from agent.settings.yamlfile import ConfigError

    try:
        cfg = load_config(path)
    except ConfigError as e:
        first = " ".join(str(e.problems[0] if e.problems else e).split())
        more = f" (and {len(e.problems) - 1} more)" if len(e.problems) > 1 else ""
        raise AclError(f"invalid config: {first}{more}; see: agent validate {path}") from None
    mqtt = cfg.mqtt
    return DeviceEntry(device=cfg.device.id, site=cfg.device.site,
                       prefix=mqtt.prefix if mqtt else "polelink",
                       primary_host=mqtt.primary_host if mqtt else None, source=str(path))


def entry_from_arg(text: str, prefix: str) -> DeviceEntry:
    """The :class:`DeviceEntry` of a ``--device SITE/DEVICE`` argument."""
    site, sep, device = text.partition("/")
    if not sep or not NAME_RE.match(site) or not NAME_RE.match(device):
        raise AclError(f"--device {text!r}: expected SITE/DEVICE, each lower-case letters, "
                       "digits, '-' and '_', starting with a letter or digit, at most 63")
    return DeviceEntry(device=device, site=site, prefix=prefix, source=f"--device {text}")


def platform_users(platform_user: str, consumers: int = 1) -> list[str]:
    """The platform's usernames: one per consumer (the first is ``platform_user``), then
    the STATE speaker's, ``<platform_user>-state``."""
    return ([platform_user] + [f"{platform_user}-{i}" for i in range(2, consumers + 1)]
            + [f"{platform_user}-state"])


def check_fleet(devices: Sequence[DeviceEntry], platform_user: str, consumers: int = 1) -> None:
    """AclError on the first thing that would make the ACL wrong or ambiguous."""
    if not NAME_RE.match(platform_user) or len(platform_user) > 56:
        raise AclError(f"--platform-user {platform_user!r}: lower-case letters, digits, '-' "
                       "and '_', starting with a letter or digit, at most 56 (the STATE user "
                       "adds '-state')")
    if not 1 <= consumers <= 99:
        raise AclError(f"--platform-consumers {consumers}: from 1 to 99")
    if not devices:
        raise AclError("no devices: give provisioning files or --device SITE/DEVICE")
    seen: dict[str, DeviceEntry] = {}
    ours = platform_users(platform_user, consumers)
    for d in devices:
        if d.device in ours:
            which = ("the platform's username" if d.device == platform_user else
                     f"one of the platform's usernames ({', '.join(ours)})")
            raise AclError(f"device id {d.device!r} ({d.source}) is {which}; choose another "
                           "--platform-user or rename the device")
        if d.device in seen:
            raise AclError(f"duplicate device id {d.device!r} in {seen[d.device].source} and "
                           f"{d.source}: the device id is the MQTT username and must be "
                           "unique fleet-wide")
        seen[d.device] = d
        if d.primary_host is not None and d.primary_host != platform_user:
            raise AclError(f"{d.source}: mqtt.primary_host is {d.primary_host!r} but the "
                           f"platform user is {platform_user!r}: the platform may publish only "
                           f"{d.prefix}/STATE/{platform_user}, so the device would wait forever; "
                           f"use --platform-user {d.primary_host}")


def device_block(d: DeviceEntry) -> list[str]:
    """The ``user`` block of one device: its publish topics, its commands, the STATE."""
    base = f"{d.prefix}/{d.site}/{d.device}"
    return ([f"# {' '.join(d.source.split())}", f"user {d.device}"]
            + [f"topic write {base}/{t}" for t in DEVICE_WRITES]
            + [f"topic read {base}/cmd", f"topic read {base}/ack",
               f"topic read {d.prefix}/STATE/+"])


def platform_block(user: str, prefixes: Iterable[str]) -> list[str]:
    """The platform's ``user`` block: read everything under each prefix, write commands
    and its own STATE."""
    lines = [f"user {user}"]
    for p in prefixes:
        lines += [f"topic read {p}/#", f"topic write {p}/+/+/cmd", f"topic write {p}/+/+/ack",
                  f"topic readwrite {p}/STATE/{user}"]
    return lines


def state_block(platform_user: str, prefixes: Iterable[str]) -> list[str]:
    """The STATE speaker's block: its host's STATE topic, nothing else."""
    return [f"user {platform_user}-state"] + [f"topic readwrite {p}/STATE/{platform_user}"
                                              for p in prefixes]


def render_acl(devices: Sequence[DeviceEntry], platform_user: str = "platform",
               consumers: int = 1) -> str:
    """The whole ``acl_file`` text (checks the fleet first; AclError if it is wrong)."""
    check_fleet(devices, platform_user, consumers)
    prefixes = sorted({d.prefix for d in devices})
    out = ["# mosquitto acl_file written by `agent broker-acl`; regenerate, do not edit.",
           "# No topic lines before the first `user`: anonymous clients get nothing.",
           "# Anything not granted below is denied.", "",
           "# the platform: reads all pole data, commands poles, acknowledges, owns its STATE",
           *platform_block(platform_user, prefixes)]
    for user in platform_users(platform_user, consumers)[1:-1]:
        out += ["", f"# platform consumer {user} (--share): the same rights",
                *platform_block(user, prefixes)[:1],
                *[ln.replace(f"/STATE/{user}", f"/STATE/{platform_user}")
                  for ln in platform_block(user, prefixes)[1:]]]
    out += ["", "# the platform's STATE speaker (the consumer holding the STATE lease)",
            *state_block(platform_user, prefixes)]
    for d in sorted(devices, key=lambda e: (e.prefix, e.site, e.device)):
        out += ["", *device_block(d)]
    return "\n".join(out) + "\n"


def cmd_broker_acl(a: argparse.Namespace) -> int:
    """``agent broker-acl``: print or write the ACL; one-line errors, exit 1 on bad input."""
    try:
        if not PREFIX_RE.match(a.prefix):
            raise AclError(f"--prefix {a.prefix!r}: lower-case letters, digits, '-', '_' "
                           "and '/', starting with a letter or digit, at most 63")
        devices = [entry_from_config(Path(f)) for f in a.files]
        devices += [entry_from_arg(t, a.prefix) for t in a.device or []]
        text = render_acl(devices, a.platform_user, a.platform_consumers)
    except AclError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    if a.out:
        try:
            Path(a.out).write_text(text)
        except OSError as e:
            print(f"agent: error: cannot write {a.out}: {e.strerror or e}", file=sys.stderr)
            return EXIT_INVALID
        users = platform_users(a.platform_user, a.platform_consumers)
        print(f"wrote {a.out}: {len(devices)} device{'s' if len(devices) != 1 else ''} and "
              f"platform users {', '.join(users)} (each needs a password: "
              "mosquitto_passwd)", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``agent broker-acl``."""
    p = sub.add_parser("broker-acl", help="write the mosquitto acl_file for poles and the platform",
                       description="Write a mosquitto acl_file: each device may publish only its "
                       "own topics under its own site and read only its own commands and the "
                       "platform's STATE; the platform reads everything and writes commands.")
    p.add_argument("files", nargs="*", metavar="FILE", help="provisioning files (one per pole)")
    p.add_argument("--device", action="append", metavar="SITE/DEVICE",
                   help="a pole without its file; repeat for several")
    p.add_argument("--prefix", default="polelink",
                   help="topic prefix for --device poles (polelink)")
    p.add_argument("--platform-user", default="platform", metavar="NAME",
                   help="the platform's MQTT username and STATE host id (platform; the "
                        "default of `python -m sim.platform`); NAME-state speaks its STATE")
    p.add_argument("--platform-consumers", type=int, default=1, metavar="N",
                   help="platform processes sharing one subscription: users NAME, NAME-2 … "
                        "NAME-N (the broker makes the username the client id) (1)")
    p.add_argument("-o", "--out", metavar="FILE", help="write here instead of stdout")
    p.set_defaults(func=cmd_broker_acl)
