"""The docs' examples as tests (Sybil): every ```console block runs as written
(``tests/docs_examples.py`` says how), and every model card in ``models/heads.md`` is a
valid card. A block marked ``<!-- skip: next "why" -->`` (Sybil's directive, read here from
the page) is reported as skipped, with why."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.docs_examples

from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser

from tests.docs_examples import run_console, skip_reason


class ConsoleParser(CodeBlockParser):
    """```console blocks: shell commands with the key output and exit status they give."""

    language = "console"

    def __init__(self) -> None:
        super().__init__(language=self.language)

    def evaluate(self, example: Example) -> None:
        # the mark is read from the page itself, not from Sybil's skip state: that state
        # lives in one process, and pytest-xdist may run the mark and the block in two
        reason = skip_reason(example.document.text, example.start)
        if reason is not None:
            import pytest

            pytest.skip(reason)
        first = example.line + 1            # the line after the opening fence
        where = str(Path(example.path).resolve().relative_to(Path(__file__).resolve().parent.parent))
        run_console(example.parsed, first, where)


class CardParser(CodeBlockParser):
    """```yaml blocks of the card pages: each a model card the loader accepts."""

    language = "yaml"

    def __init__(self) -> None:
        super().__init__(language=self.language)

    def evaluate(self, example: Example) -> None:
        from agent.settings.modelcard import ModelCard
        from agent.settings.yamlfile import ConfigError, validate_file

        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "card.yaml"
            card.write_text(example.parsed)
            try:
                validate_file(card, ModelCard, context={"base_dir": Path(tmp)})
            except ConfigError as e:
                raise AssertionError(f"{example.path}:{example.line}: not a valid card:\n"
                                     + "\n".join(map(str, e.problems))) from None


pytest_collect_file = (
    Sybil(parsers=[ConsoleParser()], patterns=["*.md"], name="docs-console")
    + Sybil(parsers=[CardParser()], patterns=["models/heads.md"],
            name="docs-cards")
).pytest()
