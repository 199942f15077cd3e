"""qwen2_vl: see patches/qwen_vl.py."""

from .qwen_vl import _family

FAMILY = _family("qwen2_vl")
