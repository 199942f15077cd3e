"""Hostile inputs: hypothesis generates frame counts (matching the pixels or not), frame grids (tiny configs of
several sizes), left-padded ragged batches, pooling stage lists (every parameter-free type, valid and invalid
parameters) and RoPE specs, given as dicts or JSON.

Contract checked on every example: the adapted call either
- returns a result consistent with the pure-op reference (visual tokens after pooling == pooling.count_tokens,
  +1 for OneVision's newline; logits finite and in the caller's layout; with RoPE off, logits equal the stock model
  fed the pooled features by hand; with everything off, logits equal stock; generate keeps the caller's prompt), or
- raises AdapterError,
never any other exception (unless the adapter passed the call through untouched and the stock model raises the very
same error), never a hang (SIGALRM per example); and after every refusal and every removal the model is the stock
model again (no instance attributes or hooks left, logits of a probe input equal stock).

Bounded: 40 examples, derandomized (the same examples on every run; set FUZZ_EXAMPLES / FUZZ_SEED to explore).
"""

from __future__ import annotations

import json
import math
import os
import signal
from functools import cache

import pytest
import torch
from helpers import own_hooks
from hypothesis import HealthCheck, event, given, seed, settings
from hypothesis import strategies as st
from reference import reference_forward

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.testing.tiny import (
    IMAGE_TOKEN_ID,
    PAD_ID,
    TEXT_TOKEN_IDS,
    TINY_MODEL_TYPES,
    VIDEO_TOKEN_ID,
    frames_as_images,
    hand_inputs,
    tiny_config,
    tiny_spec,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
SEED = int(os.environ.get("FUZZ_SEED", "0"))
EXAMPLE_TIMEOUT_S = 120

# Vision input sizes per class (patch 4): llava 4/6/8 tokens a side, LLaVA-NeXT-Video 2/3/4 after its 2x pool,
# OneVision 5/6/7 (odd sides like the real 27). LLaVA-NeXT keeps its grid (anyres pinpoints are tied to it) and
# varies the frame size instead, which changes its anyres token count.
IMAGE_SIZES = {
    "llava": (16, 24, 32),
    "llava_next": (32,),
    "llava_next_video": (16, 24, 32),
    "llava_onevision": (20, 24, 28),
}
NEXT_FRAME_SIZES = ((32, 32), (64, 64), (32, 64))


# --- models and inputs --------------------------------------------------------------------------------------


@cache
def _model(model_type: str, image_size: int):
    spec = tiny_spec(model_type)
    config = tiny_config(model_type)
    config.vision_config.image_size = image_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = spec.model_class._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model.eval()


def _grid_side(model_type: str, image_size: int) -> int:
    """Tokens per side of the grid pooling acts on."""
    side = image_size // tiny_spec(model_type).patch_size
    return side // 2 if model_type == "llava_next_video" else side


def _stock_tokens_per_frame(model_type: str, image_size: int) -> int:
    side = _grid_side(model_type, image_size)
    return math.ceil(side / 2) ** 2 if model_type == "llava_onevision" else side * side


def _build_inputs(model_type, image_size, frame_counts, before, after, pixel_delta, frame_size, seed_):
    """Stock layout for `frame_counts` (one per row), with pixels for `pixel_delta` more (or fewer) frames."""
    batch = len(frame_counts)
    if model_type == "llava_next":
        inputs = hand_inputs(
            model_type, frame_counts[0], batch=batch, frame_counts=frame_counts, text_before=before,
            text_after=after, seed=seed_, height=frame_size[0], width=frame_size[1],
        )  # fmt: skip
        if pixel_delta:
            keep = max(1, inputs["pixel_values"].shape[0] + pixel_delta)
            for key in ("pixel_values", "image_sizes"):
                value = inputs[key]
                extra = value[:1].expand(max(0, keep - value.shape[0]), *value.shape[1:])
                inputs[key] = torch.cat([value[:keep], extra])
        return inputs
    gen = torch.Generator().manual_seed(seed_)
    words = torch.tensor(TEXT_TOKEN_IDS)
    token = IMAGE_TOKEN_ID if frames_as_images(model_type) else VIDEO_TOKEN_ID
    per_frame = _stock_tokens_per_frame(model_type, image_size)
    rows = []
    for b, frames in enumerate(frame_counts):
        run = frames * per_frame + (model_type == "llava_onevision")
        rows.append(
            torch.cat(
                [
                    words[torch.randint(len(words), (before[b],), generator=gen)],
                    torch.full((run,), token),
                    words[torch.randint(len(words), (after[b],), generator=gen)],
                ]
            )
        )
    length = max(len(r) for r in rows)
    input_ids = torch.full((batch, length), PAD_ID)
    mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = row
        mask[b, length - len(row) :] = 1
    out = {"input_ids": input_ids, "attention_mask": mask}
    if frames_as_images(model_type):
        images = max(1, sum(frame_counts) + pixel_delta)
        out["pixel_values"] = torch.randn((images, 3, image_size, image_size), generator=gen)
    else:
        frames = max(1, frame_counts[0] + pixel_delta)
        out["pixel_values_videos"] = torch.randn((batch, frames, 3, image_size, image_size), generator=gen)
    return out


_PROBES: dict = {}


def _probe(model_type, image_size):
    """A small fixed input and the stock model's logits for it, to check the model is stock again."""
    key = (model_type, image_size)
    if key not in _PROBES:
        inputs = _build_inputs(model_type, image_size, [2], [2], [2], 0, (32, 32), 123)
        with torch.no_grad():
            _PROBES[key] = inputs, _model(model_type, image_size)(**inputs).logits
    return _PROBES[key]


def _pristine(model) -> list:
    return [
        (name, own_hooks(m._forward_hooks), own_hooks(m._forward_pre_hooks), sorted(k for k in m.__dict__ if k[0] != "_"))
        for name, m in model.named_modules()
    ]


# --- strategies ---------------------------------------------------------------------------------------------

_BAD_NUMBERS = st.sampled_from([0, -1, 99, 2.5, True, "2", None, [2]])
_SMALL = st.integers(1, 4)


def _num(valid=_SMALL):
    return st.one_of(valid, valid, valid, _BAD_NUMBERS)


def _triple():
    return st.one_of(_num(), st.lists(_num(), min_size=3, max_size=3), st.lists(_SMALL, min_size=2, max_size=4))


_STAGES = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("progressive")},
        optional={
            "group": _num(),
            "strides": st.one_of(st.lists(_num(), min_size=0, max_size=3), _BAD_NUMBERS),
            "mode": st.sampled_from(["bilinear", "avg", "max", "nearest"]),
        },
    ),
    st.fixed_dictionaries({"type": st.just("temporal")}, optional={"kernel": _num(), "stride": _num()}),
    st.fixed_dictionaries({"type": st.just("adaptive3d")}, optional={"output": _triple()}),
    st.fixed_dictionaries(
        {"type": st.just("conv3d")}, optional={"kernel": _triple(), "stride": _triple(), "output": _triple()}
    ),
    st.sampled_from(
        [
            {"type": "median"},
            {"type": "progressive", "strdes": [2, 8]},
            {"kernel": 2},
            "temporal",
            3,
            {"type": "prompt_guided"},  # needs a scoring model: must be refused cleanly without one
        ]
    ),
)


