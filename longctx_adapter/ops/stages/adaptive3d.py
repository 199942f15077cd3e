"""Adaptive 3-D average pooling (PLLaVA; docs/methods.md#adaptive3d): `F.adaptive_avg_pool3d` over (T, H, W) to a target size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import GridShape, Stage, register_stage, shorthand_ints, triple
from longctx_adapter.ops.stages.windows import AXES, channels_first, channels_last, check_grid, grid_name

__all__ = ["Adaptive3d", "adaptive_pool3d"]


@register_stage
@dataclass(frozen=True)
class Adaptive3d(Stage):
    """Parameter-free; PLLaVA's default is 16x24x24 -> 16x12x12 (spatial only). Never upsamples."""

    output: tuple[int, int, int]

    type = "adaptive3d"
    shorthand_help = "adaptive3d:T,H,W"

    @classmethod
    def from_dict(cls, data: Mapping) -> Adaptive3d:
        if data.get("output") is None:
            raise AdapterError(
                "adaptive3d stage needs 'output': [T, H, W], e.g. {'type': 'adaptive3d', 'output': [16, 12, 12]}"
            )
        return cls(tuple(triple(data["output"], "adaptive3d 'output'")))

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        return {"type": cls.type, "output": shorthand_ints(args, (3,), cls.shorthand_help)}

    def shorthand(self) -> str:
        return "adaptive3d:" + ",".join(map(str, self.output))

    def output_shape(self, shape: GridShape) -> GridShape:
        sizes = (shape.frames, shape.height, shape.width)
        for axis, o, size in zip(AXES, self.output, sizes):
            if o > size:
                raise AdapterError(
                    f"adaptive3d output {list(self.output)} is larger than the {grid_name(*sizes)} on the {axis} "
                    f"axis ({o} > {size}); pooling never upsamples, use an output <= {list(sizes)}"
                )
        return GridShape(*self.output)

    def min_frames(self, frames_out: int) -> int:
        return self.output[0]

    def pool_grid(self, grid: torch.Tensor) -> torch.Tensor:
        self.output_shape(check_grid(grid))
        return channels_last(F.adaptive_avg_pool3d(channels_first(grid), list(self.output)))

    def keeps_frames(self, shape: GridShape) -> bool:
        return self.output[0] == shape.frames


def adaptive_pool3d(grid: torch.Tensor, output) -> torch.Tensor:
    """PLLaVA's pooling: F.adaptive_avg_pool3d over (T, H, W) with the features as channels."""
    return Adaptive3d.from_dict({"output": output}).pool_grid(grid)
