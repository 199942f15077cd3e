"""qwen2_5_vl: see patches/qwen_vl.py."""

from longctx_adapter.patches.qwen_vl import _family

FAMILY = _family("qwen2_5_vl")
