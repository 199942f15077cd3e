"""Window arithmetic shared by the windowed stages (temporal, conv3d, prompt_guided, progressive) and grid checks.

Tail rule shared by every windowed average: a window that runs past the end of an axis is averaged over the
elements that exist, so no frame or token is ever dropped and no zero padding dilutes a mean.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages.base import GridShape, is_int, positive_int, triple

__all__ = ["AXES", "PPLLAVA_WINDOW", "check_grid", "grid_name", "solve_window", "window_count"]

AXES = ("time", "height", "width")
PPLLAVA_WINDOW = [2, 3, 3]


def grid_name(T: int, H: int, W: int) -> str:
    return f"{T}x{H}x{W} (T x H x W) token grid"


def check_grid_shape(T, H, W) -> GridShape:
    if not all(is_int(n) and n >= 1 for n in (T, H, W)):
        raise AdapterError(f"a video grid needs T, H, W >= 1, got {(T, H, W)}; pass at least one frame of one token")
    return GridShape(int(T), int(H), int(W))


def check_grid(grid: torch.Tensor) -> GridShape:
    if not isinstance(grid, torch.Tensor) or grid.dim() != 4 or grid.shape[-1] < 1:
        shape = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise AdapterError(f"pooling needs one video grid of shape (T, H, W, D), got {shape}; reshape the features")
    return check_grid_shape(*grid.shape[:3])


def check_kernel_covers_stride(kernel: int, stride: int, what: str) -> None:
    if kernel < stride:
        raise AdapterError(
            f"{what} kernel {kernel} is smaller than its stride {stride}, so elements between windows would be "
            f"skipped; use kernel >= stride"
        )


def window_count(size: int, kernel: int, stride: int) -> int:
    """Windows at 0, s, 2s, ... while one starts at or before size - kernel, plus one for a partial tail."""
    return -(-(size - kernel) // stride) + 1


def pooled_side(size: int, stride: int) -> int:
    return -(-size // stride)


def solve_window(size, output=None, kernel=None, stride=None, *, axis: str = "the") -> tuple[int, int]:
    """PPLLaVA's arbitrary-scale rule: from an axis size and any of output/kernel/stride, find (kernel, stride)."""
    size = positive_int(size, f"{axis} axis size")
    where = f"{axis} axis of size {size}"
    if output is None:
        if kernel is None and stride is None:
            raise AdapterError(f"no window for the {where}: give an output size, a kernel or a stride")
        kernel = positive_int(kernel if kernel is not None else stride, f"kernel on the {where}")
        stride = positive_int(stride if stride is not None else kernel, f"stride on the {where}")
    else:
        output = positive_int(output, f"output size on the {where}")
        kernel, stride = _solve_from_output(size, output, kernel, stride, where)
    if kernel > size:
        raise AdapterError(f"kernel {kernel} is larger than the {where}; use a kernel <= {size}")
    check_kernel_covers_stride(kernel, stride, f"the {where}: window")
    if output is not None and window_count(size, kernel, stride) != output:
        raise AdapterError(
            f"kernel {kernel} with stride {stride} gives {window_count(size, kernel, stride)} windows on the {where}, "
            f"not the requested output {output}; give only the output and let the solver pick kernel and stride"
        )
    return kernel, stride


def _solve_from_output(size: int, output: int, kernel, stride, where: str) -> tuple[int, int]:
    if kernel is not None and stride is not None:
        raise AdapterError(f"output, kernel and stride all given for the {where}; give the output plus at most one")
    if output > size:
        raise AdapterError(f"output {output} is larger than the {where}; pooling never upsamples, use output <= {size}")
    if stride is not None:
        stride = positive_int(stride, f"stride on the {where}")
        if output * stride > size:
            raise AdapterError(
                f"output {output} at stride {stride} needs at least {output * stride} elements but the {where} has "
                f"only {size}; use a smaller stride or output"
            )
        return size - (output - 1) * stride, stride
    if kernel is not None:
        kernel = positive_int(kernel, f"kernel on the {where}")
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


