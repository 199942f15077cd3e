"""Token-budget pooling: pool each video only as much as needed to fit `max_tokens` visual tokens.

The rule is a ladder of pooling levels from mild to strong; each video takes the first level whose token count is
<= max_tokens (its count is known from the grid alone, so placeholder runs are sized before any tensor exists):

1. no pooling, when T * H * W <= max_tokens;
2. progressive pooling in groups of `group` frames, the first frame of a group at stride k = min(2, H, W), the
   others at stride s, for s = k, k + 1, ..., min(H, W) (s = k is a uniform stride-k pooling);
3. temporal merging of m consecutive frames (m = 2, 3, ..., T) followed by the strongest progressive level,
   progressive (k, min(H, W)).

Every step removes tokens or keeps their count (ceil arithmetic can make neighbouring levels equal), so more budget
never gives fewer tokens. When even one merged frame at stride k does not fit, the stage refuses: it never drops
frames or pools harder than its rule says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import (
    Flow,
    FrameSizes,
    GridShape,
    Stage,
    positive_int,
    register_stage,
    shorthand_ints,
)
from longctx_adapter.ops.stages.progressive import PROGRESSIVE_MODES, Progressive
from longctx_adapter.ops.stages.temporal import Temporal
from longctx_adapter.ops.stages.windows import grid_name, pooled_side

__all__ = ["Budget"]


@register_stage
@dataclass(frozen=True)
class Budget(Stage):
    """At most `max_tokens` tokens per video, reached by the mildest level of the ladder in the module docstring."""

    max_tokens: int
    group: int = 4
    mode: str = "bilinear"

    type = "budget"
    shorthand_help = "budget:N[,GROUP]"
    must_be_last = "it may pool progressively, which makes frames of different sizes that no later stage can pool"

    @classmethod
    def from_dict(cls, data: Mapping) -> Budget:
        if data.get("max_tokens") is None:
            raise AdapterError(
                "budget stage needs 'max_tokens': the most visual tokens one video may keep, e.g. "
                "{'type': 'budget', 'max_tokens': 8192}"
            )
        max_tokens = positive_int(data["max_tokens"], "budget 'max_tokens'")
        group = positive_int(data.get("group", 4), "budget 'group'")
        mode = data.get("mode", "bilinear")
        if mode not in PROGRESSIVE_MODES:
            raise AdapterError(f"budget 'mode' {mode!r} is not supported; use one of {PROGRESSIVE_MODES}")
        return cls(max_tokens, group, mode)

    @classmethod
    def parse_shorthand(cls, args: str) -> dict:
        values = shorthand_ints(args, (1, 2), cls.shorthand_help)
        group = values[1] if len(values) > 1 else 4
        return {"type": cls.type, "max_tokens": values[0], "group": group, "mode": "bilinear"}

    def shorthand(self) -> str | None:
        if self.mode != "bilinear":
            return None
        return f"budget:{self.max_tokens},{self.group}"

    # --- the rule ----------------------------------------------------------------------------------------------------
    def choose(self, shape: GridShape) -> tuple[Stage, ...]:
        """The stages of the mildest level that fits `shape` into max_tokens (empty: no pooling)."""
        if shape.num_tokens <= self.max_tokens:
            return ()
        T, H, W = shape.frames, shape.height, shape.width
        key, strongest = min(2, H, W), min(H, W)

        def progressive(other: int) -> Progressive:
            return Progressive(self.group, (key, other), self.mode)

        for other in range(key, strongest + 1):
            stages = (progressive(other),)
            if _tokens(shape, stages) <= self.max_tokens:
                return stages
        last = progressive(strongest)
        if T < 2 or _tokens(shape, (Temporal(T, T), last)) > self.max_tokens:
            floor = pooled_side(H, key) * pooled_side(W, key)
            raise AdapterError(
                f"budget max_tokens {self.max_tokens} is below the {floor} tokens of one frame of the "
                f"{grid_name(T, H, W)} at stride {key}, the strongest level of the budget rule; raise max_tokens to "
                f"at least {floor}, or pool with an explicit stage (e.g. adaptive3d)"
            )
        low, high = 2, T  # fewest merged frames that fit: the count is non-increasing in m, so bisect
        while low < high:
            middle = (low + high) // 2
            if _tokens(shape, (Temporal(middle, middle), last)) <= self.max_tokens:
                high = middle
            else:
                low = middle + 1
        return (Temporal(low, low), last)

    def describe(self) -> str:
        return f"budget of {self.max_tokens} tokens"

    # --- shapes ------------------------------------------------------------------------------------------------------
    def output_shape(self, shape: GridShape) -> GridShape | FrameSizes:
        for stage in self.choose(shape):
            shape = stage.output_shape(shape)
        return shape

    def scratch_tokens(self, shape: GridShape) -> int:
        most = 0
        for stage in self.choose(shape):
            most = max(most, stage.scratch_tokens(shape))
            shape = stage.output_shape(shape)
        return most

    # --- the op ------------------------------------------------------------------------------------------------------
    def apply(self, flow: Flow) -> Flow:
        for stage in self.choose(flow.shape):
            flow = stage.apply(flow)
        return flow

    def keeps_frames(self, shape: GridShape) -> bool:
        return not self.choose(shape)

    def for_coordinates(self) -> Budget:
        """Same levels; max pooling's tokens sit at their window's centre, as `Progressive.for_coordinates` says."""
        return self if self.mode != "max" else Budget(self.max_tokens, self.group, "avg")


def _tokens(shape: GridShape, stages) -> int:
    for stage in stages:
        shape = stage.output_shape(shape)
    return shape.num_tokens
