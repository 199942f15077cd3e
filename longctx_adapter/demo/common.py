"""What both demos share: one fresh interpreter per run (with progress lines), and Markdown tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from longctx_adapter.profiling.fresh import run_fresh


def run_each(function, runs: Sequence[tuple[str, tuple]], out=None) -> list[dict]:
    """`function(*args)` for every `(label, args)` in its own fresh interpreter, one after another, with a line
    before and after each run (a run takes seconds to minutes and prints nothing itself)."""
    out = out or sys.stdout
    rows = []
    for number, (label, args) in enumerate(runs, 1):
        print(f"[{number}/{len(runs)}] {label}: running in a fresh process ...", file=out, flush=True)
        start = time.perf_counter()
        rows.append(run_fresh(function, args))
        print(f"[{number}/{len(runs)}] {label}: done in {time.perf_counter() - start:.1f} s", file=out, flush=True)
    print(file=out)
    return rows


def print_table(header: Sequence[str], rows: Sequence[Sequence], out=None) -> None:
    """A Markdown table, one line per row."""
    out = out or sys.stdout
    print("| " + " | ".join(header) + " |", file=out)
    print("|" + "---|" * len(header), file=out)
    for cells in rows:
        print("| " + " | ".join(str(c) for c in cells) + " |", file=out)