# ---------------------------------------------------------------------------------------------------------------------
# 3-D windows (conv3d and prompt_guided): kernel/stride per axis, or an output solved per axis.


def window_fields(data: Mapping, kind: str) -> dict:
    """Validated window keys of a conv3d-style stage: kernel/stride (a missing one takes the other's value, PPLLaVA's
    (2, 3, 3) if both miss), or output plus at most one of them (solved per grid)."""
    kernel = None if data.get("kernel") is None else triple(data["kernel"], f"{kind} 'kernel'")
    stride = None if data.get("stride") is None else triple(data["stride"], f"{kind} 'stride'")
    if data.get("output") is not None:
        if kernel is not None and stride is not None:
            raise AdapterError(
                f"{kind} stage gives 'output', 'kernel' and 'stride'; the solver needs the output plus at most one of "
                "'kernel'/'stride' (drop one of them, or drop 'output')"
            )
        return {"output": triple(data["output"], f"{kind} 'output'"), "kernel": kernel, "stride": stride}
    kernel = kernel or stride or list(PPLLAVA_WINDOW)
    stride = stride or kernel
    for axis, k, s in zip(AXES, kernel, stride):
        check_kernel_covers_stride(k, s, f"{kind} {axis}")
    return {"output": None, "kernel": kernel, "stride": stride}


def solve_window3d(kind: str, output, kernel, stride, shape: GridShape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(kernel, stride) per axis of a conv3d-style window on this grid; errors name the grid and the stage."""
    output, kernel, stride = output or [None] * 3, kernel or [None] * 3, stride or [None] * 3
    T, H, W = shape.frames, shape.height, shape.width
    solved = []
    for axis, size, o, k, s in zip(AXES, (T, H, W), output, kernel, stride):
        try:
            solved.append(solve_window(size, o, k, s, axis=axis))
        except AdapterError as err:
            raise AdapterError(f"{kind} pooling on a {grid_name(T, H, W)}: {err}") from None
    kernels, strides = zip(*solved)
    return tuple(kernels), tuple(strides)


def window_min_frames(output, kernel, stride, frames_out: int) -> int:
    """Fewest frames a conv3d-style time window accepts giving >= frames_out frames (its output if it has one)."""
    o, k, s = (None if v is None else v[0] for v in (output, kernel, stride))
    if o is not None:
        if s is not None:
            return o * s  # kernel = s: o windows exactly
        if k is not None:
            return k + o - 1  # stride 1: o windows exactly
        return o
    return k + (max(frames_out, 1) - 1) * s


def window_chunk_frames(kind: str, output, kernel, stride, frames: int) -> tuple[int | None, str]:
    if output is not None:
        return None, f"{kind} with 'output' solves its window from the whole video's frame count"
    kt, st = kernel[0], stride[0]
    if kt != st or frames % st:
        return None, f"{kind} temporal kernel != stride or not dividing the chunk"
    return frames // st, ""


# ---------------------------------------------------------------------------------------------------------------------
# Channels-last views for torch's pools.


def channels_first(grid: torch.Tensor) -> torch.Tensor:
    """(T, H, W, D) -> (1, D, T, H, W) as a view: torch's pools see a channels-last tensor and need no copy."""
    return grid.permute(3, 0, 1, 2).unsqueeze(0)


def channels_last(pooled: torch.Tensor) -> torch.Tensor:
    return pooled.squeeze(0).permute(1, 2, 3, 0)


def needs_fp32_pool3d(grid: torch.Tensor) -> bool:
    """CPU avg_pool3d has no half/bfloat16 kernel; pool in float32 there and cast back."""
    return grid.device.type == "cpu" and grid.dtype in (torch.float16, torch.bfloat16)


def avg_pool3d_windows(grid: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Average over solved windows at multiples of the stride, partial tails averaged over what exists."""
    x = channels_first(grid.float() if needs_fp32_pool3d(grid) else grid)
    pooled = F.avg_pool3d(x, kernel, stride, ceil_mode=True, count_include_pad=False)
    return channels_last(pooled).to(grid.dtype)
