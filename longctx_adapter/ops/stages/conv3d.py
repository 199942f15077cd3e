"""Window average pooling over (T, H, W) (PPLLaVA's convolution-style pooling; docs/methods.md#conv3d):
kernel and stride per axis, or an output size per axis solved on each grid ("arbitrary scale", `windows.solve_window`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from longctx_adapter.ops.stages.base import GridShape, Stage, register_stage, shorthand_ints
from longctx_adapter.ops.stages.windows import (
    avg_pool3d_windows,
    check_grid,
    solve_window3d,
    window_chunk_frames,
    window_count,
    window_fields,
    window_min_frames,
)

__all__ = ["Conv3d", "Window3d", "conv3d_pool"]


@dataclass(frozen=True)
class Window3d(Stage):
    """A stage pooling conv3d windows: kernel/stride, or output plus at most one of them (shared by conv3d and
    prompt_guided). Not registered itself."""

    kernel: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    output: tuple[int, ...] | None = None

    @classmethod
    def window_from_dict(cls, data: Mapping) -> dict:
        fields = window_fields(data, cls.type)
        return {k: None if v is None else tuple(v) for k, v in fields.items()}

    def window_dict(self) -> dict:
        """kernel/stride (no output), or output plus the one given."""
        if self.output is None:
            return {"kernel": list(self.kernel), "stride": list(self.stride)}
        out = {"output": list(self.output)}
        if self.kernel is not None:
            out["kernel"] = list(self.kernel)
        if self.stride is not None:
            out["stride"] = list(self.stride)
        return out

    @classmethod
    def window_shorthand(cls, args: str) -> dict:
        values = shorthand_ints(args, (3, 6), cls.shorthand_help)
        return {"type": cls.type, "kernel": values[:3], "stride": values[3:] or values[:3]}

    def window_text(self) -> str | None:
        if self.output is not None:
            return None
        values = list(self.kernel) + ([] if self.kernel == self.stride else list(self.stride))
        return f"{self.type}:" + ",".join(map(str, values))

    def window(self, shape: GridShape) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The solved (kernel, stride) per axis on this grid."""
        return solve_window3d(self.type, self.output, self.kernel, self.stride, shape)

    def output_shape(self, shape: GridShape) -> GridShape:
        kernel, stride = self.window(shape)
        sizes = (shape.frames, shape.height, shape.width)
        return GridShape(*(window_count(n, k, s) for n, k, s in zip(sizes, kernel, stride)))

    def min_frames(self, frames_out: int) -> int:
        return window_min_frames(self.output, self.kernel, self.stride, frames_out)

    def keeps_frames(self, shape: GridShape) -> bool:
        kernel, stride = self.window(shape)
        return kernel[0] == stride[0] == 1

    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        return window_chunk_frames(self.type, self.output, self.kernel, self.stride, frames)


@register_stage
@dataclass(frozen=True)
class Conv3d(Window3d):
    """Without 'output' a missing kernel/stride takes the other's value (PPLLaVA's (2, 3, 3) if both miss)."""

    type = "conv3d"
    shorthand_help = "conv3d:kt,kh,kw[,st,sh,sw]"

    @classmethod
    def from_dict(cls, data: Mapping) -> Conv3d:
        return cls(**cls.window_from_dict(data))

    def to_dict(self) -> dict:
        return {"type": self.type, **self.window_dict()}

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        return cls.window_shorthand(args)

    def shorthand(self) -> str | None:
        return self.window_text()

    def pool_grid(self, grid: torch.Tensor) -> torch.Tensor:
        kernel, stride = self.window(check_grid(grid))
        return avg_pool3d_windows(grid, kernel, stride)


def conv3d_pool(grid: torch.Tensor, kernel, stride) -> torch.Tensor:
    """PPLLaVA's window pooling: windows at multiples of the stride, partial tails averaged over what exists."""
    return Conv3d.from_dict({"kernel": kernel, "stride": stride}).pool_grid(grid)
