"""The merge stages on every supported class, against hand-built references: the tokens that reach the decoder,
logits, generate's prompt prefix, remove(), Qwen M-RoPE ids (both position rules), Qwen3-VL frame blocks, DeepStack
features, the visual-window RoPE factor after merging, chunked encoding."""

from __future__ import annotations

import pytest
import torch
from helpers import logits_of
from reference import reference_forward, reference_videos
from test_adapter_qwen import DecoderInputs
from transformers.modeling_outputs import BaseModelOutputWithPooling

from longctx_adapter import apply_adapter, get_adapter
from longctx_adapter.hooks.rotary import scale_factor
from longctx_adapter.ops.pooling import normalize_pooling, pool_video
from longctx_adapter.testing.tiny import frames_as_images, hand_inputs, tiny_model
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_hand_inputs, qwen_tiny_model

EVERYTHING_INTO_FRAME_0 = {"type": "merge_temporal", "threshold": -1.0}  # cos > -1: all later tokens merge
MERGES = {
    "temporal_all": EVERYTHING_INTO_FRAME_0,
    "temporal_budget": {"type": "merge_temporal", "ratio": 0.6, "positions": "mean"},
    "density": {"type": "segment_density", "ratio": 0.3, "segments": 2},
    "density_mean": {"type": "segment_density", "max_tokens": 7, "segments": 3, "positions": "mean"},
    # pool then merge: tokens of one frame merge into kept tokens of later frames (anchors every 2nd frame)
    "temporal_then_density": [
        {"type": "temporal"},
        {"type": "segment_density", "ratio": 0.4, "segments": 1, "cut_similarity": -1.0, "anchor_step": 2,
         "positions": "mean"},  # fmt: skip
    ],
}
#: Qwen-VL (frames, seed) per case (temporal patches of 2): a temporal stage first needs enough frames for the merge
#: to leave some pooled frames empty; seed 12 merges tokens of frame 0 into tokens kept in frame 2
QWEN_INPUTS = {"temporal_then_density": (16, 12), "temporal_then_budget": (16, 11)}
QWEN_MERGES = {**MERGES, "temporal_then_budget": [{"type": "temporal"}, {"type": "merge_temporal", "ratio": 0.5}]}


# ---------------------------------------------------------------------------------------------------------------------
# LLaVA family (1-D RoPE: kept tokens keep their order, positions are the sequence).


def _llava_inputs(model_type, batch):
    counts = [4, 6] if batch == 2 and frames_as_images(model_type) else [4] * batch
    return hand_inputs(model_type, 4, batch=batch, frame_counts=counts if batch == 2 else None, seed=1), counts


@pytest.mark.parametrize("name", sorted(MERGES))
@pytest.mark.parametrize("batch", [1, 2])
def test_llava_forward_equals_hand_built_reference(model_type, model, name, batch):
    inputs, counts = _llava_inputs(model_type, batch)
    pooling = MERGES[name]
    stock = logits_of(model, inputs)
    ref_logits, maps = reference_forward(model, model_type, inputs, pooling, counts)
    with apply_adapter(model, pooling=pooling) as handle:
        logits = logits_of(model, inputs)
        stats = handle.last_stats
    for b, mapping in enumerate(maps):
        caller, ref = torch.tensor([c for c, _ in mapping]), torch.tensor([r for _, r in mapping])
        torch.testing.assert_close(logits[b, caller], ref_logits[b, ref], rtol=1e-5, atol=1e-5)
    # the tokens that reached the decoder: the merge of the stock encoder's features (+ OneVision's newline)
    expected = [pool_video(grid, pooling).num_tokens + (tail is not None) for grid, tail in
                reference_videos(model, model_type, inputs, counts)]  # fmt: skip
    assert sum(s["tokens_after"] for s in stats) == sum(expected)
    assert get_adapter(model) is None and torch.equal(logits_of(model, inputs), stock)  # remove(): the stock model


