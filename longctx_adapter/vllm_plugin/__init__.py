"""The vLLM plugin: the adapter's pooling and fixed visual-window RoPE inside a vLLM engine.

vLLM finds `register` through the `vllm.general_plugins` entry point of this package and calls it in the engine and
in every worker process. It replaces vLLM's LLaVA-OneVision, LLaVA-NeXT-Video, Qwen2-VL and Qwen2.5-VL classes (same
architecture names) by subclasses that read the adapter config (settings.py) and, without one, are vLLM's classes unchanged.
Set `VLLM_PLUGINS` to a list without `longctx_adapter` to keep vLLM's own classes. See docs/serving-vllm.md.

This package imports the ops layer, config.py and errors.py only, never the transformers hooks (vLLM pins older
transformers releases than the HF path needs).
"""

from __future__ import annotations

#: architecture name -> (module, class) of the adapted vLLM model
ADAPTED_ARCHITECTURES = {
    "LlavaOnevisionForConditionalGeneration": ("longctx_adapter.vllm_plugin.llava_onevision", "AdaptedLlavaOnevision"),
    "LlavaNextVideoForConditionalGeneration": ("longctx_adapter.vllm_plugin.llava_next_video", "AdaptedLlavaNextVideo"),
    "Qwen2VLForConditionalGeneration": ("longctx_adapter.vllm_plugin.qwen_vl", "AdaptedQwen2VL"),
    "Qwen2_5_VLForConditionalGeneration": ("longctx_adapter.vllm_plugin.qwen_vl", "AdaptedQwen2_5VL"),
}


def register() -> None:
    """Register the adapted classes with vLLM's model registry (safe to call more than once).

    Classes, not lazy "module:Class" strings: vLLM inspects a lazily registered class in a fresh subprocess the
    first time it sees it, which costs a full vLLM import per engine start.
    """
    import importlib

    from vllm import ModelRegistry

    for architecture, (module, name) in ADAPTED_ARCHITECTURES.items():
        ModelRegistry.register_model(architecture, getattr(importlib.import_module(module), name))
