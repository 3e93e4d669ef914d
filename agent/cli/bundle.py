"""``agent bundle keygen|build|verify``: make and check signed update bundles.

Exit codes: 0 done (or the bundle is good), 1 invalid input (a bundle that fails a check,
a missing or wrong key or folder), 2 usage error. Always one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


def _err(msg: str) -> int:
    print(f"agent bundle: error: {msg}", file=sys.stderr)
    return 1


def cmd_keygen(a: argparse.Namespace) -> int:
    """Write a new Ed25519 key pair: the private key (0600) and ``<name>.pub.pem``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    out = Path(a.out)
    pub = out.with_name(out.name.removesuffix(".pem") + ".pub.pem")
    for p in (out, pub):
        if p.exists():
            return _err(f"{p} exists; not overwritten")
    key = Ed25519PrivateKey.generate()
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        pub.write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    except OSError as e:
        return _err(f"cannot write the key: {e}")
    print(f"wrote {out} (private, keep it off the poles) and {pub} (update.verify_key)")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    """Build and sign a bundle."""
    from agent.update.bundle import build, load_private_key

    try:
        key = load_private_key(Path(a.key))
        req = None if a.required_mb is None else a.required_mb << 20
        man = build(a.version, Path(a.wheelhouse), key, Path(a.out),
                    Path(a.models) if a.models else None,
                    Path(a.agent_wheel) if a.agent_wheel else None, req,
                    None if a.quiet else lambda m: print(m, file=sys.stderr, flush=True))
    except ValueError as e:
        return _err(str(e))
    except OSError as e:
        return _err(f"{e.filename or ''}: {e.strerror or e}")
    size = Path(a.out).stat().st_size
    print(f"wrote {a.out}: version {man.version}, {len(man.files)} members, {size} bytes, "
          f"needs {man.required_bytes >> 20} MiB free on the pole; agent wheel "
          f"{man.agent_wheel.removeprefix('wheels/')}")
    return 0


def _public_key(a: argparse.Namespace) -> Any:
    from agent.uplink.guard import load_public_key

    if a.key:
        return load_public_key(Path(a.key))
    from agent.settings.schema import load_config

    cfg = load_config(Path(a.config))
    if cfg.update is None:
        raise ValueError(f"{a.config}: no update: section (give --key)")
    return load_public_key(cfg.update.verify_key)


def cmd_verify(a: argparse.Namespace) -> int:
    """Check a bundle's signature and every member's sha256."""
    from agent.settings.yamlfile import ConfigError
    from agent.update.bundle import BundleError, verify

    try:
        key = _public_key(a)
    except ConfigError as e:
        return _err(str(e.problems[0]) if e.problems else str(e))
    except ValueError as e:
        return _err(str(e))
    try:
        man = verify(Path(a.bundle), key)
    except BundleError as e:
        return _err(f"{a.bundle}: INVALID: {e}")
    except OSError as e:
        return _err(f"{a.bundle}: {e.strerror or e}")
    print(f"{a.bundle}: OK: version {man.version}, created {man.created}, {len(man.files)} "
          f"members ({man.payload_bytes} bytes), agent wheel "
          f"{man.agent_wheel.removeprefix('wheels/')}, needs {man.required_bytes >> 20} MiB free")
    return 0


def add_parser(sub: Any) -> None:
    """Add ``bundle`` and its subcommands to the ``agent`` parser."""
    b = sub.add_parser("bundle", help="make and check signed update bundles")
    bs = b.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")

    k = bs.add_parser("keygen", help="write a new Ed25519 signing key pair")
    k.add_argument("--out", required=True, metavar="KEY.pem",
                   help="private key file (0600); the public key goes to KEY.pub.pem")
    k.set_defaults(func=cmd_keygen)

    bb = bs.add_parser("build", help="build and sign a bundle")
    bb.add_argument("--version", required=True, help="the release's version (its folder name)")
    bb.add_argument("--wheelhouse", required=True, metavar="DIR",
                    help="folder of wheels: the agent's and its dependencies'")
    bb.add_argument("--agent-wheel", metavar="WHL",
                    help="the agent's wheel, when it is not the one polelink-*.whl in DIR")
    bb.add_argument("--models", metavar="DIR", help="models folder to ship (optional)")
    bb.add_argument("--key", required=True, metavar="KEY.pem", help="Ed25519 private key")
    bb.add_argument("--out", required=True, metavar="FILE", help="the bundle to write")
    bb.add_argument("--required-mb", type=int, metavar="MB",
                    help="free disk the pole needs to install it (default: twice the "
                         "payload + 64 MiB)")
    bb.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    bb.set_defaults(func=cmd_build)

    v = bs.add_parser("verify", help="check a bundle's signature and members")
    v.add_argument("bundle", metavar="FILE")
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--key", metavar="PUB.pem", help="the signer's public key")
    g.add_argument("--config", metavar="POLE.yaml", help="use the pole's update.verify_key")
    v.set_defaults(func=cmd_verify)
