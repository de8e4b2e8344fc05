"""docs/operations.md, the runbook the alerts link to: its sections by the anchor GitHub gives them.

Headings come from markdown-it-py (CommonMark: a `#` comment inside a code block is no heading);
anchors follow GitHub's rules: the heading's text lower-cased, punctuation other than `-` and `_`
dropped, spaces turned into `-`, and `-1`, `-2`, ... on repeats.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from markdown_it import MarkdownIt

from tests.deploy.tooling import REPO

RUNBOOK = REPO / "docs" / "operations.md"
# where the alerts' runbook_url and the dashboard's link point: the runbook on the default branch
RUNBOOK_URL = "https://github.com/deepserve/deepserve/blob/main/docs/operations.md"


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    level: int
    body: str  # the Markdown from after its heading to the next heading of the same or a higher level


def github_anchor(title: str) -> str:
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def sections(text: str | None = None) -> dict[str, Section]:
    text = RUNBOOK.read_text() if text is None else text
    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    headings: list[tuple[str, int, int]] = []  # (title, level, first line)
    for opening, inline in itertools.pairwise(tokens):
        if opening.type == "heading_open" and opening.map is not None:
            title = "".join(c.content for c in inline.children or [] if c.type in ("text", "code_inline"))
            headings.append((title, int(opening.tag[1:]), opening.map[0]))
    out: dict[str, Section] = {}
    seen: dict[str, int] = {}
    for i, (title, level, start) in enumerate(headings):
        end = next((s for _, lv, s in headings[i + 1 :] if lv <= level), len(lines))
        base = github_anchor(title)
        anchor = f"{base}-{seen[base]}" if base in seen else base
        seen[base] = seen.get(base, 0) + 1
        out[anchor] = Section(anchor, title, level, "\n".join(lines[start + 1 : end]))
    return out


def anchor_links(text: str) -> set[tuple[str, str]]:
    """(file, anchor) of every link to a heading: ``[x](#a)`` gives ("", "a"), ``[x](deployment.md#a)``
    ("deployment.md", "a")."""
    return set(re.findall(r"\]\(([\w./-]*)#([^)\s]+)\)", text))