def test_llava_generate_keeps_the_prompt_and_follows_the_reference(model_type, model):
    inputs, counts = _llava_inputs(model_type, 1)
    for pooling in MERGES.values():
        with apply_adapter(model, pooling=pooling):
            out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        prompt = inputs["input_ids"].shape[1]
        assert torch.equal(out[:, :prompt], inputs["input_ids"])
        ref_logits, maps = reference_forward(model, model_type, inputs, pooling, counts)
        assert int(out[0, prompt]) == int(ref_logits[0, maps[0][-1][1]].argmax())


def test_rope_factor_uses_the_length_after_merging():
    model = tiny_model("llava_onevision", seed=0)
    inputs = hand_inputs("llava_onevision", 4, seed=1)
    window = 5
    for pooling in MERGES.values():
        with apply_adapter(model, pooling=pooling, rope={"type": "yarn", "visual_window": window}) as handle:
            logits_of(model, inputs)
            (stat,) = handle.last_stats
        unmerged = stat["grid"][0] * stat["grid"][1] * stat["grid"][2] + 1  # the grid the merge saw, + newline
        assert stat["tokens_after"] < unmerged
        assert stat["rope_factor"] == scale_factor(stat["tokens_after"], window) < scale_factor(unmerged, window)


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_vl"])
def test_chunked_encoding_equals_unchunked(model_type):
    """Merges are never pooled chunk by chunk (chunk_plan says why); the chunked encoder feeds the same grid."""
    qwen = model_type.startswith("qwen")
    model = qwen_tiny_model(model_type) if qwen else tiny_model(model_type)
    inputs = qwen_hand_inputs(model_type, 8, seed=3) if qwen else hand_inputs(model_type, 6, seed=3)
    for pooling in MERGES.values():
        results = []
        for chunk in (None, 2 if qwen else 2):
            with apply_adapter(model, pooling=pooling, vision_chunk_frames=chunk) as handle:
                results.append((logits_of(model, inputs), handle.last_stats[0]["tokens_after"]))
        assert results[0][1] == results[1][1]
        torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Qwen family: M-RoPE ids of merged tokens, Qwen3-VL blocks, DeepStack.


@pytest.fixture(scope="module", params=QWEN_TINY_TYPES)
def qwen_type(request):
    return request.param


@pytest.fixture(scope="module")
def qwen(qwen_type):
    return qwen_tiny_model(qwen_type, seed=0)


