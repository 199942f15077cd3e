"""No state leaks between calls, and adapted models are safe to use from several threads.

The reference for every call is a fresh adapter (applied for that call alone, on a second instance with the same
weights): a long-lived adapted model must give bit-identical logits, stats and generated tokens whatever it ran
before, and whichever thread runs it.
"""

from __future__ import annotations

import threading

import pytest
import torch

from longctx_adapter import apply_adapter
from longctx_adapter.testing.tiny import (
    TINY_MODEL_TYPES,
    frames_as_images,
    hand_inputs,
    synthetic_video,
    tiny_model,
    tiny_processor,
)

CONFIG = {
    "pooling": {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"},
    "rope": {"type": "yarn", "visual_window": 16},
}
OTHER = {"pooling": [{"type": "temporal", "kernel": 2, "stride": 1}], "rope": {"type": "linear", "visual_window": 24}}
TIMEOUT = 240


def _calls(model_type) -> list[tuple[str, dict]]:
    """Long and short videos, a ragged batch, an image, text only, and (where the class has both) image + video."""
    counts = [2, 3] if frames_as_images(model_type) else None
    proc = tiny_processor(model_type)
    image = proc(
        text=["user <image> what is this assistant"], images=[synthetic_video(1, seed=7)[0]], return_tensors="pt"
    )
    calls = [
        ("long", hand_inputs(model_type, 3, seed=1)),
        ("short", hand_inputs(model_type, 2, seed=2)),
        ("batch2", hand_inputs(model_type, 2, batch=2, frame_counts=counts, seed=3)),
        ("image", dict(image)),
        (
            "text",
            {"input_ids": torch.tensor([[7, 8, 9, 10, 11]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)},
        ),
    ]
    if not frames_as_images(model_type):
        mixed = proc(
            text=["user <image> what is this <video> and this assistant"],
            images=[synthetic_video(1, seed=7)[0]],
            videos=[synthetic_video(3, seed=8)],
            return_tensors="pt",
        )
        calls.append(("image+video", dict(mixed)))
    return calls


def _run(model, handle, inputs, generate=True):
    with torch.no_grad():
        logits = model(**inputs).logits
    stats = [dict(s) for s in handle.last_stats]
    out = model.generate(**inputs, max_new_tokens=2, do_sample=False) if generate else None
    return logits, stats, out


def _same(a, b) -> bool:
    (la, sa, ga), (lb, sb, gb) = a, b
    return torch.equal(la, lb) and sa == sb and (ga is None and gb is None or torch.equal(ga, gb))


@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_no_state_leaks_between_calls(model_type):
    calls = _calls(model_type)
    fresh_model = tiny_model(model_type, seed=0)
    expected = {}
    for name, inputs in calls:
        with apply_adapter(fresh_model, CONFIG) as fresh:
            expected[name] = _run(fresh_model, fresh, inputs)
    model = tiny_model(model_type, seed=0)
    handle = apply_adapter(model, CONFIG)
    # long/short/batch/image/text alternate, forwards and generates interleave, each input comes back later
    order = [c[0] for c in calls] + [c[0] for c in reversed(calls)]
    by_name = dict(calls)
    previous_stats = []
    for step, name in enumerate(order):
        got = _run(model, handle, by_name[name], generate=step % 2 == 0)
        want = expected[name] if step % 2 == 0 else (*expected[name][:2], None)
        if not want[1]:
            # documented: last_stats describe the last call that had input of the pooled modality (so a manual
            # decode loop keeps its prefill's stats); a call without any reports the previous one's
            assert got[1] == previous_stats, f"{model_type}: call {name!r}"
            got = (got[0], [], got[2])
        assert _same(got, want), f"{model_type}: call {name!r} differs after earlier calls"
        previous_stats = got[1] or previous_stats
    assert handle.rope is not None and handle.rope.active is None  # no plan left active between calls
    handle.remove()


def _in_threads(jobs, rounds=2):
    """Run each job `rounds` times in its own thread, all started together; re-raise the first failure."""
    barrier = threading.Barrier(len(jobs))
    results = [[] for _ in jobs]
    errors = []

    def work(i, job):
        try:
            barrier.wait(timeout=TIMEOUT)
            for _ in range(rounds):
                results[i].append(job())
        except BaseException as err:  # noqa: BLE001 - reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i, job), daemon=True) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize(
    "type_a, type_b",
    [("llava_onevision", "llava_onevision"), ("llava", "llava_next_video")],
    ids=["same-class", "two-classes"],
)
def test_two_adapted_models_in_two_threads(type_a, type_b):
    """Two models (different adapter configs, RoPE on in both) run concurrently: results equal sequential runs."""
    a, b = tiny_model(type_a, seed=0), tiny_model(type_b, seed=1)
    ha, hb = apply_adapter(a, CONFIG), apply_adapter(b, OTHER)
    inputs_a, inputs_b = hand_inputs(type_a, 4, seed=1), hand_inputs(type_b, 3, batch=2, seed=2)
    if frames_as_images(type_b):
        inputs_b = hand_inputs(type_b, 3, batch=2, frame_counts=[3, 2], seed=2)
    expected_a, expected_b = _run(a, ha, inputs_a), _run(b, hb, inputs_b)
    runs = _in_threads([lambda: _run(a, ha, inputs_a), lambda: _run(b, hb, inputs_b)])
    assert all(_same(got, expected_a) for got in runs[0])
    assert all(_same(got, expected_b) for got in runs[1])
    ha.remove()
    hb.remove()


@pytest.mark.parametrize("model_type", ["llava_onevision", "llava"])
def test_one_adapted_model_in_two_threads(model_type):
    """One model, two threads with different videos: each thread sees its own last_stats and its own results."""
    model = tiny_model(model_type, seed=0)
    handle = apply_adapter(model, CONFIG)
    long, short = hand_inputs(model_type, 4, seed=1), hand_inputs(model_type, 2, seed=2)
    expected_long, expected_short = _run(model, handle, long), _run(model, handle, short)
    assert expected_long[1] != expected_short[1]
    runs = _in_threads([lambda: _run(model, handle, long), lambda: _run(model, handle, short)], rounds=3)
    assert all(_same(got, expected_long) for got in runs[0])
    assert all(_same(got, expected_short) for got in runs[1])
    assert handle.rope.active is None
    assert not {"apply_pooling", "pack_image_features"} & set(model.model.__dict__)  # no per-call shadow left behind
    handle.remove()
