"""flash.sh's checks of its inputs, run before anything is written.

``checks.py wheels WHEEL...``      each is a readable, non-empty wheel (a zip) with a name that
                                   follows the wheel file name spec and that debugfs and mtools
                                   can take (letters, digits, ``._+-``)
``checks.py version WHEEL``        prints the version in the agent's wheel name (PEP 440, canonical)
``checks.py netconfig FILE``       a cloud-init network-config: UTF-8 YAML holding a mapping
``checks.py installable DIR VERSION SHOWN``
                                   ``polelink==VERSION`` installs from the wheels in DIR alone on the
                                   Pi (aarch64, CPython 3.11, glibc 2.36), as its first boot will
                                   (``pip install --no-index``): checked here, offline, with ``pip
                                   install --dry-run`` for the Pi's platform tags
``checks.py validate DIR CONFIG SECRETS SITE``
                                   copies the pole's files to DIR under the names they get on the
                                   card (pole.yaml, secrets.yaml 0600, site.yaml; ``-``: none given)
                                   and runs the agent's own ``agent validate`` on them, from this
                                   checkout; its first problem comes back in one line, naming the
                                   technician's file, or the option to give

Errors are one line on stderr, exit 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
# PEP 440's canonical public version, plus a local label (the form a wheel's name carries)
VERSION = re.compile(r"([1-9][0-9]*!)?(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*((a|b|rc)(0|[1-9][0-9]*))?"
                     r"(\.post(0|[1-9][0-9]*))?(\.dev(0|[1-9][0-9]*))?(\+[a-z0-9]+(\.[a-z0-9]+)*)?")
# the wheel file name spec: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
PART = re.compile(r"[A-Za-z0-9_.+]+")
SAFE = re.compile(r"[A-Za-z0-9._+-]+")


class CheckError(Exception):
    """One line for the technician."""


def wheel(path: str) -> None:
    """A wheel flash.sh may copy onto the card; raises CheckError otherwise."""
    name = os.path.basename(path)
    shown = name.encode("unicode_escape").decode("ascii")
    if not SAFE.fullmatch(name) or not name.endswith(".whl"):
        raise CheckError(f"wheel {shown!r}: a wheel's name has only letters, digits and ._+- "
                         "(the wheel file name spec; debugfs cannot take the others)")
    parts = name[:-4].split("-")
    if len(parts) not in (5, 6) or not all(PART.fullmatch(p) for p in parts):
        raise CheckError(f"wheel {shown}: not a wheel file name "
                         "(NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl)")
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckError(f"wheel {shown}: {e.strerror}") from None
    if not os.path.isfile(path):
        raise CheckError(f"wheel {shown}: not a regular file")
    if st.st_size == 0:
        raise CheckError(f"wheel {shown}: empty file")
    try:
        with zipfile.ZipFile(path) as z:
            if not z.namelist():
                raise CheckError(f"wheel {shown}: an empty zip")
            bad = z.testzip()                  # every member read: pip on the Pi would
            if bad is not None:                # stop at the first with a bad CRC
                raise CheckError(f"wheel {shown}: damaged: {bad} fails its CRC check")
            _tags_agree(z, parts, shown)
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CheckError(f"wheel {shown}: not a wheel (zip): {e}") from None


def _tags_agree(z: zipfile.ZipFile, parts: list[str], shown: str) -> None:
    """The tags the wheel says it has (its WHEEL file's ``Tag:`` lines, where there are
    any) are those of its name: pip on the Pi trusts the name, and a wheel built for another
    machine under an aarch64 name would install and not run."""
    wheel_files = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/WHEEL")]
    if len(wheel_files) != 1:
        return
    said = {ln.split(":", 1)[1].strip() for ln in z.read(wheel_files[0]).decode("utf-8", "replace")
            .splitlines() if ln.lower().startswith("tag:")}
    named = {f"{py}-{abi}-{plat}" for py in parts[-3].split(".") for abi in parts[-2].split(".")
             for plat in parts[-1].split(".")}
    if said and said != named:
        other = ", ".join(sorted(said - named) or sorted(said))
        raise CheckError(f"wheel {shown}: its WHEEL file says {other}, its name "
                         f"{', '.join(sorted(named))}: built for another machine?")


def version(path: str) -> str:
    """The agent wheel's version, from its name; raises CheckError when it is not PEP 440."""
    parts = os.path.basename(path)[:-4].split("-")
    v = parts[1] if len(parts) in (5, 6) else ""
    if not VERSION.fullmatch(v):
        raise CheckError(f"wheel {os.path.basename(path)}: cannot read a version (PEP 440) from its name")
    return v


