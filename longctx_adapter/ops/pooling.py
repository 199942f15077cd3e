"""Parameter-free pooling of one video's visual tokens (DESIGN 3.1-3.3).

Every operator takes one video grid of shape (T, H, W, D): T frames of H x W tokens with D features,
as they come out of the projector. Nothing here knows about models, so the same code serves every
architecture, and the shape arithmetic (`pooled_frame_sizes`) can size placeholder runs before any
tensor exists.

Tail rule shared by every windowed average: a window that runs past the end of an axis is averaged
over the elements that exist, so no frame or token is ever dropped and no zero padding dilutes a mean.
Features keep their dtype and device.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError

__all__ = [
    "PROGRESSIVE_MODES",
    "GUIDED_STAGE_TYPES",
    "STAGE_TYPES",
    "PooledVideo",
    "is_guided",
    "adaptive_pool3d",
    "conv3d_pool",
    "count_tokens",
    "normalize_pooling",
    "normalize_stage",
    "pool_video",
    "pooled_frame_sizes",
    "progressive_pool",
    "solve_window",
    "temporal_pool",
]

STAGE_TYPES = ("progressive", "temporal", "adaptive3d", "conv3d", "prompt_guided", "select_frames")
PROGRESSIVE_MODES = ("bilinear", "avg", "max")
#: stage types whose result depends on the question (see longctx_adapter/ops/guided.py); progressive joins them
#: when its "anchor" is "score"
GUIDED_STAGE_TYPES = ("prompt_guided", "select_frames")
FRAME_SCORES = ("mean", "max", "global")
_STAGE_KEYS = {
    "progressive": ("type", "group", "strides", "mode", "anchor", "score", "scorer"),
    "temporal": ("type", "kernel", "stride"),
    "adaptive3d": ("type", "output"),
    "conv3d": ("type", "kernel", "stride", "output"),
    "prompt_guided": ("type", "kernel", "stride", "output", "temperature", "scorer"),
    "select_frames": ("type", "segments", "per_segment", "score", "positions", "scorer"),
}
_AXES = ("time", "height", "width")
_PPLLAVA_WINDOW = [2, 3, 3]


@dataclass(frozen=True)
class PooledVideo:
    """Pooled frames kept apart, because progressive pooling gives frames of different sizes."""

    frames: tuple[torch.Tensor, ...]
    #: question-guided stages only: what they decided (guided.GuidedInfo: the guide, kept frames, anchors)
    guided: object = field(default=None, compare=False, repr=False)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(f.shape[0]), int(f.shape[1])) for f in self.frames)

    @property
    def num_tokens(self) -> int:
        return sum(h * w for h, w in self.sizes)

    def flatten(self) -> torch.Tensor:
        """Tokens in placeholder order: frame-major, row-major inside a frame."""
        if not self.frames:
            raise AdapterError("a PooledVideo with no frames has no feature size to flatten; pool a grid with T >= 1")
        if len(self.frames) == 1:
            return self.frames[0].reshape(-1, self.frames[0].shape[-1])
        return torch.cat([f.reshape(-1, f.shape[-1]) for f in self.frames])


# ---------------------------------------------------------------------------------------------------------------------
# Stage validation: one JSON-able dict per stage, checked once so the operators can trust their arguments.


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _positive_int(value, what: str) -> int:
    if not _is_int(value) or value < 1:
        raise AdapterError(f"{what} must be a positive integer, got {value!r}; use an int >= 1")
    return int(value)


def _int_list(value, what: str, length: int | None = None) -> list[int]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise AdapterError(f"{what} must be a list of positive integers, got {value!r}")
    if length is not None and len(value) != length:
        raise AdapterError(f"{what} must have {length} entries (time, height, width), got {value!r}")
    return [_positive_int(v, f"each entry of {what}") for v in value]


def _triple(value, what: str) -> list[int]:
    """A single int means the same value on time, height and width."""
    if _is_int(value):
        return [_positive_int(value, what)] * 3
    return _int_list(value, what, length=3)


def _normalize_progressive(stage: Mapping) -> dict:
    group = _positive_int(stage.get("group", 4), "progressive 'group'")
    strides = _int_list(stage.get("strides", [2, 8]), "progressive 'strides'")
    if not strides:
        raise AdapterError("progressive 'strides' is empty; give at least one stride, e.g. [2, 8]")
    if len(strides) > group:
        raise AdapterError(
            f"progressive 'strides' {strides} has {len(strides)} entries but 'group' is {group}; give at most one "
            f"stride per position in a group (len(strides) <= group)"
        )
    mode = stage.get("mode", "bilinear")
    if mode not in PROGRESSIVE_MODES:
        raise AdapterError(f"progressive 'mode' {mode!r} is not supported; use one of {PROGRESSIVE_MODES}")
    out = {"type": "progressive", "group": group, "strides": strides, "mode": mode}
    anchor = stage.get("anchor", "first")
    if anchor not in ("first", "score"):
        raise AdapterError(f"progressive 'anchor' {anchor!r} is not supported; use 'first' or 'score'")
    if anchor == "first":  # the stock form: no extra keys, so configs written before anchors stay equal
        given = sorted(k for k in ("score", "scorer") if stage.get(k) is not None)
        if given:
            raise AdapterError(f"progressive key(s) {given} only apply with 'anchor': 'score'; add it or drop them")
        return out
    out.update(anchor="score", score=_frame_score(stage, "progressive"), scorer=_scorer_name(stage, "progressive"))
    return out


def _frame_score(stage: Mapping, kind: str) -> str:
    score = stage.get("score", "mean")
    if score not in FRAME_SCORES:
        raise AdapterError(f"{kind} 'score' {score!r} is not supported; use one of {FRAME_SCORES}")
    return score


def _scorer_name(stage: Mapping, kind: str):
    """None (the scorer given to apply_adapter) or a string: a name given to register_scorer, or a local path."""
    scorer = stage.get("scorer")
    if scorer is not None and (not isinstance(scorer, str) or not scorer):
        raise AdapterError(
            f"{kind} 'scorer' must be a string (a registered scorer name or a local CLIP/SigLIP checkpoint path) or "
            f"null, got {scorer!r}; pass a loaded scorer model as apply_adapter(model, config, scorer=...) instead"
        )
    return scorer


def _check_kernel_covers_stride(kernel: int, stride: int, what: str) -> None:
    if kernel < stride:
        raise AdapterError(
            f"{what} kernel {kernel} is smaller than its stride {stride}, so elements between windows would be "
            f"skipped; use kernel >= stride"
        )


def _normalize_temporal(stage: Mapping) -> dict:
    """A missing kernel or stride takes the other's value (merge windows); both missing means 2 and 2."""
    kernel, stride = stage.get("kernel"), stage.get("stride")
    kernel = _positive_int(kernel if kernel is not None else (stride if stride is not None else 2), "temporal 'kernel'")
    stride = _positive_int(stride if stride is not None else kernel, "temporal 'stride'")
    _check_kernel_covers_stride(kernel, stride, "temporal")
    return {"type": "temporal", "kernel": kernel, "stride": stride}


