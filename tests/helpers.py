"""Small helpers several test files share (fixtures live in conftest.py, independent references in reference.py)."""

from __future__ import annotations

import torch


def logits_of(model, inputs, **kwargs):
    """The model's logits for `inputs`, without autograd."""
    with torch.no_grad():
        return model(**inputs, **kwargs).logits


def hook_state(model) -> list:
    """Every hook and instance-level override (HF itself adds output-capturing hooks on first use)."""
    return [
        (name, list(m._forward_hooks.values()), list(m._forward_pre_hooks.values()), "forward" in m.__dict__)
        for name, m in model.named_modules()
    ] + ["generate" in model.__dict__]


def own_hooks(hooks) -> list:
    """Hooks other than the output-capturing ones HF itself installs the first time hidden states are asked for."""
    return [h for h in hooks.values() if "output_capturing_hook" not in getattr(h, "__qualname__", "")]


def cast_inputs(inputs: dict, dtype) -> dict:
    """What `BatchFeature.to(dtype)` does: floating tensors take the dtype, ids and masks stay integer."""
    return {k: v.to(dtype) if torch.is_floating_point(v) else v for k, v in inputs.items()}


def make_grid(T, H, W, D, dtype=torch.float32, seed=0, device="cpu"):
    """A (T, H, W, D) grid of standard-normal features, drawn in float64 so every dtype rounds the same numbers."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, H, W, D, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
