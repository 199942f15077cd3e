"""AdapterHandle: everything the adapter installed on one model instance, and the state of its calls.

The handle is the one object the call path, the rotary hooks and the family patches share. Its interface:

- `model`, `family`, `config`: what was adapted, by which family declaration, with which config;
- `family_state`: what the family's `install` returned (e.g. Qwen's stock get_rope_index), else None;
- `guidance`: question guidance (hooks/question.py) when a pooling stage is question-guided, else None;
- `rope`: the RoPE hooks (hooks/rotary.py) when `config.rope` is set, else None;
- `calls`: this thread's call in progress (CallState);
- `continuations`: cache -> how it lines up with the caller's sequences (generate() continued on its cache);
- `last_stats`, `last_attention_mask`, `record(...)`: what the last adapted call on this thread did;
- `shadow(obj, name, value)`: an instance patch that `remove()` undoes;
- `call_scope(plan, family)`: the scope of one adapted call (`inside_call` tells whether one is running);
- `remove()` (idempotent, also on leaving a `with` block).
"""

from __future__ import annotations

import contextlib
import threading
import weakref

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.call_path import wrap_forward, wrap_generate
from longctx_adapter.hooks.rotary import RopeBase, RopeHooks
from longctx_adapter.saving import wrap_save_pretrained
from longctx_adapter.shadow import Shadow, shadow

__all__ = ["AdapterHandle", "CallState", "handle_of"]

_HANDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HANDLES_LOCK = threading.Lock()


class CallState(threading.local):
    """The adapted call in progress on this thread, and what the last one did.

    Why per thread: one adapted model may serve several threads at once, and the code that acts inside a call --
    the decoder pre-hook, the rotary forward hook, a family's wrapped method (Qwen's get_rope_index) -- is called
    by transformers with no argument through which the adapter could pass the call's context. The wrapped
    forward/generate writes it here on entry and clears it when the call ends (`AdapterHandle.call_scope`); the
    decoder pre-hook writes the cache offset the rotary hook then reads (`rope_step`). Nothing else is shared
    between the hooks.
    """

    depth: int = 0  # > 0 inside an adapted call: the forwards that generate() makes pass straight through
    rope_plan = None  # the RoPE plan of the call in progress (rotary.RopePlan), None when RoPE stays stock
    rope_step = None  # (plan, cache offset) of the decoder pass in progress, set by the decoder pre-hook
    family = None  # what the family's finish() returned for the call in progress (e.g. Qwen's M-RoPE ids)
    stats = None  # last_stats of the last adapted call with visual input
    attention_mask = None  # its rewritten attention mask


def handle_of(model):
    """The active handle of a model, or None."""
    return _HANDLES.get(model)


class AdapterHandle:
    """Everything apply_adapter installed on one model instance; `remove()` takes all of it off again."""

    def __init__(self, model, family, config, guidance=None):
        self.model = model
        self.family = family
        self.config = config
        self.guidance = guidance
        self.rope: RopeHooks | None = None
        self.family_state = None
        self.calls = CallState()
        self.continuations: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._shadows: list[Shadow] = []
        self._removed = False

    # --- results of the last call ----------------------------------------------------------------------------
    @property
    def last_stats(self) -> list[dict]:
        """Per video of the last adapted call (this thread): frames, tokens before/after pooling, RoPE factor."""
        return self.calls.stats or []

    @property
    def last_attention_mask(self):
        """The attention mask of the last adapted call's rewritten sequence (for manual decode loops)."""
        return self.calls.attention_mask

    def record(self, stats: list[dict], attention_mask=None) -> None:
        """Remember what the adapter did on this call, for this thread (call_path.video_stat writes each entry)."""
        self.calls.stats = stats
        self.calls.attention_mask = attention_mask

    # --- one adapted call ------------------------------------------------------------------------------------
    @property
    def inside_call(self) -> bool:
        """True inside an adapted call on this thread (nested forwards of generate pass straight through)."""
        return self.calls.depth > 0

    @contextlib.contextmanager
    def call_scope(self, plan=None, family=None):
        """One adapted call on this thread: its RoPE plan (for the rotary hook) and the family's call state (what
        finish() returned, for the family's wrapped methods) are set, and nested forwards pass straight through;
        all of it is put back as it was when the call ends, also when it raises."""
        calls = self.calls
        previous = calls.rope_plan, calls.rope_step, calls.family
        calls.depth += 1
        calls.rope_plan, calls.rope_step, calls.family = plan, None, family
        try:
            yield
        finally:
            calls.depth -= 1
            calls.rope_plan, calls.rope_step, calls.family = previous

    # --- install / remove ------------------------------------------------------------------------------------
    def shadow(self, obj, name: str, value) -> None:
        """Set `obj.name = value` on this instance until `remove()` (patches never touch classes)."""
        self._shadows.append(shadow(obj, name, value))

    def install(self) -> None:
        """Register the handle and install its hooks; on failure everything installed so far is removed."""
        with _HANDLES_LOCK:
            if self.model in _HANDLES:
                raise AdapterError("this model already has an adapter applied (by another thread); remove it first")
            _HANDLES[self.model] = self
        try:
            self._install()
        except BaseException:
            self.remove()
            raise

    def _install(self) -> None:
        model = self.model
        if self.config.rope is not None:
            decoder = model.model.language_model
            base = RopeBase.from_text_config(model.config.text_config)
            self.rope = RopeHooks(self.config.rope, base, decoder, decoder.rotary_emb, self.calls)
        if self.family.install is not None:
            self.family_state = self.family.install(self)
        self.shadow(model, "forward", wrap_forward(self, model.forward))
        self.shadow(model, "generate", wrap_generate(self, model.generate))
        self.shadow(model, "save_pretrained", wrap_save_pretrained(self, model.save_pretrained))

    def remove(self) -> None:
        """Restore the stock model bit-exactly (instance attributes and hooks); idempotent."""
        if self._removed:
            return
        if self.rope is not None:
            self.rope.remove()
            self.rope = None
        while self._shadows:
            self._shadows.pop().restore()
        with _HANDLES_LOCK:
            if _HANDLES.get(self.model) is self:
                del _HANDLES[self.model]
        self._removed = True

    def __enter__(self) -> AdapterHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self._removed else "active"
        return f"AdapterHandle({type(self.model).__name__}, {state}, config={self.config.to_dict()})"
