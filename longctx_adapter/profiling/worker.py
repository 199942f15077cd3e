"""`python -m longctx_adapter.profiling.worker`: one profiling row in a fresh interpreter (spec JSON on stdin).

Prints one line `ROW <json>` with the measured fields (see profiling._measure_row). A separate module (not
multiprocessing's spawn) so that profiling works from scripts without an `if __name__ == "__main__"` guard.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    spec = json.loads(sys.stdin.read())
    from longctx_adapter.profiling.profiler import _measure_row

    row = _measure_row(spec)
    sys.stdout.write("ROW " + json.dumps(row, default=str) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
