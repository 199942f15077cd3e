"""Prompt-guided pooling (PPLLaVA; docs/methods.md#prompt-guided): conv3d's windows, each averaged with softmax weights from the
question relevance of its tokens.

`w = softmax(logits)` over all T*H*W tokens of the grid it pools, then inside each window
`a = softmax(w_window / temperature)` and `out = sum(a * features)`. Computed as `sum(f * e) / sum(e)` with
`e = exp((w - m) / temperature)` over conv3d's exact windows (ceil_mode, partial tails averaged over what exists),
`m` each window's own maximum, so every window's largest weight is exactly 1 and no window underflows, however
peaked the weights (float32 follows a float64 reference to ~1e-7). Windows that tile the grid (kernel == stride)
use avg_pool3d on one `e` map; overlapping windows, where one token has a different `e` in each window, take one
strided pass per kernel offset. Uniform weights and no question are conv3d average pooling, bit for bit.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import Flow, register_stage, scorer_name
from longctx_adapter.ops.stages.conv3d import Window3d, conv3d_pool
from longctx_adapter.ops.stages.windows import check_grid

__all__ = ["PromptGuided", "prompt_guided_pool", "weighted_window_pool"]


@register_stage
@dataclass(frozen=True)
class PromptGuided(Window3d):
    """conv3d's window rules (kernel/stride, or output with the solver) plus the softmax temperature."""

    temperature: float = 0.01
    scorer: str | None = None

    type = "prompt_guided"
    shorthand_help = "prompt_guided:kt,kh,kw[,st,sh,sw]"

    @classmethod
    def from_dict(cls, data: Mapping) -> PromptGuided:
        window = cls.window_from_dict(data)
        temperature = data.get("temperature", 0.01)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise AdapterError(
                f"prompt_guided 'temperature' must be a number > 0, got {temperature!r}; PPLLaVA uses 0.01"
            )
        return cls(**window, temperature=float(temperature), scorer=scorer_name(data, cls.type))

    def to_dict(self) -> dict:
        return {"type": self.type, **self.window_dict(), "temperature": self.temperature, "scorer": self.scorer}

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        return cls.window_shorthand(args)

    def shorthand(self) -> str | None:
        return self.window_text() if self.temperature == 0.01 and self.scorer is None else None

    @property
    def guided(self) -> bool:
        return True

    def apply(self, flow: Flow) -> Flow:
        kernel, stride = self.window(check_grid(flow.grid))
        guide = flow.guide
        weights = guide.weights() if guide is not None else None
        grid = prompt_guided_pool(flow.grid, weights, kernel, stride, self.temperature)
        if guide is not None:
            guide = guide.pooled(lambda g: conv3d_pool(g, kernel, stride))
        origin = flow.origin if kernel[0] == stride[0] == 1 else None
        return flow.replace(grid=grid, guide=guide, origin=origin)

    def pool_grid(self, grid: torch.Tensor) -> torch.Tensor:
        """Without a question: conv3d average pooling over the same windows."""
        kernel, stride = self.window(check_grid(grid))
        return conv3d_pool(grid, kernel, stride)


def _non_overlapping_max(z: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Each element's window maximum, for windows that tile the grid (kernel == stride)."""
    T, H, W = z.shape
    peak = F.max_pool3d(z[None, None], kernel, stride, ceil_mode=True)[0, 0]
    for axis, (k, n) in enumerate(zip(kernel, (T, H, W))):
        peak = peak.repeat_interleave(k, dim=axis).narrow(axis, 0, n)
    return peak


def weighted_window_pool(grid: torch.Tensor, weights: torch.Tensor, kernel, stride, temperature: float) -> torch.Tensor:
    """(T, H, W, D) -> (T', H', W', D): inside each conv3d window, `softmax(w / temperature)`-weighted average.

    kernel, stride: solved (time, height, width) windows as `PromptGuided.window` gives them. Float16/bfloat16
    features are pooled in float32 and cast back; float32/float64 stay as they are.
    """
    shape = check_grid(grid)
    T, H, W = shape.frames, shape.height, shape.width
    if tuple(weights.shape) != (T, H, W):
        raise AdapterError(f"weights of shape {tuple(weights.shape)} do not match the {T}x{H}x{W} grid")
    kernel, stride = tuple(int(k) for k in kernel), tuple(int(s) for s in stride)
    compute = torch.float32 if grid.dtype in (torch.float16, torch.bfloat16) else grid.dtype
    z = weights.to(device=grid.device, dtype=torch.float64)
    if bool(z.max() == z.min()):  # uniform weights: every window's softmax is the plain average
        return conv3d_pool(grid, kernel, stride)
    z = (z - z.max()) / float(temperature)
    if kernel != stride:
        return _overlapping_window_pool(grid.to(compute), z, kernel, stride).to(grid.dtype)
    e = torch.exp(z - _non_overlapping_max(z, kernel, stride)).to(compute)  # 1 at each window's maximum
    features = grid.to(compute) * e[..., None]
    num = F.avg_pool3d(features.permute(3, 0, 1, 2)[None], kernel, stride, ceil_mode=True, count_include_pad=False)
    den = F.avg_pool3d(e[None, None], kernel, stride, ceil_mode=True, count_include_pad=False)
    return (num / den)[0].permute(1, 2, 3, 0).to(grid.dtype)


def _overlapping_window_pool(grid: torch.Tensor, z: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Windows that overlap (or leave gaps): each window shifts by its own maximum, so its softmax never
    underflows however far it lies below the global peak. One strided pass per kernel offset: the memory of one
    output grid, no copy of the input."""
    peak = F.max_pool3d(z[None, None], kernel, stride, ceil_mode=True)[0, 0]  # (T', H', W') window maxima
    out_shape = tuple(peak.shape)
    num = grid.new_zeros(*out_shape, grid.shape[-1])
    den = torch.zeros(out_shape, dtype=grid.dtype, device=grid.device)
    for offset in itertools.product(*(range(k) for k in kernel)):
        counts = [
            min(n_out, (n - 1 - a) // s + 1) if a < n else 0
            for n_out, n, a, s in zip(out_shape, z.shape, offset, stride)
        ]
        if 0 in counts:
            continue
        source = tuple(slice(a, a + (c - 1) * s + 1, s) for a, c, s in zip(offset, counts, stride))
        target = tuple(slice(0, c) for c in counts)
        e = torch.exp(z[source] - peak[target]).to(grid.dtype)
        num[target] += grid[source] * e[..., None]
        den[target] += e
    return num / den[..., None]


def prompt_guided_pool(grid: torch.Tensor, weights: torch.Tensor | None, kernel, stride, temperature: float = 0.01):
    """PPLLaVA's prompt-guided pooling; None or constant weights are conv3d average pooling (exactly)."""
    if weights is None:
        return conv3d_pool(grid, kernel, stride)
    return weighted_window_pool(grid, weights, kernel, stride, temperature)
