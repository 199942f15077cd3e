"""Temporal smoothing pooling (docs/methods.md#temporal): average frames with a window `kernel` and a step `stride`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import GridShape, Stage, positive_int, register_stage, shorthand_ints
from longctx_adapter.ops.stages.windows import check_grid, check_kernel_covers_stride, grid_name, pooled_side

__all__ = ["Temporal", "temporal_pool"]


@register_stage
@dataclass(frozen=True)
class Temporal(Stage):
    """`stride = 1` smooths without reducing the count, `stride = kernel` merges `kernel` consecutive frames.

    A window starts at every multiple of the stride below T, so ceil(T / stride) frames come out; a window that
    runs past the last frame averages the frames that exist.
    """

    kernel: int = 2
    stride: int = 2

    type = "temporal"
    shorthand_help = "temporal:K[,S]"

    @classmethod
    def from_dict(cls, data: Mapping) -> Temporal:
        """A missing kernel or stride takes the other's value (merge windows); both missing means 2 and 2."""
        kernel, stride = data.get("kernel"), data.get("stride")
        kernel = None if kernel is None else positive_int(kernel, "temporal 'kernel'")
        stride = None if stride is None else positive_int(stride, "temporal 'stride'")
        kernel = kernel or stride or 2
        stride = stride or kernel
        check_kernel_covers_stride(kernel, stride, "temporal")
        return cls(kernel, stride)

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        values = shorthand_ints(args, (1, 2), cls.shorthand_help)
        return {"type": cls.type, "kernel": values[0], "stride": values[-1]}

    def shorthand(self) -> str:
        return f"temporal:{self.kernel},{self.stride}"

    def _check(self, shape: GridShape) -> None:
        if self.stride > shape.frames:
            raise AdapterError(
                f"temporal stride {self.stride} is larger than the {shape.frames} frames of the "
                f"{grid_name(shape.frames, shape.height, shape.width)}; use a stride <= {shape.frames}"
            )

    def output_shape(self, shape: GridShape) -> GridShape:
        self._check(shape)
        return GridShape(pooled_side(shape.frames, self.stride), shape.height, shape.width)

    def min_frames(self, frames_out: int) -> int:
        return max(self.stride, (frames_out - 1) * self.stride + 1)

    def pool_grid(self, grid: torch.Tensor) -> torch.Tensor:
        shape = check_grid(grid)
        self._check(shape)
        T, kernel, stride = shape.frames, self.kernel, self.stride
        full = (T - kernel) // stride + 1 if T >= kernel else 0
        parts = [grid.unfold(0, kernel, stride).mean(-1)] if full else []
        parts += [grid[start:].mean(0, keepdim=True) for start in range(full * stride, T, stride)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def keeps_frames(self, shape: GridShape) -> bool:
        return self.kernel == 1

    def chunk_frames(self, frames: int) -> tuple[int | None, str]:
        if self.kernel != self.stride:
            return None, "temporal kernel != stride: windows overlap chunk borders"
        if frames % self.stride:
            return None, f"chunk of {frames} frames is not a multiple of the temporal stride"
        return frames // self.stride, ""


def temporal_pool(grid: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frame smoothing: a window starts at every multiple of the stride below T, so ceil(T / stride) frames come out."""
    return Temporal.from_dict({"kernel": kernel, "stride": stride}).pool_grid(grid)