def _normalize_adaptive3d(stage: Mapping) -> dict:
    if stage.get("output") is None:
        raise AdapterError(
            "adaptive3d stage needs 'output': [T, H, W], e.g. {'type': 'adaptive3d', 'output': [16, 12, 12]}"
        )
    return {"type": "adaptive3d", "output": _triple(stage["output"], "adaptive3d 'output'")}


def _normalize_conv3d(stage: Mapping) -> dict:
    """Without 'output' a missing kernel/stride takes the other's value (PPLLaVA's (2, 3, 3) if both miss)."""
    kernel = None if stage.get("kernel") is None else _triple(stage["kernel"], "conv3d 'kernel'")
    stride = None if stage.get("stride") is None else _triple(stage["stride"], "conv3d 'stride'")
    if stage.get("output") is not None:
        if kernel is not None and stride is not None:
            raise AdapterError(
                "conv3d stage gives 'output', 'kernel' and 'stride'; the solver needs the output plus at most one of "
                "'kernel'/'stride' (drop one of them, or drop 'output')"
            )
        out = {"type": "conv3d", "output": _triple(stage["output"], "conv3d 'output'")}
        if kernel is not None:
            out["kernel"] = kernel
        if stride is not None:
            out["stride"] = stride
        return out
    kernel = kernel or stride or list(_PPLLAVA_WINDOW)
    stride = stride or kernel
    for axis, k, s in zip(_AXES, kernel, stride):
        _check_kernel_covers_stride(k, s, f"conv3d {axis}")
    return {"type": "conv3d", "kernel": list(kernel), "stride": list(stride)}


