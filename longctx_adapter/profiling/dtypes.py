"""Dtype names as users type them (`--dtype bf16`, `profile(dtype="fp16")`, a torch.dtype): one table, one error."""

from __future__ import annotations

from longctx_adapter.errors import AdapterError

__all__ = ["DTYPE_ALIASES", "dtype_bytes", "dtype_name", "torch_dtype"]

#: canonical torch name -> (bytes per element, the other spellings accepted)
_TABLE = {
    "bfloat16": (2, ("bf16",)),
    "float16": (2, ("fp16", "half")),
    "float32": (4, ("fp32", "float")),
    "float64": (8, ("fp64", "double")),
}
#: every accepted spelling -> its canonical name
DTYPE_ALIASES = {alias: name for name, (_, aliases) in _TABLE.items() for alias in (name, *aliases)}


def _choices() -> str:
    return ", ".join("/".join((aliases[0], name, *aliases[1:])) for name, (_, aliases) in _TABLE.items())


def dtype_name(value) -> str:
    """The canonical name ("bfloat16", "float16", "float32", "float64") of a dtype name, alias or torch.dtype."""
    key = str(value).strip().lower().removeprefix("torch.")
    name = DTYPE_ALIASES.get(key)
    if name is None:
        raise AdapterError(f"unknown dtype {value!r}; use one of {_choices()}")
    return name


def torch_dtype(value):
    """The torch.dtype a user's dtype name, alias or torch.dtype stands for."""
    import torch

    return getattr(torch, dtype_name(value))


def dtype_bytes(value) -> int:
    """Bytes per element of a dtype name, alias or torch.dtype."""
    return _TABLE[dtype_name(value)][0]
