"""positions.frame_sources (which input frames each pooled frame draws on) and tokens.merged_frame_blocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import naive_starts

from longctx_adapter import AdapterError
from longctx_adapter.ops.positions import frame_sources
from longctx_adapter.ops.tokens import Run, merged_frame_blocks


def _windows(T: int, starts, kernel: int) -> list[tuple[int, ...]]:
    return [tuple(range(s, min(s + kernel, T))) for s in starts]


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 12), kernel=st.integers(1, 5), data=st.data())
def test_temporal_sources_are_the_stride_windows(T, kernel, data):
    stride = data.draw(st.integers(1, min(kernel, T)))
    stage = {"type": "temporal", "kernel": kernel, "stride": stride}
    chunk = data.draw(st.sampled_from([1, 3, 256]))
    assert frame_sources(T, 2, 3, stage, chunk=chunk) == _windows(T, range(0, T, stride), kernel)


@settings(max_examples=60, deadline=None)
@given(T=st.integers(1, 12), data=st.data())
def test_adaptive_sources_are_torch_adaptive_windows(T, data):
    out = data.draw(st.integers(1, T))
    got = frame_sources(T, 4, 4, {"type": "adaptive3d", "output": [out, 2, 2]})
    assert got == [tuple(range(j * T // out, -(-(j + 1) * T // out))) for j in range(out)]


@settings(max_examples=60, deadline=None)
@given(T=st.integers(2, 10), kernel=st.integers(1, 4), data=st.data())
def test_conv3d_and_combined_sources(T, kernel, data):
    kernel = min(kernel, T)
    stride = data.draw(st.integers(1, kernel))
    stage = {"type": "conv3d", "kernel": [kernel, 2, 2], "stride": [stride, 2, 2]}
    windows = _windows(T, naive_starts(T, kernel, stride), kernel)
    assert frame_sources(T, 4, 4, stage) == windows
    # a frame-preserving stage after it changes nothing about the windows
    progressive = {"type": "progressive", "group": 1, "strides": [2], "mode": "max"}
    assert frame_sources(T, 4, 4, [stage, progressive]) == windows


def test_frame_preserving_stages_map_each_frame_to_itself():
    for stage in (
        {"type": "progressive", "group": 2, "strides": [1, 2]},
        {"type": "conv3d", "kernel": [1, 2, 2]},
        None,
    ):
        assert frame_sources(5, 4, 4, stage) == [(f,) for f in range(5)]
    # two temporal stages compose: windows of windows
    stages = [{"type": "temporal", "kernel": 2, "stride": 2}] * 2
    assert frame_sources(8, 2, 2, stages) == [(0, 1, 2, 3), (4, 5, 6, 7)]


# --- merged_frame_blocks ---------------------------------------------------------------------------------------


def _video(frames: int, tokens: int = 3, stamp: int = 2):
    """Runs and block spans of `frames` blocks laid out as: 5 prompt tokens, <vs>, then per frame
    `stamp` timestamp tokens, <vs>, `tokens` placeholders, <ve>."""
    runs, blocks, cursor = [], [], 6
    for _ in range(frames):
        runs.append(Run(0, cursor + stamp + 1, tokens))
        blocks.append((cursor, cursor + stamp + 1 + tokens + 1))
        cursor = blocks[-1][1]
    return runs, blocks


def test_merged_blocks_keep_each_window_first_block():
    runs, blocks = _video(4)
    lengths, drop = merged_frame_blocks(runs, [(0, 1), (2, 3)], [5, 6], blocks)
    assert lengths == [5, 0, 6, 0]
    assert drop == [(0, *blocks[1]), (0, *blocks[3])]
    # overlapping windows: distinct ascending first frames are enough
    lengths, drop = merged_frame_blocks(runs, [(0, 1, 2), (2, 3)], [1, 1], blocks)
    assert lengths == [1, 0, 1, 0] and drop == [(0, *blocks[1]), (0, *blocks[3])]
    # selection that drops frame 0 needs its block start
    lengths, drop = merged_frame_blocks(runs, [(1,), (3,)], [2, 2], blocks)
    assert lengths == [0, 2, 0, 2] and drop == [(0, *blocks[0]), (0, *blocks[2])]


def test_merged_blocks_refusals():
    runs, blocks = _video(4)
    with pytest.raises(AdapterError, match="distinct and ascending"):
        merged_frame_blocks(runs, [(0, 1), (0, 2)], [1, 1], blocks)
    with pytest.raises(AdapterError, match="distinct and ascending"):
        merged_frame_blocks(runs, [(2, 3), (0, 1)], [1, 1], blocks)
    unknown = [(None, blocks[0][1])] + blocks[1:]
    assert merged_frame_blocks(runs, [(0, 1), (2, 3)], [1, 1], unknown)[0] == [1, 0, 1, 0]
    with pytest.raises(AdapterError, match="keep the first frame"):
        merged_frame_blocks(runs, [(1,), (3,)], [1, 1], unknown)
