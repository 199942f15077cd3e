"""Run the Python blocks of one Markdown page as a reader would: `python tests/docs_runner.py PAGE`.

Blocks run in page order in one namespace, in the current directory (tests/test_docs.py makes it a scratch folder
holding the stand-in checkpoints), each compiled under the name `PAGE:LINE` so a traceback points at the Markdown.
Blocks marked `<!-- not-run: REASON -->` are skipped and counted. The last line printed is a JSON summary.
Run as a script (not `-m`), so the scratch folder is not on `sys.path` and its folders cannot shadow packages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from docs_blocks import ROOT, blocks


def main(page: str) -> int:
    namespace: dict = {"__name__": "__main__"}
    ran, not_run = [], []
    for block in blocks(ROOT / page):
        if block.lang != "python":
            continue
        if block.not_run is not None:
            not_run.append(block.where)
            continue
        code = compile("\n" * (block.line - 1) + block.code, str(ROOT / block.page), "exec")
        print(f"--- running {block.where}", flush=True)
        exec(code, namespace)
        ran.append(block.where)
    print(json.dumps({"page": page, "ran": ran, "not_run": not_run}))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).as_posix()))
