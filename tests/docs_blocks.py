"""Fenced code blocks of the Markdown pages (README.md, docs/), for the tests that keep the examples running.

The convention the pages follow (docs/contributing.md, "Examples in the docs"):
- every ```python block runs, in page order, in one namespace per page (later blocks use names earlier ones made);
- a block that cannot run here carries `<!-- not-run: REASON -->` on the line right before its opening fence;
- other languages (bash, json, text, ...) never run; json blocks must parse, and `longctx-adapter` commands in
  bash blocks must parse with the CLI's own argument parser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN = re.compile(r"^<!--\s*not-run:\s*(?P<reason>.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


@dataclass(frozen=True)
class Block:
    page: str  # path relative to the repository root
    line: int  # 1-based line of the first code line
    lang: str  # first word of the info string ("" when none)
    code: str
    not_run: str | None  # the reason given in a not-run marker, or None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every Markdown page under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of one page, with their language and not-run marker."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = path.relative_to(ROOT).as_posix()
    found, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, fence = match["indent"], match["fence"]
        lang = (match["info"].strip().split() or [""])[0].lower()
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(previous)
        body, j = [], i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        if j == len(lines):
            raise ValueError(f"{page}:{i + 1}: code fence never closed")
        found.append(Block(page, i + 2, lang, "\n".join(body) + "\n", marker["reason"] if marker else None))
        i = j + 1
    return found


def _closes(line: str, fence: str) -> bool:
    """A closing fence: only the opening fence's character, at least as many of them."""
    text = line.strip()
    return len(text) >= len(fence) and set(text) == {fence[0]}