@st.composite
def _valid_stages(draw):
    """Stages whose parameters are well-formed (they may still not fit a small grid or a short video)."""
    stages = []
    for _ in range(draw(st.integers(0, 1))):
        kind = draw(st.sampled_from(["temporal", "adaptive3d", "conv3d"]))
        if kind == "temporal":
            kernel = draw(st.integers(1, 3))
            stages.append({"type": "temporal", "kernel": kernel, "stride": draw(st.integers(1, kernel))})
        elif kind == "adaptive3d":
            stages.append({"type": "adaptive3d", "output": [draw(st.integers(1, 2)), draw(st.integers(1, 3)), 2]})
        else:
            kernel = [draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))]
            stages.append({"type": "conv3d", "kernel": kernel, "stride": [draw(st.integers(1, k)) for k in kernel]})
    if not stages or draw(st.booleans()):
        group = draw(st.integers(1, 3))
        strides = draw(st.lists(st.integers(1, 3), min_size=1, max_size=group))
        stages.append(
            {
                "type": "progressive",
                "group": group,
                "strides": strides,
                "mode": draw(st.sampled_from(["bilinear", "avg", "max"])),
            }
        )
    return stages


# mostly well-formed stage lists, then anything (bad values, bad keys, bad order), then none
POOLING = st.one_of(
    _valid_stages(), _valid_stages(), _valid_stages(), _STAGES, st.lists(_STAGES, max_size=3), st.none()
)

