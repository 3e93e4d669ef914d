"""mkdocs hook: links from a page to a file of the repository outside ``docs/``.

On GitHub a page may link ``../../config/example-pole.yaml`` and the reader lands on the
file. The site holds ``docs/`` only, so there such a link is made plain text (the name
stays, in code); a link to a repository file that does not exist fails the build, as a
broken link between pages does (strict mode).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

LINK = re.compile(r"\[([^\]]+)\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite links that leave docs/ for a repository file; refuse those to nothing."""
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = (docs / page.file.src_uri).parent

    def fix(m: re.Match[str]) -> str:
        target = (here / m.group(2)).resolve()
        if target.is_relative_to(docs):
            return m.group(0)                      # a page: mkdocs checks it
        if not target.is_relative_to(root) or not target.exists():
            raise ValueError(f"{page.file.src_uri}: link to {m.group(2)}: no such file in "
                             f"the repository")
        label = m.group(1)
        return label if label.startswith("`") else f"`{label}`"

    return LINK.sub(fix, markdown)