def _qwen_reference(model, model_type, inputs, pooling):
    """(new ids, types, caller index per new position (None: visual), position ids (3, L), pooled, DeepStack)
    built by hand: stock ids of the caller's tokens, the merge's decision on the stock encoder's features.

    `pooling` is one merge stage, or a temporal stage (kernel == stride = k) then a merge: the merge then sees
    frame j = the mean of input frames k*j .. k*j+k-1, whose stock place is the mean of theirs (one block per
    frame, Qwen3-VL: the block of frame k*j, as any pooled frame takes its first input frame's block)."""
    config = model.config
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    stock, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"], **extra
    )
    stock = stock[:, 0].double()
    enc = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
    H, W = h // 2, w // 2
    P = H * W
    stages = normalize_pooling(pooling)
    k = stages[0]["kernel"] if len(stages) == 2 else 1
    assert len(stages) == 1 or (stages[0]["type"] == "temporal" and stages[0]["stride"] == k and t % k == 0)
    pooled = pool_video(enc.pooler_output[0].reshape(t, H, W, -1), stages)
    deep = [
        pool_video(d[0].reshape(t, H, W, -1), stages, trace=pooled.trace).flatten()
        for d in (getattr(enc, "deepstack_features", None) or [])
    ]
    decision = pooled.trace[-1]
    ids = inputs["input_ids"][0].tolist()
    video = config.video_token_id
    caller_visual = [i for i, token in enumerate(ids) if token == video]  # frame-major, row-major: flat index order
    per_block = model_type == "qwen3_vl"

    def place(token):  # the stock (t, h, w) of token j * P + p of the merge's input grid
        frame, p = divmod(token, P)
        if per_block:  # the block of input frame k * j: its start, plus (0, row, column)
            return stock[:, caller_visual[k * frame * P + p]]
        return torch.stack([stock[:, caller_visual[(k * frame + i) * P + p]] for i in range(k)], 1).mean(1)

    counts = decision.frame_counts
    rule = stages[-1]["positions"]
    visual = []
    for j, rep in enumerate(decision.kept.tolist()):
        members = (decision.assign == j).nonzero().flatten().tolist()
        if rule == "kept":
            visual.append(place(rep))
        elif not per_block:
            visual.append(torch.stack([place(m) for m in members], 1).mean(1))
        else:  # the representative's block start plus the mean (row, column) of the members
            base = place((rep // P) * P)[0]
            rows = torch.tensor([float(m % P // W) for m in members]).mean()
            cols = torch.tensor([float(m % W) for m in members]).mean()
            visual.append(torch.stack([base, base + rows, base + cols]).double())
    new_ids, keep, deleted = [], [], set()
    if per_block:
        for f in range(t):
            first = caller_visual[f * P]
            if f % k or counts[f // k] == 0:
                deleted |= set(range(first - 3, first + P + 1))  # 2 timestamp words, start, tokens, end
    i = 0
    while i < len(ids):
        if i in deleted:
            i += 1
        elif ids[i] == video:
            if per_block:
                frame = caller_visual.index(i) // P
                n, i = counts[frame // k], i + P
            else:
                n, i = decision.num_tokens, i + t * P
            new_ids += [video] * n
            keep += [None] * n
        else:
            new_ids.append(ids[i])
            keep.append(i)
            i += 1
    positions = torch.zeros(3, len(new_ids), dtype=torch.float64)
    text = [n for n, src in enumerate(keep) if src is not None]
    positions[:, text] = stock[:, [keep[n] for n in text]]
    positions[:, [n for n, src in enumerate(keep) if src is None]] = torch.stack(visual, 1)
    types = [2 if token == video else 0 for token in new_ids]
    return new_ids, types, keep, positions, pooled, deep, sorted(deleted)


@pytest.mark.parametrize("name", sorted(QWEN_MERGES))
def test_qwen_ids_layout_and_logits_equal_the_hand_built_reference(qwen_type, qwen, name):
    pooling = QWEN_MERGES[name]
    frames, seed = QWEN_INPUTS.get(name, (8, 11))
    inputs = qwen_hand_inputs(qwen_type, frames, seed=seed)
    new_ids, types, keep, positions, pooled, deep, deleted = _qwen_reference(qwen, qwen_type, inputs, pooling)
    if name == "temporal_then_density" and qwen_type == "qwen3_vl":  # the case for the block rule: a token of a
        # frame that keeps tokens joins a token kept in a later frame (its block stays its representative's)
        decision = pooled.trace[-1]
        places = decision.shape[1] * decision.shape[2]
        frame_of_output = (decision.kept // places)[decision.assign]
        own_frame = torch.arange(decision.assign.numel()) // places
        kept_frames = torch.tensor([f for f, n in enumerate(decision.frame_counts) if n])
        assert ((own_frame < frame_of_output) & torch.isin(own_frame, kept_frames)).any()
    ref_inputs = {
        "input_ids": torch.tensor([new_ids]),
        "mm_token_type_ids": torch.tensor([types], dtype=torch.int32),
        "attention_mask": torch.ones(1, len(new_ids), dtype=torch.long),
        "position_ids": positions[:, None].float(),
    }
    output = BaseModelOutputWithPooling(pooler_output=(pooled.flatten(),))
    if deep:
        output.deepstack_features = [(d,) for d in deep]
    stock = logits_of(qwen, inputs)
    with torch.no_grad():
        ref = qwen(**ref_inputs, mm_encoder_outputs={"video": output}).logits
        with apply_adapter(qwen, pooling=pooling) as handle, DecoderInputs(qwen) as seen:
            adapted = qwen(**inputs).logits
            gen = qwen.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert handle.last_stats[0]["tokens_after"] == pooled.num_tokens
    assert seen.calls[0]["inputs_embeds"].shape[1] == len(new_ids)
    # fractional ids reach the decoder as float32, as the reference feeds them
    seen_ids = seen.calls[0]["position_ids"][-3:].double()
    torch.testing.assert_close(seen_ids, ref_inputs["position_ids"].double(), rtol=0, atol=1e-6)
    assert len(seen.calls[0]["deepstack"]) == len(deep)
    assert all(torch.equal(a, b) for a, b in zip(seen.calls[0]["deepstack"], deep))
    text = [k for k, src in enumerate(keep) if src is not None]
    caller = torch.tensor([keep[k] for k in text])
    torch.testing.assert_close(adapted[0, caller], ref[0, text], rtol=1e-5, atol=1e-5)
    if deleted:
        assert not adapted[0, deleted].any()
    prompt = inputs["input_ids"].shape[1]
    assert torch.equal(gen[:, :prompt], inputs["input_ids"])
    assert int(gen[0, prompt]) == int(ref[0, -1].argmax())
    assert torch.equal(logits_of(qwen, inputs), stock)  # after remove(): the stock model


def test_qwen_everything_merged_into_frame_0_keeps_one_block(qwen_type, qwen):
    inputs = qwen_hand_inputs(qwen_type, 8, seed=5)
    with apply_adapter(qwen, pooling=EVERYTHING_INTO_FRAME_0) as handle:
        logits_of(qwen, inputs)
    (stat,) = handle.last_stats
    assert stat["tokens_after"] == stat["tokens_before"] // stat["grid"][0]


def test_qwen_rope_factor_uses_the_temporal_span_after_merging(qwen_type, qwen):
    """M-RoPE's visual window is in temporal positions: the span of the merged tokens' t ids."""
    window = 1
    for name, pooling in MERGES.items():
        inputs = qwen_hand_inputs(qwen_type, QWEN_INPUTS.get(name, (8,))[0], seed=7)
        _, _, keep, positions, *_ = _qwen_reference(qwen, qwen_type, inputs, pooling)
        t_ids = positions[0, [k for k, src in enumerate(keep) if src is None]]
        span = float(t_ids.max() - t_ids.min() + 1)
        with apply_adapter(qwen, pooling=pooling, rope={"type": "yarn", "visual_window": window}) as handle:
            logits_of(qwen, inputs)
        expected = scale_factor(int(span), window) if span.is_integer() else max(1.0, span / window)
        if expected == 1.0:  # no extension needed: the RoPE stays stock
            assert handle.last_stats[0]["rope_factor"] is None and span == 1 and name == "temporal_all"
        else:
            assert handle.last_stats[0]["rope_factor"] == pytest.approx(expected), name


def test_qwen3_pool_then_merge_keeps_the_blocks_of_frames_with_tokens():
    """temporal:2 then a merge into the first pooled frame: the block rule of pooled frames (first source frame's
    block) replays the merge's trace; every block but the first is deleted."""
    model = qwen_tiny_model("qwen3_vl", seed=0)
    inputs = qwen_hand_inputs("qwen3_vl", 8, seed=4)
    config = model.config
    start = config.vision_start_token_id
    pooling = [{"type": "temporal"}, EVERYTHING_INTO_FRAME_0]
    with apply_adapter(model, pooling=pooling) as handle, DecoderInputs(model) as seen, torch.no_grad():
        logits = model(**inputs).logits
    (stat,) = handle.last_stats
    t, h, w = stat["grid"]
    assert stat["frames_after"] == t // 2 and stat["tokens_after"] == h * w
    embeds = seen.calls[0]["inputs_embeds"]
    blocks_before = int((inputs["input_ids"][0] == start).sum())  # the outer opener + one per frame
    assert blocks_before == 1 + t
    # frame 0's block keeps h * w tokens; the blocks of frames 1..t-1 (2 timestamp words, start, tokens, end) are gone
    assert embeds.shape[1] == inputs["input_ids"].shape[1] - (t - 1) * (2 + 1 + h * w + 1)
    assert torch.isfinite(logits).all()