_VALID_ROPE = st.fixed_dictionaries(
    {"type": st.sampled_from(["yarn", "linear", "ntk", "interpolate"]), "visual_window": st.integers(4, 96)},
    optional={"scope": st.sampled_from(["all", "visual"])},
)
ROPE = st.one_of(
    _VALID_ROPE,
    _VALID_ROPE,
    st.none(),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["yarn", "yarn", "linear", "ntk", "interpolate", "dynamic"])},
        optional={
            "visual_window": st.one_of(st.integers(4, 96), st.sampled_from([0, -8, 2.5, None, "16"])),
            "scope": st.sampled_from(["all", "visual", "text"]),
            "factor": st.sampled_from([None, 1.0, 2.0, 3.5, 0.5, -1.0]),
            "alpha": st.sampled_from([1.0, 2.0, 40.0]),
            "beta": st.sampled_from([32.0, 8.0, 0.5]),
            "window": st.just(16),  # a misspelt key
        },
    ),
)


@st.composite
def cases(draw):
    model_type = draw(st.sampled_from(TINY_MODEL_TYPES))
    image_size = draw(st.sampled_from(IMAGE_SIZES[model_type]))
    batch = draw(st.integers(1, 2))
    max_frames = 3 if model_type == "llava_next" else 4
    if frames_as_images(model_type):
        frame_counts = draw(st.lists(st.integers(1, max_frames), min_size=batch, max_size=batch))
    else:
        frame_counts = [draw(st.integers(1, max_frames))] * batch
    before = draw(st.lists(st.integers(0, 4), min_size=batch, max_size=batch))
    after = draw(st.lists(st.integers(1, 4), min_size=batch, max_size=batch))
    pixel_delta = draw(st.sampled_from([0, 0, 0, 0, -1, 1]))  # invalid: pixels for another frame count
    frame_size = draw(st.sampled_from(NEXT_FRAME_SIZES))
    config = {"pooling": draw(POOLING), "rope": draw(ROPE)}
    as_json = draw(st.booleans())
    generate = draw(st.booleans())
    return model_type, image_size, frame_counts, before, after, pixel_delta, frame_size, config, as_json, generate


# --- the property -------------------------------------------------------------------------------------------


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"an adapted call ran longer than {EXAMPLE_TIMEOUT_S} s")


def _stock_error(model, inputs, generate):
    try:
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, do_sample=False) if generate else model(**inputs)
    except Exception as err:  # noqa: BLE001 - compared with the adapted call's error
        return err
    return None


def _check_result(model, model_type, handle, inputs, frame_counts, logits, out, config_obj):
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    assert logits.shape[:2] == ids.shape, "logits are not in the caller's layout"
    assert torch.isfinite(logits[mask.bool()]).all(), "non-finite logits at the caller's live positions"
    if out is not None:
        assert torch.equal(out[:, : ids.shape[1]], ids), "generate changed the caller's prompt"
    stages = config_obj.pooling
    stats = handle.last_stats
    if stages:
        assert len(stats) == len(frame_counts)  # one placeholder run (one video) per row
        for stat in stats:
            if stat["pooled"]:
                expected = count_tokens(*stat["grid"], stages) + (model_type == "llava_onevision")
                assert stat["tokens_after"] == expected, (stat, stages)
            else:
                assert stat["tokens_after"] == stat["tokens_before"]
    return stats


