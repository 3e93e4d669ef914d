"""Run the shell examples of ``docs/`` as written (collected by ``docs/conftest.py``, Sybil).

A shell example is a ```` ```console ```` block, as a reader sees it in a terminal::

    $ agent validate config/example-pole.yaml
    config/example-pole.yaml: OK: device pole-0042 ...
    $ agent validate broken.yaml
    broken.yaml:3:5: ... unknown key ...
    [1]

- ``$ `` starts a command; a line ending in ``\\`` goes on in the next line, and lines
  starting with ``> `` (the shell's secondary prompt, e.g. a here-document) belong to it.
- The lines after a command are the **key output** it must print (stdout and stderr
  together): each must match a line of the output, in order, with surrounding blanks
  ignored and ``...`` standing for any text (within a line; a line of only ``...`` marks
  lines left out, as anywhere else). Lines not written are not checked.
- ``[N]`` (cram's notation) is the exit status the command must end with; without it, 0.
- The whole block is one bash script (a variable set by one command is there for the
  next), run in a fresh folder holding links to this checkout's files (``agent/``,
  ``models/``, ``sim/``, ``flash.sh``, ... and ``.venv`` to the interpreter running the
  tests, activated first, as ``docs/index.md`` tells a reader; ``PATH`` has no venv before
  that) and a copy of ``config/``;
  ``../shared`` is the workplace's shared folder when there is one (a block that names
  it skips without it).
- A block that needs hardware, root or the network is marked before it with
  ``<!-- skip: next "why" -->`` (Sybil's skip directive) and is not run; a block that
  would write to a disk (``sudo``, ``--device``) and is not marked fails.

``python -m tests.docs_examples`` lists every example with where it is and whether it
runs, and counts them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SHARED = ROOT.parent / "shared"
#: What the example folder links to (read-only use); ``config`` is copied (examples chmod it).
LINKED = ("agent", "drivers", "models", "sim", "deploy", "bench", "node", "tests", "flash.sh",
          "Makefile", "setup.cfg", "pyproject.toml", "mkdocs.yml", "docs")
MARK = "@@polelink-doc-example-rc"
TIMEOUT_S = 600
#: What a runnable example may never do: it would write to a real disk or need root.
FORBIDDEN = re.compile(r"(^|\s)sudo\s|--device\s|/dev/sd[a-z]|/dev/mmcblk"
                       r"|\bmake (demo|test)\b")  # and what runs until stopped, or this suite


@dataclass
class Command:
    """One ``$`` command of an example, with the output lines and exit status it expects."""

    line: int                        # line in the document (1-based)
    text: str
    expect: list[str] = field(default_factory=list)
    status: int = 0


def parse_console(source: str, first_line: int = 1) -> list[Command]:
    """The commands of a console block (``first_line``: the document line of its first)."""
    commands: list[Command] = []
    lines = source.splitlines()
    i = 0
    while i < len(lines):
        ln = lines[i]
        if ln.startswith("$ ") or ln == "$":
            start = i
            text = ln[2:]
            while i + 1 < len(lines):
                if text.endswith("\\"):
                    text = text[:-1].rstrip() + " " + lines[i + 1].strip()
                elif lines[i + 1].startswith("> ") or lines[i + 1] == ">":
                    text += "\n" + lines[i + 1][2:]      # the shell's secondary prompt
                else:
                    break
                i += 1
            commands.append(Command(first_line + start, text))
        elif not commands:
            if ln.strip():
                raise ValueError(f"line {first_line + i}: output before the first '$ ' command")
        elif re.fullmatch(r"\[(\d+)\]", ln.strip()):
            commands[-1].status = int(ln.strip()[1:-1])
        elif ln.strip() and ln.strip() != "...":
            commands[-1].expect.append(ln.strip())
        i += 1
    if not commands:
        raise ValueError(f"line {first_line}: a console block without a '$ ' command")
    return commands


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(p.strip()) for p in expected.split("...")))


def check_output(cmd: Command, output: str, status: int) -> str | None:
    """What is wrong with one command's result, or None."""
    problems = []
    if status != cmd.status:
        problems.append(f"exit status {status}, the example says {cmd.status}")
    got = [ln.strip() for ln in output.splitlines()]
    at = 0
    for want in cmd.expect:
        pat = _pattern(want)
        for j in range(at, len(got)):
            if pat.fullmatch(got[j]):
                at = j + 1
                break
        else:
            problems.append(f"no line (after the ones matched before) matches: {want}")
            break
    if not problems:
        return None
    return (f"$ {cmd.text}\n  " + "\n  ".join(problems) + "\n  --- its output ---\n"
            + "\n".join("  | " + ln for ln in output.splitlines()[-60:]))


