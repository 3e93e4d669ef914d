"""The documentation: the README is the entrance and links every reader's part, the site
builds in strict mode (no broken link or anchor), every shell example is one the suite runs
or is marked with why not, and the card reference is the loader's own.

The examples themselves run from ``docs/conftest.py`` (Sybil; ``tests/docs_examples.py``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs_examples import DOCS, ROOT, SHELL_LANGUAGES, blocks, inventory, parse_console

#: The part of the docs each reader starts at (issue 25's list).
READER_PAGES = ("index.md", "technicians/index.md", "field-crews/index.md", "models/index.md",
                "platform/index.md", "lighting/index.md", "developers/index.md")


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", text)


def test_the_readme_is_an_entrance_that_links_every_readers_part() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = readme.count("\n")
    assert lines <= 200, f"README.md has {lines} lines: it is the entrance, the rest is docs/"
    links = set(_links(readme))
    missing = [p for p in READER_PAGES if f"docs/{p}" not in links]
    assert not missing, f"README.md does not link these readers' pages: {missing}"
    assert "docs/images/dashboard.png" in links, "README.md: the dashboard's picture"
    broken = [t for t in links if not t.startswith("http") and not (ROOT / t).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make demo" in first_screen and "make test" in first_screen


def test_every_readers_page_is_in_the_sites_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    assert pages, "no docs"
    assert [p for p in pages if p not in nav] == []


def test_the_site_builds_in_strict_mode(tmp_path: Path) -> None:
    """`make docs`'s build: mkdocs 1.6 with Material, strict (every warning fails: a link
    to a missing page or anchor, a page left out of the navigation, a missing snippet)."""
    pytest.importorskip("mkdocs", reason="mkdocs is a dev dependency: pip install -e '.[dev]'")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                        str(tmp_path / "site"), "--config-file", str(ROOT / "mkdocs.yml")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert r.returncode == 0, r.stderr[-4000:]
    assert "WARNING" not in r.stderr, r.stderr[-4000:]
    for page in READER_PAGES:
        html = tmp_path / "site" / page.replace("index.md", "").replace(".md", "/") / "index.html"
        assert html.is_file(), html
    assert (tmp_path / "site" / "images" / "dashboard.png").is_file()


def test_the_card_reference_is_generated_from_the_loader() -> None:
    r = subprocess.run([sys.executable, "-m", "agent", "schema", "--card", "--markdown"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = (DOCS / "models" / "card-reference.md").read_text(encoding="utf-8")
    assert page == r.stdout, ("docs/models/card-reference.md differs from "
                              "`agent schema --card --markdown`: run `make docs`")
    from agent.settings.modelcard import InputSpec, ModelCard, OutputSpec

    for model, prefix in ((ModelCard, ""), (InputSpec, "input."), (OutputSpec, "output.")):
        for name, info in model.model_fields.items():
            if name == "card_path":
                continue
            assert f"| `{prefix}{name}` |" in page, f"{prefix}{name} is not in the reference"
            assert info.description, f"the card key {prefix}{name} has no description"


def test_every_shell_example_runs_or_says_why_not() -> None:
    """A command shown to a reader is a ```console block the suite runs, or is marked
    `<!-- skip: next "why" -->`; none hides in an ```sh or an untagged block."""
    problems = []
    for page in sorted(DOCS.rglob("*.md")):
        for b in blocks(page):
            where = f"{page.relative_to(ROOT)}:{b.line}"
            first = next((ln for ln in b.body.splitlines() if ln.strip()), "")
            if b.lang in SHELL_LANGUAGES or (b.lang in ("", "text") and first.startswith("$ ")):
                problems.append(f"{where}: a shell example must be a ```console block")
            if b.skip is not None and not b.skip.strip():
                problems.append(f"{where}: a skipped example must say why")
            if b.lang == "console":
                try:
                    commands = parse_console(b.body)
                except ValueError as e:
                    problems.append(f"{where}: {e}")
                    continue
                typed = [c.text for c in commands
                         if re.search(r"polelink-\d+\.\d+|--version [\"']?\d", c.text)]
                if typed:
                    problems.append(f"{where}: a version typed by hand (read it from the "
                                    f"checkout): {typed}")
    assert not problems, "\n".join(problems)


def test_the_examples_inventory_counts_what_runs() -> None:
    run, skipped = inventory()
    assert len(run) >= 10 and all(b.skip is None for b in run)
    assert all(b.skip for b in skipped)
    r = subprocess.run([sys.executable, "-m", "tests.docs_examples"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"{len(run)} examples (" in r.stdout and f"{len(skipped)} marked" in r.stdout


def test_the_contract_examples_in_the_docs_are_valid_messages() -> None:
    """Every JSON block of the platform's pages that is a whole message of the contract
    validates against its schema (a payload the docs show cannot drift from the contract)."""
    import json

    from agent.uplink import contract

    checked = 0
    for page in sorted((DOCS / "platform").glob("*.md")):
        for b in blocks(page):
            if b.lang != "json":
                continue
            try:
                message = json.loads(b.body)
            except ValueError:
                continue                  # a sketch with placeholders, not a message
            kind = contract.kind_of(message) if isinstance(message, dict) else None
            if kind is None:
                continue
            problems = contract.errors(kind, message)
            assert not problems, f"{page.relative_to(ROOT)}:{b.line}: {problems}"
            checked += 1
    assert checked >= 1, "no contract message among the platform pages' examples"


def test_the_platform_page_names_every_event_of_the_contract() -> None:
    import json

    schema = json.loads((ROOT / "agent/uplink/schemas/event.schema.json").read_text())
    names = schema["properties"]["event"]["enum"]
    page = (DOCS / "platform" / "index.md").read_text(encoding="utf-8")
    missing = [n for n in names if f"`{n}`" not in page]
    assert not missing, f"docs/platform/index.md does not name these events: {missing}"
