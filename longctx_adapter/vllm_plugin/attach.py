"""What every adapted vLLM model does at construction: read the served adapter config, say when it is not applied,
and give the decoder its fixed visual-window RoPE table."""

from __future__ import annotations

from collections.abc import Callable

from longctx_adapter.vllm_plugin.rotary import install_fixed_rope
from longctx_adapter.vllm_plugin.settings import ServingAdapter, adapter_for, log_not_applied


def attach_adapter(model, vllm_config, logger, check: Callable[[ServingAdapter], None] | None = None):
    """Sets `model.longctx_adapter` (None: stock); `check` may refuse the adapter before the RoPE table changes."""
    adapter = adapter_for(vllm_config.model_config)
    model.longctx_adapter = adapter
    log_not_applied(adapter, logger)
    if adapter is None:
        return None
    if check is not None:
        check(adapter)
    if adapter.rope is not None:
        install_fixed_rope(model.language_model, adapter.rope, model.config.text_config)
    return adapter