def fuzz_settings(examples: int):
    """Bounded and derandomized unless FUZZ_SEED asks for other examples; shared with test_fuzz_qwen.py."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=SEED == 0,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


@fuzz_settings(EXAMPLES)
@seed(SEED)
@given(case=cases())
def test_hostile_inputs_either_work_or_raise_adapter_error(case):
    model_type, image_size, frame_counts, before, after, pixel_delta, frame_size, config, as_json, generate = case
    model = _model(model_type, image_size)
    pristine = _pristine(model)
    probe_inputs, probe_logits = _probe(model_type, image_size)
    inputs = _build_inputs(model_type, image_size, frame_counts, before, after, pixel_delta, frame_size, 7)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(EXAMPLE_TIMEOUT_S)
    try:
        _one_case(model, model_type, inputs, frame_counts, pixel_delta, config, as_json, generate, pristine)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    # whatever happened, the model is the stock model again
    assert _pristine(model) == pristine, "the adapter left attributes or hooks behind"
    with torch.no_grad():
        assert torch.equal(model(**probe_inputs).logits, probe_logits), "the model is not stock after the example"


def _one_case(model, model_type, inputs, frame_counts, pixel_delta, config, as_json, generate, pristine):
    pixels = inputs.get("pixel_values", inputs.get("pixel_values_videos"))
    given = pixels.shape[0] if frames_as_images(model_type) else pixels.shape[1]
    mismatch = given != (sum(frame_counts) if frames_as_images(model_type) else frame_counts[0])
    spec = json.dumps(config) if as_json else config
    try:
        handle = apply_adapter(model, spec)
    except AdapterError:
        event("refused by apply_adapter")
        assert _pristine(model) == pristine, "a refused apply_adapter left attributes or hooks behind"
        return
    try:
        try:
            with torch.no_grad():
                logits = model(**inputs).logits
            out = model.generate(**inputs, max_new_tokens=2, do_sample=False) if generate else None
        except AdapterError:
            event("refused by the call" + (" (pixels mismatch)" if mismatch else ""))
            assert handle.rope is None or handle.rope.active is None, "a refused call left its RoPE plan active"
            return
        except Exception as err:
            # Only acceptable when the adapter did not touch the call and the stock model refuses it the same way.
            event("stock error passed through")
            passthrough = not handle.config.pooling
            handle.remove()
            stock = _stock_error(model, inputs, generate)
            assert passthrough and type(stock) is type(err) and str(stock) == str(err), (
                f"the adapted call raised {type(err).__name__}: {err} (stock: {type(stock).__name__}: {stock})"
            )
            return
        assert not mismatch or not handle.config.pooling, "pixels for another frame count were not refused"
        _check_result(model, model_type, handle, inputs, frame_counts, logits, out, handle.config)
        event(f"ran: pooling {'on' if handle.config.pooling else 'off'}, rope {'on' if handle.config.rope else 'off'}")
        if handle.config == AdapterConfig():
            with torch.no_grad():
                stock = _stock_logits(model, handle, inputs)
            assert torch.equal(logits, stock), "an adapter with every feature off changed the logits"
        elif handle.config.rope is None and _reference_applies(model_type, frame_counts):
            event("ran: compared with the hand-built reference")
            ref_logits, maps = reference_forward(model, model_type, inputs, handle.config.pooling, frame_counts)
            for b, mapping in enumerate(maps):
                caller, ref = zip(*mapping)
                torch.testing.assert_close(logits[b, list(caller)], ref_logits[b, list(ref)], rtol=1e-4, atol=1e-4)
    finally:
        handle.remove()


def _reference_applies(model_type, frame_counts) -> bool:
    """tests/reference.py pools every run; the adapter leaves a single image (a 1-frame run of <image>) stock."""
    return not frames_as_images(model_type) or min(frame_counts) >= 2


def _stock_logits(model, handle, inputs):
    handle.remove()
    return model(**inputs).logits


# --- configs from JSON: the message names the bad key ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"pooling": {"type": "progressive", "strdes": [2, 8]}}', "strdes"),
        ('{"pooling": [{"type": "temporal", "kernel": 2}, {"type": "conv3d", "kernal": 2}]}', "kernal"),
        ('{"pooling": {"type": "progressive", "group": 0}}', "group"),
        ('{"pooling": {"type": "progressive", "mode": "nearest"}}', "mode"),
        ('{"pooling": {"type": "adaptive3d", "output": [2, "x", 3]}}', "output"),
        ('{"pooling": {"type": "median"}}', "type"),
        ('{"pooling": [{"type": "progressive"}, {"type": "temporal"}]}', "progressive"),
        ('{"rope": {"type": "yarn", "window": 16}}', "window"),
        ('{"rope": {"type": "yarn", "visual_window": -3}}', "visual_window"),
        ('{"rope": {"type": "linear", "alpha": 2.0}}', "alpha"),
        ('{"rope": {"type": "yarn", "scope": "text"}}', "scope"),
        ('{"poolng": null}', "poolng"),
        ('{"pool_single_images": "yes"}', "pool_single_images"),
    ],
)
def test_json_config_errors_name_the_bad_key(text, key):
    with pytest.raises(AdapterError, match=key):
        AdapterConfig.from_json(text)
    model = _model("llava_next_video", 32)
    pristine = _pristine(model)
    with pytest.raises(AdapterError, match=key):
        apply_adapter(model, text)
    assert _pristine(model) == pristine
