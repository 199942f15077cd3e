"""A fixed visual-window RoPE for a vLLM decoder: one table per model, built from the adapter's rope spec.

vLLM precomputes cos/sin for every position once (`rotary_emb.cos_sin_cache`) and shares rotary modules between
models with equal parameters (`get_rope` caches them), so the plugin never edits a table in place: it gives the
decoder's attention layers a shallow copy of their rotary module that owns a new table from
`layout.fixed_rope_frequencies` (the HF path's frequencies at the fixed factor). Positions past the model's table
behave as in stock vLLM; the table is as long as the stock one.
"""

from __future__ import annotations

import copy
import types

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.vllm_plugin.layout import fixed_rope_frequencies, rope_cache


def _rope_base(text_config) -> tuple[int, float, float, list | None]:
    params = dict(getattr(text_config, "rope_parameters", None) or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise AdapterError(
            f"the model already uses rope_type {rope_type!r}; the served visual-window RoPE composes only with "
            "'default' RoPE. Set rope to null in the adapter config"
        )
    if params.get("mrope_interleaved"):
        raise AdapterError("interleaved M-RoPE (Qwen3-VL) is not served by the plugin; set rope to null")
    theta = params.get("rope_theta", getattr(text_config, "rope_theta", None))
    if theta is None:
        raise AdapterError("cannot find rope_theta in the text config; the visual-window RoPE needs the RoPE base")
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    section = params.get("mrope_section")
    return int(head_dim), float(theta), float(params.get("partial_rotary_factor", 1.0) or 1.0), section


def _with_table(rotary: torch.nn.Module, table: torch.Tensor) -> torch.nn.Module:
    """A shallow copy of a vLLM rotary module with its own cos/sin table (the original stays untouched).

    vLLM's CustomOp keeps its dispatched forward as a method bound to the instance (`_forward_method`): such
    attributes are rebound to the copy, or it would keep rotating with the original's table.
    """
    clone = copy.copy(rotary)
    clone._parameters = dict(rotary._parameters)
    clone._buffers = dict(rotary._buffers)
    clone._modules = dict(rotary._modules)
    clone._buffers["cos_sin_cache"] = table
    for name, value in list(vars(clone).items()):
        if isinstance(value, types.MethodType) and value.__self__ is rotary:
            setattr(clone, name, types.MethodType(value.__func__, clone))
    return clone


def install_fixed_rope(decoder: torch.nn.Module, rope: dict, text_config) -> int:
    """Give every attention layer of `decoder` the fixed visual-window table; returns how many layers changed."""
    head_dim, theta, partial, section = _rope_base(text_config)
    with torch.device("cpu"):
        inv_freq, scaling = fixed_rope_frequencies(rope, head_dim, theta, partial, section)
    clones: dict[int, torch.nn.Module] = {}
    changed = 0
    for module in list(decoder.modules()):
        rotary = getattr(module, "rotary_emb", None)
        stock = getattr(rotary, "cos_sin_cache", None)
        if not isinstance(stock, torch.Tensor):
            continue
        if id(rotary) not in clones:
            if getattr(rotary, "rotary_dim", None) != 2 * inv_freq.numel() or not getattr(rotary, "is_neox_style", 0):
                raise AdapterError(
                    f"the decoder's rotary module ({type(rotary).__name__}, rotary_dim "
                    f"{getattr(rotary, 'rotary_dim', None)}) does not match the config's head_dim {head_dim}; "
                    "the visual-window RoPE cannot be installed, set rope to null"
                )
            with torch.device("cpu"):
                table = rope_cache(inv_freq, scaling, stock.shape[0], stock.dtype)
            clones[id(rotary)] = _with_table(rotary, table.to(stock.device))
        module.rotary_emb = clones[id(rotary)]
        changed += 1
    if not changed:
        raise AdapterError("found no rotary module in the decoder; the visual-window RoPE cannot be installed")
    return changed