def _normalize_prompt_guided(stage: Mapping) -> dict:
    """conv3d's window rules (kernel/stride, or output with the solver) plus the softmax temperature."""
    out = _normalize_conv3d({k: stage.get(k) for k in ("kernel", "stride", "output")})
    temperature = stage.get("temperature", 0.01)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise AdapterError(f"prompt_guided 'temperature' must be a number > 0, got {temperature!r}; PPLLaVA uses 0.01")
    out.update(type="prompt_guided", temperature=float(temperature), scorer=_scorer_name(stage, "prompt_guided"))
    return out


def _normalize_select_frames(stage: Mapping) -> dict:
    if stage.get("segments") is None:
        raise AdapterError(
            "select_frames needs 'segments' (how many equal parts the video is split into), e.g. "
            "{'type': 'select_frames', 'segments': 4, 'per_segment': 1}"
        )
    positions = stage.get("positions", "original")
    if positions not in ("original", "repacked"):
        raise AdapterError(f"select_frames 'positions' {positions!r} is not supported; use 'original' or 'repacked'")
    return {
        "type": "select_frames",
        "segments": _positive_int(stage["segments"], "select_frames 'segments'"),
        "per_segment": _positive_int(stage.get("per_segment", 1), "select_frames 'per_segment'"),
        "score": _frame_score(stage, "select_frames"),
        "positions": positions,
        "scorer": _scorer_name(stage, "select_frames"),
    }


def is_guided(stage: Mapping) -> bool:
    """True for stages whose result depends on the question (they need a scorer)."""
    return stage["type"] in GUIDED_STAGE_TYPES or stage.get("anchor") == "score"


_NORMALIZERS = {
    "progressive": _normalize_progressive,
    "temporal": _normalize_temporal,
    "adaptive3d": _normalize_adaptive3d,
    "conv3d": _normalize_conv3d,
    "prompt_guided": _normalize_prompt_guided,
    "select_frames": _normalize_select_frames,
}


def normalize_stage(stage: Mapping) -> dict:
    """Validate one stage dict and fill its defaults, so the config on disk stays short and typos fail loudly."""
    if not isinstance(stage, Mapping):
        raise AdapterError(f"a pooling stage must be a dict such as {{'type': 'temporal'}}, got {stage!r}")
    kind = stage.get("type")
    if kind not in STAGE_TYPES:
        raise AdapterError(f"unknown pooling stage type {kind!r}; set 'type' to one of {STAGE_TYPES}")
    allowed = _STAGE_KEYS[kind]
    for key in stage:
        if key not in allowed:
            raise AdapterError(f"unknown key {key!r} in a {kind} pooling stage; allowed keys: {allowed}")
    return _NORMALIZERS[kind](stage)


def normalize_pooling(pooling) -> tuple[dict, ...]:
    """Accept None, one stage or a list of stages; progressive must come last since later stages need a grid."""
    if pooling is None:
        return ()
    if isinstance(pooling, Mapping):
        pooling = [pooling]
    if isinstance(pooling, (str, bytes)) or not isinstance(pooling, Sequence):
        raise AdapterError(f"pooling must be None, a stage dict or a list of stage dicts, got {pooling!r}")
    stages = tuple(normalize_stage(stage) for stage in pooling)
    for position, stage in enumerate(stages[:-1]):
        if stage["type"] == "progressive":
            raise AdapterError(
                f"progressive pooling is stage {position + 1} of {len(stages)}, but it makes frames of different "
                f"sizes that no later stage can pool; move the progressive stage to the end of the list"
            )
    scorers = sorted({s["scorer"] for s in stages if is_guided(s) and s.get("scorer") is not None})
    if len(scorers) > 1:
        raise AdapterError(
            f"question-guided stages name different scorers {scorers}; one config uses one scorer, so give the "
            "same 'scorer' to every stage (or leave it out and pass scorer= to apply_adapter)"
        )
    return stages


# ---------------------------------------------------------------------------------------------------------------------
# Shape arithmetic: shared by the operators and by pooled_frame_sizes, so both refuse the same grids.


def _grid_name(T: int, H: int, W: int) -> str:
    return f"{T}x{H}x{W} (T x H x W) token grid"


def _check_grid_shape(T, H, W) -> tuple[int, int, int]:
    if not all(_is_int(n) and n >= 1 for n in (T, H, W)):
        raise AdapterError(f"a video grid needs T, H, W >= 1, got {(T, H, W)}; pass at least one frame of one token")
    return int(T), int(H), int(W)


