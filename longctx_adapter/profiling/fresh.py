"""Call one function in a fresh Python interpreter and get its result back: how the profiler and the demos give
every measured run a process (and so a memory peak) of its own.

A plain `subprocess` running `python -c`, not multiprocessing's spawn: it never re-imports the caller's `__main__`
(so scripts without an `if __name__ == "__main__"` guard work) and creates no semaphores (so nothing is left for
multiprocessing's resource tracker to warn about at exit). The child gets the parent's `sys.path`, then unpickles
the call from stdin; the result, or the exception the function raised, comes back pickled through a file, so
whatever the function prints stays ordinary output.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import traceback

from longctx_adapter.errors import AdapterError

__all__ = ["FreshProcessError", "run_fresh"]

_BOOTSTRAP = (
    "import pickle, sys; path, call = pickle.load(sys.stdin.buffer); sys.path[:] = path; "
    "from longctx_adapter.profiling.fresh import _child; sys.exit(_child(call, sys.argv[1]))"
)
_TAIL_LINES = 3


class FreshProcessError(RuntimeError):
    """The fresh interpreter ended without a result (killed, crashed, or its result could not be sent back)."""

    def __init__(self, message: str, returncode: int = 0, output_tail: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.output_tail = output_tail

    @property
    def killed(self) -> bool:
        """SIGKILL: on a measuring run almost always the kernel's out-of-memory killer."""
        return self.returncode in (-9, 137)


def run_fresh(function, args=(), kwargs=None, *, env: dict | None = None, quiet: bool = False):
    """`function(*args, **kwargs)` in a new interpreter; returns its result or raises the exception it raised.

    function: a module-level function of an importable module (not `__main__`), found there by name.
    env: variables added to the child's environment (e.g. `MALLOC_MMAP_THRESHOLD_`).
    quiet: capture the child's stdout/stderr (their last lines go into FreshProcessError) instead of letting them
        through to this process's.
    """
    module, name = function.__module__, function.__qualname__
    if module == "__main__" or "<" in name:
        raise AdapterError(
            f"run_fresh needs a module-level function of an importable module, got {module}.{name}; "
            "move it into a module"
        )
    call = pickle.dumps((module, name, tuple(args), dict(kwargs or {})))
    with tempfile.TemporaryDirectory(prefix="longctx-fresh-") as folder:
        result_path = os.path.join(folder, "result.pickle")
        proc = subprocess.run(
            [sys.executable, "-c", _BOOTSTRAP, result_path],
            input=pickle.dumps((list(sys.path), call)),
            capture_output=quiet,
            env={**os.environ, **(env or {})},
        )
        outcome = None
        if os.path.exists(result_path):
            with open(result_path, "rb") as fh:
                outcome = pickle.load(fh)
    if outcome is None:
        output = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()
        tail = "\n".join(output[-_TAIL_LINES:])
        raise FreshProcessError(
            f"{module}.{name} in a fresh process exited {proc.returncode} without a result"
            + (f":\n{tail}" if tail else ""),
            proc.returncode,
            tail,
        )
    kind, value, child_traceback = outcome
    if kind == "ok":
        return value
    if hasattr(value, "add_note"):  # Python >= 3.11: show where in the child it was raised
        value.add_note(f"raised in a fresh process:\n{child_traceback}")
    raise value


def _child(call: bytes, result_path: str) -> int:
    """The fresh interpreter's side: run the call, write ("ok", result, None) or ("error", exception, traceback)."""
    import importlib

    try:
        module, name, args, kwargs = pickle.loads(call)
        function = importlib.import_module(module)
        for part in name.split("."):
            function = getattr(function, part)
        outcome = ("ok", function(*args, **kwargs), None)
    except BaseException as exc:  # everything goes back to the caller, who re-raises it
        outcome = ("error", exc, traceback.format_exc())
    try:
        data = pickle.dumps(outcome)
        pickle.loads(data)  # some exceptions pickle but cannot be rebuilt (required keyword arguments)
    except Exception as exc:  # say so, with the original traceback
        text = outcome[2] or ""
        data = pickle.dumps(("error", FreshProcessError(f"cannot send the result back ({exc})\n{text}"), text))
    with open(result_path, "wb") as fh:
        fh.write(data)
    sys.stdout.flush()
    return 0
