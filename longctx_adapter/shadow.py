"""Shadowing an attribute on one instance (never its class), and putting it back exactly as it was.

The one mechanism behind every instance patch: the handle's install-time patches (forward, generate,
save_pretrained, Qwen's get_rope_index), restored by `AdapterHandle.remove()`, and the short per-call shadows a
family's encode holds around a stock call (`shadowed`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from dataclasses import dataclass

__all__ = ["Shadow", "shadow", "shadowed"]


@dataclass(frozen=True)
class Shadow:
    """One shadowed attribute and what was there before (an instance attribute, or nothing: the class's)."""

    obj: object
    name: str
    had_own: bool
    previous: object

    def restore(self) -> None:
        if self.had_own:
            setattr(self.obj, self.name, self.previous)
        else:
            delattr(self.obj, self.name)


def shadow(obj, name: str, value) -> Shadow:
    """Set `obj.name = value` on this instance; the returned Shadow's restore() undoes it."""
    record = Shadow(obj, name, name in obj.__dict__, obj.__dict__.get(name))
    setattr(obj, name, value)
    return record


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock(obj) -> threading.RLock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(obj)
        if lock is None:
            lock = _LOCKS[obj] = threading.RLock()
        return lock


@contextlib.contextmanager
def shadowed(obj, name: str, value):
    """Shadow `obj.name` for the duration of the block, restoring it in `finally`.

    Holds a per-instance lock meanwhile: the shadow is visible to every thread, so two threads calling one adapted
    model would otherwise see each other's replacement, and the later restore would leave the earlier thread's
    replacement installed for good.
    """
    with _lock(obj):
        record = shadow(obj, name, value)
        try:
            yield
        finally:
            record.restore()