def _check_grid(grid: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(grid, torch.Tensor) or grid.dim() != 4 or grid.shape[-1] < 1:
        shape = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise AdapterError(f"pooling needs one video grid of shape (T, H, W, D), got {shape}; reshape the features")
    return _check_grid_shape(*grid.shape[:3])


def _window_count(size: int, kernel: int, stride: int) -> int:
    """Windows at 0, s, 2s, ... while one starts at or before size - kernel, plus one for a partial tail."""
    return -(-(size - kernel) // stride) + 1


def solve_window(size, output=None, kernel=None, stride=None, *, axis: str = "the") -> tuple[int, int]:
    """PPLLaVA's arbitrary-scale rule: from an axis size and any of output/kernel/stride, find (kernel, stride)."""
    size = _positive_int(size, f"{axis} axis size")
    where = f"{axis} axis of size {size}"
    if output is None:
        if kernel is None and stride is None:
            raise AdapterError(f"no window for the {where}: give an output size, a kernel or a stride")
        kernel = _positive_int(kernel if kernel is not None else stride, f"kernel on the {where}")
        stride = _positive_int(stride if stride is not None else kernel, f"stride on the {where}")
    else:
        output = _positive_int(output, f"output size on the {where}")
        kernel, stride = _solve_from_output(size, output, kernel, stride, where)
    if kernel > size:
        raise AdapterError(f"kernel {kernel} is larger than the {where}; use a kernel <= {size}")
    _check_kernel_covers_stride(kernel, stride, f"the {where}: window")
    if output is not None and _window_count(size, kernel, stride) != output:
        raise AdapterError(
            f"kernel {kernel} with stride {stride} gives {_window_count(size, kernel, stride)} windows on the {where}, "
            f"not the requested output {output}; give only the output and let the solver pick kernel and stride"
        )
    return kernel, stride


def _solve_from_output(size: int, output: int, kernel, stride, where: str) -> tuple[int, int]:
    if kernel is not None and stride is not None:
        raise AdapterError(f"output, kernel and stride all given for the {where}; give the output plus at most one")
    if output > size:
        raise AdapterError(f"output {output} is larger than the {where}; pooling never upsamples, use output <= {size}")
    if stride is not None:
        stride = _positive_int(stride, f"stride on the {where}")
        if output * stride > size:
            raise AdapterError(
                f"output {output} at stride {stride} needs at least {output * stride} elements but the {where} has "
                f"only {size}; use a smaller stride or output"
            )
        return size - (output - 1) * stride, stride
    if kernel is not None:
        kernel = _positive_int(kernel, f"kernel on the {where}")
        if output == 1:
            return kernel, kernel
        stride = (size - kernel) // (output - 1)
        if stride < 1:
            raise AdapterError(
                f"kernel {kernel} leaves {size - kernel} elements for {output - 1} more windows on the {where}; use a "
                f"smaller kernel or output"
            )
        return kernel, stride
    stride = size // output
    return size - (output - 1) * stride, stride


def _conv3d_window(stage: Mapping, T: int, H: int, W: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    output = stage.get("output") or [None] * 3
    kernel = stage.get("kernel") or [None] * 3
    stride = stage.get("stride") or [None] * 3
    solved = []
    for axis, size, o, k, s in zip(_AXES, (T, H, W), output, kernel, stride):
        try:
            solved.append(solve_window(size, o, k, s, axis=axis))
        except AdapterError as err:
            raise AdapterError(f"conv3d pooling on a {_grid_name(T, H, W)}: {err}") from None
    kernels, strides = zip(*solved)
    return tuple(kernels), tuple(strides)


def _check_temporal(stride: int, T: int, H: int, W: int) -> None:
    if stride > T:
        raise AdapterError(
            f"temporal stride {stride} is larger than the {T} frames of the {_grid_name(T, H, W)}; use a stride <= {T}"
        )


def _check_adaptive(output: Sequence[int], T: int, H: int, W: int) -> None:
    for axis, o, size in zip(_AXES, output, (T, H, W)):
        if o > size:
            raise AdapterError(
                f"adaptive3d output {list(output)} is larger than the {_grid_name(T, H, W)} on the {axis} axis "
                f"({o} > {size}); pooling never upsamples, use an output <= {[T, H, W]}"
            )


def _check_select(stage: Mapping, T: int, H: int, W: int) -> None:
    segments, per_segment = stage["segments"], stage["per_segment"]
    if segments > T:
        raise AdapterError(
            f"select_frames 'segments' {segments} is larger than the {T} frames of the {_grid_name(T, H, W)}; use "
            f"segments <= {T} (or sample more frames)"
        )
    shortest = T // segments
    if per_segment > shortest:
        raise AdapterError(
            f"select_frames 'per_segment' {per_segment} is larger than a segment: {T} frames in {segments} segments "
            f"gives segments of only {shortest} frame(s) (video grid {_grid_name(T, H, W)}); use per_segment <= "
            f"{shortest}, fewer segments, or more frames"
        )


def _frame_strides(
    T: int, H: int, W: int, group: int, strides: Sequence[int], anchors: Sequence[int] | None = None
) -> list[int]:
    """Position p in its group uses strides[min(p, last)]: [2, 8] = one sharp frame per group, the rest coarse.

    anchors (keyframe mode): the frame index of each group's anchor, which takes strides[0]; the group's other
    frames take strides[1], strides[2], ... in temporal order (the last stride repeating).
    """
    for s in strides:
        if s > H or s > W:
            raise AdapterError(
                f"progressive stride {s} is larger than the {H}x{W} token grid of a frame (video grid "
                f"{_grid_name(T, H, W)}); use strides <= {min(H, W)}"
            )
    last = len(strides) - 1
    if anchors is None:
        return [strides[min(t % group, last)] for t in range(T)]
    schedule = []
    for number, start in enumerate(range(0, T, group)):
        members = range(start, min(start + group, T))
        if anchors[number] not in members:
            raise AdapterError(f"anchor frame {anchors[number]} is not in group {number} (frames {list(members)})")
        rank = 1
        for t in members:
            if t == anchors[number]:
                schedule.append(strides[0])
            else:
                schedule.append(strides[min(rank, last)])
                rank += 1
    return schedule


def _pooled_side(size: int, stride: int) -> int:
    return -(-size // stride)


def _uniform_shape(stage: Mapping, T: int, H: int, W: int) -> tuple[int, int, int]:
    kind = stage["type"]
    if kind == "temporal":
        _check_temporal(stage["stride"], T, H, W)
        return _pooled_side(T, stage["stride"]), H, W
    if kind == "adaptive3d":
        _check_adaptive(stage["output"], T, H, W)
        return tuple(stage["output"])
    if kind == "select_frames":
        _check_select(stage, T, H, W)
        return stage["segments"] * stage["per_segment"], H, W
    kernel, stride = _conv3d_window(stage, T, H, W)  # conv3d and prompt_guided share the window rules
    return tuple(_window_count(n, k, s) for n, k, s in zip((T, H, W), kernel, stride))


def pooled_frame_sizes(T, H, W, stages) -> list[tuple[int, int]]:
    """Per-frame (h, w) after pooling, without tensors: sizes the placeholder run before features exist."""
    T, H, W = _check_grid_shape(T, H, W)
    for stage in normalize_pooling(stages):
        if stage["type"] == "progressive":
            schedule = _frame_strides(T, H, W, stage["group"], stage["strides"])
            return [(_pooled_side(H, s), _pooled_side(W, s)) for s in schedule]
        T, H, W = _uniform_shape(stage, T, H, W)
    return [(H, W)] * T


def count_tokens(T, H, W, stages) -> int:
    return sum(h * w for h, w in pooled_frame_sizes(T, H, W, stages))


# ---------------------------------------------------------------------------------------------------------------------
# Operators.


def _channels_first(grid: torch.Tensor) -> torch.Tensor:
    """(T, H, W, D) -> (1, D, T, H, W) as a view: torch's pools see a channels-last tensor and need no copy."""
    return grid.permute(3, 0, 1, 2).unsqueeze(0)


def _channels_last(pooled: torch.Tensor) -> torch.Tensor:
    return pooled.squeeze(0).permute(1, 2, 3, 0)


def _needs_fp32_pool3d(grid: torch.Tensor) -> bool:
    """CPU avg_pool3d has no half/bfloat16 kernel; pool in float32 there and cast back."""
    return grid.device.type == "cpu" and grid.dtype in (torch.float16, torch.bfloat16)


def adaptive_pool3d(grid: torch.Tensor, output) -> torch.Tensor:
    """PLLaVA's pooling: F.adaptive_avg_pool3d over (T, H, W) with the features as channels."""
    T, H, W = _check_grid(grid)
    output = _normalize_adaptive3d({"output": output})["output"]
    _check_adaptive(output, T, H, W)
    return _channels_last(F.adaptive_avg_pool3d(_channels_first(grid), output))


def conv3d_pool(grid: torch.Tensor, kernel, stride) -> torch.Tensor:
    """PPLLaVA's window pooling: windows at multiples of the stride, partial tails averaged over what exists."""
    T, H, W = _check_grid(grid)
    stage = _normalize_conv3d({"kernel": kernel, "stride": stride})
    kernel, stride = _conv3d_window(stage, T, H, W)
    x = _channels_first(grid.float() if _needs_fp32_pool3d(grid) else grid)
    pooled = F.avg_pool3d(x, kernel, stride, ceil_mode=True, count_include_pad=False)
    return _channels_last(pooled).to(grid.dtype)


def temporal_pool(grid: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """Frame smoothing: a window starts at every multiple of the stride below T, so ceil(T / stride) frames come out."""
    T, H, W = _check_grid(grid)
    stage = _normalize_temporal({"kernel": kernel, "stride": stride})
    kernel, stride = stage["kernel"], stage["stride"]
    _check_temporal(stride, T, H, W)
    full = (T - kernel) // stride + 1 if T >= kernel else 0
    parts = [grid.unfold(0, kernel, stride).mean(-1)] if full else []
    parts += [grid[start:].mean(0, keepdim=True) for start in range(full * stride, T, stride)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _pool_frames(frames: torch.Tensor, stride: int, mode: str) -> torch.Tensor:
    """Pool (N, H, W, D) frames at one stride, returning (N, ceil(H/s), ceil(W/s), D) contiguous.

    The (N, D, H, W) input is a channels-last view rather than LLaVA-OneVision's `.contiguous()` copy: torch's
    bilinear kernels evaluate the same expression in both layouts, so the bits match (tested) and a copy is saved.
    """
    x = frames.permute(0, 3, 1, 2)
    if mode == "bilinear":
        size = (_pooled_side(x.shape[2], stride), _pooled_side(x.shape[3], stride))
        pooled = F.interpolate(x, size=size, mode="bilinear")
    elif mode == "avg":
        pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)
    else:
        pooled = F.max_pool2d(x, stride, stride, ceil_mode=True)
    return pooled.permute(0, 2, 3, 1).contiguous()


def progressive_pool(
    grid: torch.Tensor, group: int = 4, strides=(2, 8), mode: str = "bilinear", anchors=None
) -> PooledVideo:
    """VCWE's progressive pooling: frames sharing a stride are gathered and pooled in one batched call.

    anchors: None (each group's first frame is the sharp one) or one frame index per group (keyframe mode).
    """
    T, H, W = _check_grid(grid)
    stage = _normalize_progressive({"group": group, "strides": strides, "mode": mode})
    schedule = _frame_strides(T, H, W, stage["group"], stage["strides"], anchors)
    frames: list[torch.Tensor | None] = [None] * T
    for stride in sorted(set(schedule)):
        picked = [t for t, s in enumerate(schedule) if s == stride]
        if stride == 1:
            pooled = grid.unbind(0)
            pooled = [pooled[t] for t in picked]
        else:
            index = torch.tensor(picked, device=grid.device)
            pooled = _pool_frames(grid.index_select(0, index), stride, stage["mode"]).unbind(0)
        for t, frame in zip(picked, pooled):
            frames[t] = frame
    return PooledVideo(tuple(frames))


def _apply_uniform(grid: torch.Tensor, stage: Mapping) -> torch.Tensor:
    kind = stage["type"]
    if kind == "temporal":
        return temporal_pool(grid, stage["kernel"], stage["stride"])
    if kind == "adaptive3d":
        return adaptive_pool3d(grid, stage["output"])
    kernel, stride = _conv3d_window(stage, *grid.shape[:3])
    return conv3d_pool(grid, kernel, stride)


def pool_video(grid: torch.Tensor, stages, guide=None, *, coordinates: bool = False) -> PooledVideo:
    """Apply the stages in order; no stages gives every frame unchanged.

    guide: a `guided.Guide` (question relevance of every token of `grid`) for question-guided stages; without
    one they fall back to their uniform form. coordinates: `grid` holds (t, row, column) coordinates
    (positions.pooled_coordinates), so select_frames with positions "repacked" renumbers t.
    """
    _check_grid(grid)
    stages = normalize_pooling(stages)
    if guide is not None or any(is_guided(stage) for stage in stages):
        from longctx_adapter.ops.guided import guided_pool_video  # weighted builds on this module

        return guided_pool_video(grid, stages, guide, coordinates=coordinates)
    for stage in stages:
        if stage["type"] == "progressive":
            return progressive_pool(grid, stage["group"], stage["strides"], stage["mode"])
        grid = _apply_uniform(grid, stage)
    return PooledVideo(tuple(grid.unbind(0)))