def pi_pip_args() -> list[str]:
    """pip's options describing the Pi (deploy/pi/target.py, the wheelhouse's own), plus
    ``linux_aarch64``, the tag of wheels built on a Pi (piwheels), which its pip takes too."""
    sys.path.insert(0, str(HERE))
    try:
        from deploy.pi.target import pip_target_args
    finally:
        sys.path.remove(str(HERE))
    return [*pip_target_args(), "--platform", "linux_aarch64"]


def installable(wheels: str, version: str, shown: str) -> None:
    """``polelink==version`` and all it needs install from ``wheels`` alone on the Pi; raises
    CheckError with pip's reason otherwise. ``shown``: the folder the technician named."""
    with tempfile.TemporaryDirectory() as target:
        r = subprocess.run([sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check",
                            "install", "--dry-run", "--quiet", "--no-index", "--find-links", wheels,
                            *pi_pip_args(), "--target", target, "--report", "-", f"polelink=={version}"],
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode == 0:
        _all_from(wheels, r.stdout, shown)
        return
    lines = [ln.strip() for ln in (r.stderr + r.stdout).splitlines() if ln.strip()]
    if any("No module named pip" in ln for ln in lines):
        raise CheckError(f"cannot check --wheelhouse {shown}: {sys.executable} has no pip (use the "
                         "repository's .venv: make .venv/bin/agent, or PYTHON=)")
    if any("no such option" in ln for ln in lines):
        raise CheckError(f"cannot check --wheelhouse {shown}: the pip of {sys.executable} has no "
                         "install --dry-run (pip >= 22.2 needed; the repository's .venv has one)")
    errors = [ln.removeprefix("ERROR: ") for ln in lines if ln.startswith("ERROR:")] or lines[-1:] or ["?"]
    raise CheckError(f"--wheelhouse {shown}: polelink {version} cannot install from it on the Pi "
                     f"(aarch64, CPython 3.11, glibc 2.36): {errors[0]} (make wheelhouse builds a "
                     "complete one in var/wheelhouse/aarch64)")


def _all_from(wheels: str, report: str, shown: str) -> None:
    """Every wheel pip would install comes from the wheelhouse: a dependency given by a direct
    URL (``name @ file:///...``, ``@ https://...``) is fetched even with --no-index, and the
    Pi would not have it. CheckError naming the first that does not."""
    try:
        items = json.loads(report)["install"]
        urls = [(i["metadata"]["name"], i["download_info"]["url"]) for i in items]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckError(f"cannot check --wheelhouse {shown}: pip's report is not what this pip "
                         f"should write ({type(e).__name__})") from None
    home = Path(wheels).resolve().as_uri() + "/"
    for name, url in urls:
        if not url.startswith(home):
            raise CheckError(f"--wheelhouse {shown}: {name} would come from {url}, not from the "
                             "wheelhouse (a direct URL in a Requires-Dist?): the Pi has only the "
                             "wheelhouse")


def netconfig(path: str) -> None:
    """A network-config cloud-init can read; raises CheckError otherwise."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckError(f"--network-config {path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise CheckError(f"--network-config {path}: {e.strerror}") from None
    try:
        import yaml
    except ImportError:
        raise CheckError(f"--network-config {path}: cannot check it: PyYAML does not import with "
                         f"{sys.executable} (use the repository's .venv, or --no-validate)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        raise CheckError(f"--network-config {path}{where}: not valid YAML "
                         f"({getattr(e, 'problem', None) or 'syntax error'})") from None
    if not isinstance(doc, dict):
        raise CheckError(f"--network-config {path}: not a YAML mapping (network: version: 2 ...)")


def validate(work: str, config: str, secrets: str | None, site: str | None) -> None:
    """``agent validate`` on the files as the pole will have them; raises CheckError with its
    first problem, in the technician's file names, never the copies': a path of the pole
    (/etc/polelink/...) where the problem is on the pole, and the option to give where
    flash.sh was not given a file (``secrets``, ``site``: None)."""
    if site and not re.search(r"^extends:", Path(config).read_text(encoding="utf-8", errors="replace"),
                              re.M):
        raise CheckError(f"--site {site}: the pole file {config} does not extend it (no "
                         "'extends: site.yaml'): it would be on the card and never read")
    etc = Path(work)
    etc.mkdir(parents=True, exist_ok=True)
    copies = {etc / "pole.yaml": config}
    if secrets:
        copies[etc / "secrets.yaml"] = secrets
    else:  # as on the card: an empty one
        (etc / "secrets.yaml").write_text("{}\n", encoding="utf-8")
    if site:
        copies[etc / "site.yaml"] = site
    for dst, src in copies.items():
        shutil.copyfile(src, dst)
    (etc / "secrets.yaml").chmod(0o600)
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    probe = subprocess.run([sys.executable, "-c", "import agent.cli.main"], capture_output=True, text=True,
                           env=env)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise CheckError(f"cannot validate --config: the agent does not import with {sys.executable} "
                         f"({last}); use the repository's .venv (make test) or PYTHON=, "
                         "or --no-validate to flash without the check")
    r = subprocess.run([sys.executable, "-m", "agent", "validate", str(etc / "pole.yaml"), "--secrets",
                        str(etc / "secrets.yaml")], capture_output=True, text=True, env=env, cwd=etc)
    if r.returncode == 0:
        return
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()] or [f"agent validate exit {r.returncode}"]
    first = lines[0].removeprefix("agent: error: ")
    hint = ""
    if not secrets and str(etc / "secrets.yaml") in first:
        hint = ": give --secrets FILE, the pole's secrets (flash.sh was given none)"
    extends = re.search(r"the file it extends, (\S+), does not exist", first)
    if extends and not site:
        hint = ": give --site FILE, the site file the pole file extends (flash.sh was given none)"
    elif extends and extends.group(1) != str(etc / "site.yaml"):
        hint = (": on the pole the site file (--site) is /etc/polelink/site.yaml: the pole file "
                "must say 'extends: site.yaml'")
    for dst, src in copies.items():
        first = first.replace(str(dst), src)
    first = first.replace(str(etc), "/etc/polelink")   # what is not one of the given files
    problems = re.search(r"INVALID \((\d+) problem", r.stderr)
    more = int(problems.group(1)) - 1 if problems else 0
    raise CheckError(f"--config {config} is not valid on the pole: {first}{hint}"
                     + (f" (and {more} more: agent validate)" if more > 0 else ""))


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) >= 2 and args[0] == "wheels":
            for a in args[1:]:
                wheel(a)
        elif len(args) == 2 and args[0] == "version":
            print(version(args[1]))
        elif len(args) == 4 and args[0] == "installable":
            installable(args[1], args[2], args[3])
        elif len(args) == 2 and args[0] == "netconfig":
            netconfig(args[1])
        elif len(args) == 5 and args[0] == "validate":
            validate(args[1], args[2], *(None if a == "-" else a for a in args[3:5]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except CheckError as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"flash.sh: {args[0]}: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
