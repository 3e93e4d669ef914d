"""Where polelink's shipped files are, and the ``pkg:`` prefix that names them in a config.

The model cards and models in the repository's ``models/`` folder are package data of the
``agent`` package (``agent/models`` is a link to ``../models`` in the source tree; a wheel
holds the files themselves), so an installed agent finds them without the source tree.
A provisioning file names them ``pkg:models/<file>`` (e.g. ``pkg:models/simnet.yaml``):
that resolves to the installed copy wherever polelink is installed, while a plain relative
path is relative to the file that holds it.
"""

from __future__ import annotations

from pathlib import Path

#: How a path in a config names a file shipped with polelink.
PKG_PREFIX = "pkg:"
#: The shipped folders a ``pkg:`` path may name.
PKG_FOLDERS = ("models",)


def models_dir() -> Path:
    """The folder with polelink's shipped model cards and models."""
    return Path(__file__).resolve().parents[1] / "models"


def is_pkg_path(text: str) -> bool:
    """Whether ``text`` is a ``pkg:`` path."""
    return text.startswith(PKG_PREFIX)


def resolve_pkg_path(text: str) -> Path:
    """The file a ``pkg:models/<file>`` path names; ValueError (saying what is valid) for
    anything else after ``pkg:``."""
    rest = text[len(PKG_PREFIX):]
    folder, _, name = rest.partition("/")
    parts = Path(name).parts
    if folder not in PKG_FOLDERS or not name or ".." in parts or Path(name).is_absolute():
        raise ValueError(f"{text!r}: a pkg: path names a file shipped with polelink, as "
                         f"pkg:models/<file> (e.g. pkg:models/simnet.yaml)")
    return models_dir() / name


def path_from_text(text: str) -> Path:
    """``text`` as a path: a ``pkg:`` path resolved to the shipped file, else as written."""
    return resolve_pkg_path(text) if is_pkg_path(text) else Path(text)