def example_folder(base: Path) -> Path:
    """A folder laid out like a checkout for an example to run in; returns its work folder."""
    work = base / "work"
    work.mkdir(parents=True)
    for name in LINKED:
        if (ROOT / name).exists():
            (work / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "config", work / "config")
    (work / ".venv").symlink_to(Path(sys.prefix))
    (work / "var").mkdir()
    if SHARED.is_dir():
        (base / "shared").symlink_to(SHARED)
    return work


def run_console(source: str, first_line: int, where: str) -> None:
    """Run a console block as one bash script and fail with what differs (AssertionError)."""
    import pytest

    commands = parse_console(source, first_line)
    if "../shared/" in source and not SHARED.is_dir():
        pytest.skip(f"{where}: names ../shared, which this machine does not have")
    for c in commands:
        if FORBIDDEN.search(c.text):
            raise AssertionError(f"{where}:{c.line}: `{c.text}` would need root, write a disk "
                                 f"or run until stopped: mark the block "
                                 f"<!-- skip: next \"why\" -->")
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("the tests' interpreter is not a virtual environment with bin/activate")
    # as docs/index.md tells a reader: the project's environment, activated in the shell
    script = ["exec 2>&1", ". .venv/bin/activate", "trap 'kill $(jobs -p) 2>/dev/null' EXIT"]
    for c in commands:
        script += [c.text, f'printf "\\n{MARK} %s@@\\n" "$?"']
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLELINK_")}
    for name in ("PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(name, None)
    bin_dir = str(Path(sys.prefix) / "bin")       # PATH as a fresh shell has it: no venv
    env.update(PATH=os.pathsep.join(d for d in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
                                    if d != bin_dir),
               COLUMNS="100", PYTHONDONTWRITEBYTECODE="1")
    with tempfile.TemporaryDirectory(prefix="polelink-doc-") as tmp:
        work = example_folder(Path(tmp))
        r = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env,
                           stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                           errors="replace", timeout=TIMEOUT_S)
    parts = re.split(rf"\n?{MARK} (\d+)@@\n", r.stdout)
    outputs, statuses = parts[0:-1:2], [int(s) for s in parts[1::2]]
    if len(statuses) != len(commands):
        raise AssertionError(f"{where}: the script stopped after {len(statuses)} of "
                             f"{len(commands)} commands (exit {r.returncode}):\n{r.stdout[-3000:]}")
    for c, out, st in zip(commands, outputs, statuses, strict=True):
        problem = check_output(c, out, st)
        if problem:
            raise AssertionError(f"{where}:{c.line}: the example does not run as written:\n"
                                 + problem)


# ---- the inventory ---------------------------------------------------------------------------

FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```",
                   re.M | re.S)
SKIP = re.compile(r'<!--\s*skip:\s*next\s*(?P<reason>"[^"]*")?\s*-->\s*\Z')
SHELL_LANGUAGES = ("sh", "bash", "shell", "zsh", "shell-session")


@dataclass
class Block:
    """A fenced block of a page: its language, first line, and skip reason if marked."""

    page: Path
    line: int
    lang: str
    body: str
    skip: str | None


def skip_reason(text: str, start: int) -> str | None:
    """The reason of a ``<!-- skip: next "why" -->`` mark just before offset ``start`` of a
    page's text (the block's opening fence), or None when the block is not marked."""
    last = text[:start].rstrip().rsplit("\n", 1)[-1]
    m = SKIP.search(last)
    return None if m is None else (m.group("reason") or '""')[1:-1]


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a Markdown page, in order."""
    text = page.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        found.append(Block(page, text.count("\n", 0, m.start()) + 1, m.group("lang"),
                           m.group("body"), skip_reason(text, m.start())))
    return found


def inventory() -> tuple[list[Block], list[Block]]:
    """Every console block of docs/: (run by the tests, marked as not run)."""
    run, skipped = [], []
    for page in sorted(DOCS.rglob("*.md")):
        for b in blocks(page):
            if b.lang == "console":
                (skipped if b.skip is not None else run).append(b)
    return run, skipped


def main() -> int:
    """List every shell example of docs/ and count them."""
    run, skipped = inventory()
    for b in run:
        print(f"runs    {b.page.relative_to(ROOT)}:{b.line}")
    for b in skipped:
        print(f"skipped {b.page.relative_to(ROOT)}:{b.line}: {b.skip}")
    commands = sum(len(parse_console(b.body)) for b in run)
    print(f"{len(run)} examples ({commands} commands) run in the tests; {len(skipped)} marked "
          f"as needing hardware, root or the network")
    return 0


if __name__ == "__main__":
    sys.exit(main())
