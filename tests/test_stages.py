"""Pooling stages as registered classes: the registry, the per-stage contract (dict and shorthand round trips, shapes
without tensors, errors that name the key given), arithmetic shape checks at any size, no type dispatch outside
ops/stages/, and the recipe itself: a stage defined in this file alone runs through config validation, shape math,
pooling, positions, chunked encoding, the config grammar and a tiny model."""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import tracemalloc
from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_pooling import make_grid, stage_lists

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.config_text import format_config, parse_config
from longctx_adapter.ops.pooling import (
    STAGE_TYPES,
    check_frame_grid,
    chunk_plan,
    count_tokens,
    fewest_frames,
    normalize_pooling,
    normalize_stage,
    pool_video,
    pooled_frame_sizes,
    pooled_shape,
)
from longctx_adapter.ops.positions import frame_sources, mrope_positions, pooled_coordinates
from longctx_adapter.ops.stages import (
    STAGES,
    Flow,
    FrameSizes,
    GridShape,
    Stage,
    parse_stages,
    register_stage,
    stage_from_dict,
    unregister_stage,
)
from longctx_adapter.ops.stages.base import positive_int, shorthand_ints
from longctx_adapter.ops.stages.windows import check_grid, grid_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# One example per stage type, with every optional key given, plus the shorthand each parses back from.
EXAMPLES = [
    ({"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"}, "progressive:2,8,4"),
    ({"type": "progressive", "group": 3, "strides": [1], "mode": "avg"}, "progressive:1,1,3,avg"),
    ({"type": "progressive", "group": 2, "strides": [2, 4], "mode": "max", "anchor": "score", "score": "max",
      "scorer": "clip"}, None),  # fmt: skip
    ({"type": "temporal", "kernel": 3, "stride": 2}, "temporal:3,2"),
    ({"type": "adaptive3d", "output": [4, 3, 2]}, "adaptive3d:4,3,2"),
    ({"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 3, 3]}, "conv3d:2,3,3"),
    ({"type": "conv3d", "kernel": [2, 3, 3], "stride": [1, 2, 3]}, "conv3d:2,3,3,1,2,3"),
    ({"type": "conv3d", "output": [2, 2, 2], "stride": [1, 1, 1]}, None),
    ({"type": "prompt_guided", "kernel": [1, 2, 2], "stride": [1, 2, 2], "temperature": 0.01, "scorer": None},
     "prompt_guided:1,2,2"),  # fmt: skip
    ({"type": "prompt_guided", "output": [2, 4, 4], "temperature": 0.5, "scorer": "x"}, None),
    ({"type": "select_frames", "segments": 4, "per_segment": 2, "score": "mean", "positions": "original",
      "scorer": None}, "select_frames:4,2"),  # fmt: skip
    ({"type": "select_frames", "segments": 2, "per_segment": 1, "score": "global", "positions": "repacked",
      "scorer": None}, None),  # fmt: skip
    ({"type": "merge_temporal", "threshold": 0.8, "ratio": None, "max_tokens": None, "positions": "kept"},
     "merge_temporal:0.8"),  # fmt: skip
    ({"type": "merge_temporal", "threshold": None, "ratio": 0.1, "max_tokens": None, "positions": "kept"},
     "merge_temporal:10%"),  # fmt: skip
    ({"type": "merge_temporal", "threshold": 0.95, "ratio": 0.25, "max_tokens": None, "positions": "kept"},
     "merge_temporal:0.95/25%"),  # fmt: skip
    ({"type": "merge_temporal", "threshold": None, "ratio": None, "max_tokens": 40, "positions": "mean"}, None),
    ({"type": "segment_density", "ratio": 0.1, "max_tokens": None, "segments": 8, "cut_similarity": 0.9,
      "anchor_step": 4, "neighbors": 4, "positions": "kept"}, "segment_density:10%"),  # fmt: skip
    ({"type": "segment_density", "ratio": None, "max_tokens": 12, "segments": 3, "cut_similarity": 0.5,
      "anchor_step": 2, "neighbors": 7, "positions": "mean"}, None),  # fmt: skip
    ({"type": "budget", "max_tokens": 4096, "group": 4, "mode": "bilinear"}, "budget:4096,4"),
    ({"type": "budget", "max_tokens": 9, "group": 2, "mode": "max"}, None),
]


def test_registry_holds_the_shipped_stages():
    assert set(STAGE_TYPES) == {
        "progressive", "temporal", "adaptive3d", "conv3d", "prompt_guided", "select_frames", "merge_temporal",
        "segment_density", "budget",
    }  # fmt: skip
    for kind in STAGE_TYPES:
        cls = STAGES[kind]
        assert issubclass(cls, Stage) and cls.type == kind
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        assert cls.shorthand_help.startswith(kind + ":")
    with pytest.raises(TypeError, match="already registered"):

        @register_stage
        @dataclass(frozen=True)
        class Again(Stage):
            type = "temporal"


@pytest.mark.parametrize(("stage", "text"), EXAMPLES)
def test_dict_and_shorthand_round_trips(stage, text):
    parsed = stage_from_dict(stage)
    assert parsed.to_dict() == stage == normalize_stage(stage)
    assert stage_from_dict(parsed.to_dict()) == parsed
    assert set(stage) <= set(parsed.keys())
    assert parsed.shorthand() == text
    if text is not None:
        assert parse_config(text).to_dict()["pooling"] == [stage]


def test_bare_type_in_the_grammar_takes_the_defaults():
    for kind in ("progressive", "temporal", "conv3d", "prompt_guided"):
        assert parse_config(kind) == AdapterConfig(pooling={"type": kind})
    with pytest.raises(AdapterError, match="needs 'segments'"):
        parse_config("select_frames")


# ---------------------------------------------------------------------------------------------------------------------
# Errors name the key the user gave.

# every integer key of every stage type, with a value of the right shape for that key
INT_KEYS = [
    ("progressive", "group", -1),
    ("progressive", "strides", [2, -1]),
    ("temporal", "kernel", -1),
    ("temporal", "stride", -1),
    ("temporal", "stride", 0),
    ("adaptive3d", "output", [2, -1, 2]),
    ("conv3d", "kernel", -1),
    ("conv3d", "stride", [1, 0, 1]),
    ("conv3d", "output", -3),
    ("prompt_guided", "kernel", [0, 1, 1]),
    ("prompt_guided", "stride", -1),
    ("prompt_guided", "output", [1, 1, -1]),
    ("select_frames", "segments", -1),
    ("select_frames", "per_segment", 0),
    ("merge_temporal", "max_tokens", 0),
    ("segment_density", "max_tokens", -2),
    ("segment_density", "segments", 0),
    ("segment_density", "anchor_step", -1),
    ("segment_density", "neighbors", 0),
    ("budget", "max_tokens", -1),
    ("budget", "group", 0),
]


@pytest.mark.parametrize(("kind", "key", "value"), INT_KEYS)
def test_bad_numbers_name_the_key_given(kind, key, value):
    stage = {"type": kind, key: value}
    if kind == "select_frames" and key != "segments":
        stage["segments"] = 2
    if kind == "budget" and key != "max_tokens":
        stage["max_tokens"] = 8
    with pytest.raises(AdapterError) as err:
        normalize_stage(stage)
    message = str(err.value)
    assert f"{kind} '{key}'" in message, message
    others = {k for _, k, _ in INT_KEYS} - {key}
    assert not any(f"'{other}'" in message for other in others), message


def test_temporal_negative_stride_names_stride():
    with pytest.raises(AdapterError, match=re.escape("temporal 'stride' must be a positive integer, got -1")):
        AdapterConfig(pooling={"type": "temporal", "stride": -1})


# ---------------------------------------------------------------------------------------------------------------------
# Shapes are arithmetic: the cost never grows with the numbers in a config.


HUGE = [
    {"type": "temporal", "stride": 10**12},
    [{"type": "temporal", "kernel": 10**9, "stride": 10**9}, {"type": "progressive", "strides": [2, 4]}],
    [{"type": "select_frames", "segments": 10**12}, {"type": "progressive", "group": 10**12, "strides": [2, 4]}],
    [{"type": "conv3d", "kernel": [10**12, 1, 1]}, {"type": "adaptive3d", "output": [1, 2, 2]}],
    {"type": "adaptive3d", "output": [10**12, 2, 2]},
]


@pytest.mark.parametrize("pooling", HUGE)
def test_shape_checks_do_not_grow_with_the_numbers(pooling):
    tracemalloc.start()
    try:
        check_frame_grid(7, 7, pooling)
        frames = fewest_frames(pooling)
        tokens = count_tokens(frames, 7, 7, pooling)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert tokens >= 1


def test_apply_adapter_with_a_huge_stride_is_instant():
    """It used to multiply the strides into a frame count and build a per-frame list of that length."""
    from longctx_adapter.testing.tiny import tiny_model

    model = tiny_model("llava_onevision")
    for pooling in HUGE:
        config = AdapterConfig(pooling=pooling, rope=None)
        if any(stage.guided for stage in parse_stages(pooling)):  # the grid check passed; then a scorer is missing
            with pytest.raises(AdapterError, match="need a question scorer"):
                apply_adapter(model, config)
            continue
        apply_adapter(model, config).remove()
    # spatial windows the frame grid cannot hold are still refused at apply time
    with pytest.raises(AdapterError, match="stride 9"):
        apply_adapter(model, {"pooling": [{"type": "temporal", "stride": 10**12}, {"type": "progressive",
                                                                                 "strides": [9]}]})  # fmt: skip


@FAST
@given(T=st.integers(1, 12), H=st.integers(1, 7), W=st.integers(1, 7), stages=stage_lists)
def test_fewest_frames_is_accepted_whenever_some_count_is(T, H, W, stages):
    def accepted(frames):
        try:
            pooled_shape(frames, H, W, stages)
            return True
        except AdapterError:
            return False

    if any(accepted(n) for n in range(1, 3 * T + 13)):
        assert accepted(fewest_frames(stages))


@FAST
@given(frames=st.integers(1, 40), group=st.integers(1, 9), data=st.data())
def test_frame_sizes_cycle_matches_the_per_frame_schedule(frames, group, data):
    strides = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=group))
    stage = stage_from_dict({"type": "progressive", "group": group, "strides": strides})
    shape = stage.output_shape(GridShape(frames, 5, 6))
    schedule = stage.frame_strides(GridShape(frames, 5, 6))
    expected = [(-(-5 // s), -(-6 // s)) for s in schedule]
    assert isinstance(shape, FrameSizes) and shape.frame_sizes() == expected
    assert shape.num_tokens == sum(h * w for h, w in expected)
    # the estimator's scratch: the largest group of frames gathered at one stride (stride 1 frames are not copied)
    counts = {s: schedule.count(s) for s in set(schedule) if s != 1}
    assert stage.scratch_tokens(GridShape(frames, 5, 6)) == max(counts.values(), default=0) * 30


# ---------------------------------------------------------------------------------------------------------------------
# No per-type dispatch outside the stage classes.

SOURCE_FOLDERS = [ROOT / "longctx_adapter", ROOT / "patches", ROOT / "eval", ROOT / "benchmarks"]
STAGES_FOLDER = ROOT / "longctx_adapter" / "ops" / "stages"


def _type_dispatch(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """Comparisons or lookup tables keyed by a stage type name, and `[...]["type"] ==`/`in` tests of a stage."""
    names = set(STAGE_TYPES)
    where = path.relative_to(root)
    found = []
    tree = ast.parse(path.read_text())

    def literal_names(node) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value} & names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return set().union(*(literal_names(e) for e in node.elts)) if node.elts else set()
        return set()

    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hits = set().union(literal_names(node.left), *(literal_names(c) for c in node.comparators))
            if hits:
                found.append(f"{where}:{node.lineno}: compares with {sorted(hits)}")
        elif isinstance(node, ast.Dict):
            hits = set().union(*(literal_names(k) for k in node.keys if k is not None)) if node.keys else set()
            if hits:
                found.append(f"{where}:{node.lineno}: a table keyed by {sorted(hits)}")
        elif isinstance(node, ast.MatchValue) and literal_names(node.value):
            found.append(f"{where}:{node.lineno}: match on a stage type")
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if re.search(r'(stage|\bs)\s*\[\s*"type"\s*\]\s*(==|!=|in\b|not in\b)', line):
            found.append(f"{where}:{number}: {line.strip()}")
    return found


def test_no_stage_type_dispatch_outside_the_stage_classes():
    offenders = []
    for folder in SOURCE_FOLDERS:
        for path in sorted(folder.rglob("*.py")):
            if STAGES_FOLDER not in path.parents:
                offenders += _type_dispatch(path)
    assert not offenders, "\n".join(offenders)


def test_the_dispatch_scan_finds_dispatch(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        'def f(stage, kind):\n    if stage["type"] == "temporal":\n        return 1\n'
        '    table = {"conv3d": 2}\n    return kind in ("progressive", "x")\n'
    )
    hits = _type_dispatch(sample, tmp_path)
    assert len(hits) == 4, hits


# ---------------------------------------------------------------------------------------------------------------------
# The recipe: two stages defined here and nowhere else.


@dataclass(frozen=True)
class ToyBlockMean(Stage):
    """Spatial block average by `factor` (H and W must be multiples): conv3d [1, f, f], written independently."""

    factor: int = 2

    type = "toy_block_mean"
    shorthand_help = "toy_block_mean:F"

    @classmethod
    def from_dict(cls, data):
        return cls(positive_int(data.get("factor", 2), "toy_block_mean 'factor'"))

    @classmethod
    def parse_shorthand(cls, args):
        return {"type": cls.type, "factor": shorthand_ints(args, (1,), cls.shorthand_help)[0]}

    def shorthand(self):
        return f"toy_block_mean:{self.factor}"

    def output_shape(self, shape):
        f = self.factor
        if shape.height % f or shape.width % f:
            raise AdapterError(f"toy_block_mean factor {f} does not divide the {grid_name(*shape_tuple(shape))}")
        return GridShape(shape.frames, shape.height // f, shape.width // f)

    def pool_grid(self, grid):
        out = self.output_shape(check_grid(grid))
        T, f, D = grid.shape[0], self.factor, grid.shape[-1]
        blocks = grid.reshape(T, out.height, f, out.width, f, D).to(torch.float64).mean(dim=(2, 4))
        return blocks.to(grid.dtype)

    def keeps_frames(self, shape):
        return True

    def chunk_frames(self, frames):
        return frames, ""


@dataclass(frozen=True)
class ToyKeepChanged(Stage):
    """Content-aware: frame 0 keeps every token, a later frame only the tokens that changed by more than
    `threshold` since the frame before; a frame of n kept tokens is one row (1, n, D)."""

    threshold: float = 0.5

    type = "toy_keep_changed"
    must_be_last = "its frames keep different token sets"
    data_dependent = True

    @classmethod
    def from_dict(cls, data):
        return cls(float(data.get("threshold", 0.5)))

    def output_shape(self, shape):
        return FrameSizes(shape.frames, ((1, (1, shape.height * shape.width)),), exact=False)

    def apply(self, flow: Flow) -> Flow:
        grid = flow.grid
        mask = flow.replayed
        if mask is None:
            change = (grid[1:] - grid[:-1]).abs().amax(-1) > self.threshold
            mask = torch.cat([torch.ones_like(change[:1]), change])
        frames = tuple(frame[keep][None] for frame, keep in zip(grid, mask))
        return flow.replace(grid=None, frames=frames, guide=None, decision=mask)


def shape_tuple(shape):
    return shape.frames, shape.height, shape.width


@pytest.fixture
def toys():
    register_stage(ToyBlockMean)
    register_stage(ToyKeepChanged)
    try:
        yield
    finally:
        unregister_stage(ToyBlockMean.type)
        unregister_stage(ToyKeepChanged.type)


def test_a_new_uniform_stage_runs_everywhere(toys):
    toy = {"type": "toy_block_mean", "factor": 2}
    # config: validation, defaults, unknown keys, JSON round trip, the grammar both ways
    config = AdapterConfig(pooling=[{"type": "toy_block_mean"}, {"type": "progressive", "group": 2, "strides": [1, 2]}])
    assert config.pooling[0] == toy and AdapterConfig.from_json(config.to_json()) == config
    with pytest.raises(AdapterError, match="allowed keys"):
        AdapterConfig(pooling={"type": "toy_block_mean", "size": 2})
    assert parse_config("toy_block_mean:2+temporal:2,2") == AdapterConfig(pooling=[toy, {"type": "temporal"}])
    assert format_config(AdapterConfig(pooling=toy)) == "toy_block_mean:2"
    # shapes and the op against conv3d [1, 2, 2], which averages the same windows
    conv = {"type": "conv3d", "kernel": [1, 2, 2]}
    grid = make_grid(6, 4, 6, 3)
    assert pooled_frame_sizes(6, 4, 6, toy) == pooled_frame_sizes(6, 4, 6, conv) == [(2, 3)] * 6
    torch.testing.assert_close(pool_video(grid, toy).flatten(), pool_video(grid, conv).flatten())
    with pytest.raises(AdapterError, match="does not divide"):
        count_tokens(6, 5, 6, toy)
    # positions: window centres, like conv3d's; each output frame draws on its own input frame
    t = torch.arange(6.0)
    torch.testing.assert_close(mrope_positions(3.0, t, 4, 6, toy), mrope_positions(3.0, t, 4, 6, conv))
    assert frame_sources(6, 4, 6, [toy, {"type": "temporal"}]) == [(0, 1), (2, 3), (4, 5)]
    # chunked encoding: frame-local, so chunks pool on their own
    assert chunk_plan([toy, {"type": "temporal"}], 4) == (True, 2, "")
    assert fewest_frames([toy, {"type": "temporal", "stride": 3}]) == 3


@pytest.mark.parametrize("model_type", ["llava_next_video", "qwen2_vl"])
def test_a_new_stage_on_a_tiny_model_equals_the_builtin_it_mirrors(toys, model_type):
    """Sizing, splicing, positions (Qwen M-RoPE) and chunked encoding of a stage no library file names."""
    if model_type.startswith("qwen"):
        from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

        model, inputs = qwen_tiny_model(model_type), qwen_hand_inputs(model_type, frames=4)
        chunk = 2
    else:
        from longctx_adapter.testing.tiny import hand_inputs, tiny_model

        model, inputs = tiny_model(model_type), hand_inputs(model_type, frames=4)
        chunk = 2
    results = {}
    for name, stage in (("toy", "toy_block_mean:2"), ("builtin", "conv3d:1,2,2")):
        for chunked in (None, chunk):
            config = parse_config(stage).replace(vision_chunk_frames=chunked)
            with apply_adapter(model, config) as handle, torch.inference_mode():
                results[name, chunked] = (model(**inputs).logits, handle.last_stats)
    for chunked in (None, chunk):
        toy, builtin = results["toy", chunked], results["builtin", chunked]
        torch.testing.assert_close(toy[0], builtin[0], rtol=1e-5, atol=1e-5)
        assert toy[1] == builtin[1]
    assert results["toy", None][1][0]["tokens_after"] < results["toy", None][1][0]["tokens_before"]


def test_a_content_aware_stage_keeps_a_variable_number_of_tokens(toys):
    grid = make_grid(4, 3, 3, 2)
    grid[1] = grid[0]  # frame 1 repeats frame 0: nothing changed
    grid[2] = grid[1]
    grid[2, 1, 1] += 5.0  # frame 2: only the centre token changed
    stage = {"type": "toy_keep_changed"}
    pooled = pool_video(grid, stage)
    assert pooled.sizes[:3] == ((1, 9), (1, 0), (1, 1))
    assert count_tokens(4, 3, 3, stage) == 36 >= pooled.num_tokens  # an upper bound
    assert not pooled_shape(4, 3, 3, stage).exact
    torch.testing.assert_close(pooled.flatten()[9], grid[2, 1, 1])  # flatten: frame-major, kept tokens in order
    # positions replay the decision recorded on the features' pass
    coords = pooled_coordinates(torch.arange(4.0), 3, 3, stage, trace=pooled.trace)
    assert coords.sizes == pooled.sizes
    assert coords.frames[2][0, 0].tolist() == [2.0, 1.0, 1.0]
    assert frame_sources(4, 3, 3, stage, trace=pooled.trace)[:3] == [(0,), (), (2,)]
    with pytest.raises(AdapterError, match="end of the list"):
        normalize_pooling([stage, {"type": "temporal"}])
    assert chunk_plan([stage], 4)[0] is False


def test_a_pass_that_keeps_no_token_is_refused(toys):
    grid = make_grid(3, 2, 2, 2)
    nothing = torch.zeros(3, 2, 2, dtype=torch.bool)
    with pytest.raises(AdapterError, match=r"toy_keep_changed\) left the \(3, 2, 2\) video with no token at all"):
        pool_video(grid, {"type": "toy_keep_changed"}, trace=(nothing,))
    one_frame = nothing.index_fill(0, torch.tensor([1]), True)
    assert pool_video(grid, {"type": "toy_keep_changed"}, trace=(one_frame,)).sizes == ((1, 0), (1, 4), (1, 0))


def test_a_stage_that_takes_frames_may_follow_a_last_stage():
    spatial = {"type": "progressive", "group": 1, "strides": [2]}
    assert len(normalize_pooling([spatial, {"type": "merge_temporal"}])) == 2
    with pytest.raises(AdapterError, match="progressive pooling is stage 1 of 2"):
        normalize_pooling([spatial, {"type": "temporal"}])
