"""Qwen2-VL, Qwen2.5-VL, Qwen3-VL: identity, stock M-RoPE ids, hand-built pooled references, batches, errors."""

from __future__ import annotations

import pytest
import torch
from reference import placeholder_runs
from transformers.modeling_outputs import BaseModelOutputWithPooling

from longctx_adapter import AdapterError, apply_adapter, get_adapter
from longctx_adapter.ops.pooling import normalize_pooling, pool_video
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_hand_inputs, qwen_tiny_model

PROGRESSIVE = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
SPATIAL = {"type": "conv3d", "kernel": [1, 2, 2], "stride": [1, 2, 2]}
TEMPORAL = {"type": "temporal", "kernel": 2, "stride": 2}


@pytest.fixture(scope="module", params=QWEN_TINY_TYPES)
def model_type(request):
    return request.param


@pytest.fixture(scope="module")
def model(model_type):
    return qwen_tiny_model(model_type, seed=0)


class DecoderInputs:
    """Position ids and embeddings the decoder receives, per call."""

    def __init__(self, model):
        self.calls = []
        self.handle = model.model.language_model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls.append(
            {
                "position_ids": kwargs["position_ids"].clone(),
                "inputs_embeds": kwargs["inputs_embeds"].clone(),
                "deepstack": [d.clone() for d in kwargs.get("deepstack_visual_embeds") or []],
            }
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _hooks(model):
    return [(n, list(m._forward_hooks), list(m._forward_pre_hooks)) for n, m in model.named_modules()] + [
        sorted(k for k in model.__dict__ if k in ("forward", "generate")),
        "get_rope_index" in model.model.__dict__,
    ]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_identity_forward_generate_and_remove(model_type, attn):
    model = qwen_tiny_model(model_type, seed=0, attn_implementation=attn)
    inputs = qwen_hand_inputs(model_type, 4, batch=2, seed=1)
    stock = model(**inputs).logits
    gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    hooks = _hooks(model)
    for pooling in (None, {"type": "progressive", "group": 1, "strides": [1]}):
        with apply_adapter(model, pooling=pooling):
            assert torch.equal(model(**inputs).logits, stock)
            assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), gen)
        assert _hooks(model) == hooks
    handle = apply_adapter(model, pooling=PROGRESSIVE)
    assert not torch.equal(model(**inputs).logits, stock)
    handle.remove()
    assert torch.equal(model(**inputs).logits, stock)
    assert _hooks(model) == hooks and get_adapter(model) is None


def test_adapter_ids_equal_stock_get_rope_index_when_unpooled(model_type, model):
    inputs = qwen_hand_inputs(model_type, 6, batch=2, seed=2)
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    stock, deltas = model.model.get_rope_index(
        inputs["input_ids"],
        inputs["mm_token_type_ids"],
        video_grid_thw=inputs["video_grid_thw"],
        attention_mask=inputs["attention_mask"],
        **extra,
    )
    with apply_adapter(model, pooling={"type": "progressive", "group": 1, "strides": [1]}) as handle:
        with DecoderInputs(model) as seen:
            model(**inputs)
        ids = seen.calls[-1]["position_ids"]
        assert ids.dtype == torch.long
        live = inputs["attention_mask"].bool()
        assert torch.equal(ids[:, live], stock[:, live])
        assert handle.calls.family is None  # released after the call
    # rope_deltas (the forward-with-cache path) follow the text rule: here (short video) that is the stock value
    assert model.model.rope_deltas is not None and torch.equal(model.model.rope_deltas, deltas)


POOLED = {  # pooling of a 4-frame (4 temporal patches of 4x4) video: input frames of each pooled frame, strides
    "progressive": (PROGRESSIVE, [(0,), (1,), (2,), (3,)], [1, 2, 1, 2]),
    # max pooling picks features, its ids are still the window centres (partial 1-wide tail windows at stride 3)
    "progressive_max": ({**PROGRESSIVE, "strides": [1, 3], "mode": "max"}, [(0,), (1,), (2,), (3,)], [1, 3, 1, 3]),
    "spatial": (SPATIAL, [(0,), (1,), (2,), (3,)], [2, 2, 2, 2]),
    "temporal": (TEMPORAL, [(0, 1), (2, 3)], [1, 1]),
    "temporal_overlap": ({"type": "temporal", "kernel": 3, "stride": 2}, [(0, 1, 2), (2, 3)], [1, 1]),
    "adaptive3d": ({"type": "adaptive3d", "output": [3, 2, 2]}, [(0, 1), (1, 2), (2, 3)], [2, 2, 2]),
    "conv3d": ({"type": "conv3d", "kernel": [2, 2, 2]}, [(0, 1), (2, 3)], [2, 2]),
    "temporal_then_progressive": ([TEMPORAL, PROGRESSIVE], [(0, 1), (2, 3)], [1, 2]),
}


def _naive_reference(stock, ids, types, config, sources, strides, frames, height, width, per_block):
    """Layout and M-RoPE ids after pooling (s x s average windows per pooled frame), by a plain scan of the tokens.

    Text keeps its stock ids; a pooled token gets its window centre. Qwen2/2.5-VL: the one run shrinks; a pooled
    frame's t is the mean of its frames' stock t. Qwen3-VL: pooled frame j keeps the block (timestamp, markers,
    stock ids) of its first frame, its tokens' t is that block's start; every other block is deleted.
    """
    video, opener, closer = config.video_token_id, config.vision_start_token_id, config.vision_end_token_id
    runs = placeholder_runs(ids, video)
    frame_first = [r[0] for r in runs] if per_block else [runs[0][0] + f * height * width for f in range(frames)]
    deleted = set()
    if per_block:
        kept = {src[0] for src in sources}
        for f, (start, stop) in enumerate(runs):
            if f in kept:
                continue
            begin = runs[f - 1][1] + 1 if f else max(k for k in range(start - 1) if ids[k] == opener) + 1
            assert ids[stop] == closer
            deleted |= set(range(begin, stop + 1))
    counts = [(-(-height // s)) * (-(-width // s)) for s in strides]
    firsts = {runs[src[0]][0]: j for j, src in enumerate(sources)} if per_block else {runs[0][0]: None}
    new_ids, new_types, keep, frame_of = [], [], [], []
    i = 0
    while i < len(ids):
        if i in deleted:
            i += 1
        elif ids[i] == video:
            j_out = firsts.get(i)
            outs = range(len(sources)) if j_out is None else [j_out]
            for j in outs:
                new_ids += [video] * counts[j]
                new_types += [2] * counts[j]
                keep += [None] * counts[j]
                frame_of += [j] * counts[j]
            while i < len(ids) and ids[i] == video:
                i += 1
        else:
            new_ids.append(ids[i])
            new_types.append(types[i])
            keep.append(i)
            i += 1
    visual = []
    for src, s in zip(sources, strides):
        first = frame_first[src[0]]
        start = float(stock[1, 0, first])
        t_val = start if per_block else sum(float(stock[0, 0, frame_first[f]]) for f in src) / len(src)
        for a in range(-(-height // s)):
            for b in range(-(-width // s)):
                rows = range(a * s, min((a + 1) * s, height))
                cols = range(b * s, min((b + 1) * s, width))
                visual.append((t_val, start + sum(rows) / len(rows), start + sum(cols) / len(cols)))
    positions = torch.zeros(3, len(new_ids), dtype=torch.float64)
    text = [k for k, src in enumerate(keep) if src is not None]
    positions[:, text] = stock[:, 0, [keep[k] for k in text]].double()
    positions[:, [k for k, src in enumerate(keep) if src is None]] = torch.tensor(visual, dtype=torch.float64).T
    return new_ids, new_types, keep, positions, sorted(deleted)


@pytest.mark.parametrize("case", sorted(POOLED))
def test_pooled_run_equals_hand_built_reference(model_type, model, case):
    """Stock model fed pooled features by hand (mm_encoder_outputs), a hand-shrunk layout and naive-loop ids.

    Pooling that merges frames: Qwen3-VL keeps each pooled frame's first block and deletes the others' text, with
    and without the processor's outer <|vision_start|> pair (frame 0 always starts a window)."""
    for outer in (True, False) if model_type == "qwen3_vl" else (True,):
        _check_pooled(model_type, model, *POOLED[case], outer_markers=outer)


def _check_pooled(model_type, model, pooling, sources, strides, outer_markers):
    inputs = qwen_hand_inputs(model_type, 8, seed=11, outer_markers=outer_markers)
    stages = normalize_pooling(pooling)
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}
    stock_ids, _ = model.model.get_rope_index(
        inputs["input_ids"], inputs["mm_token_type_ids"], video_grid_thw=inputs["video_grid_thw"], **extra
    )
    enc = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
    t, h, w = (int(x) for x in inputs["video_grid_thw"][0])
    height, width = h // 2, w // 2
    pooled = pool_video(enc.pooler_output[0].reshape(t, height, width, -1), stages)
    assert [a * b for a, b in pooled.sizes] == [(-(-height // s)) * (-(-width // s)) for s in strides]
    deep = [
        pool_video(d[0].reshape(t, height, width, -1), stages).flatten()
        for d in (getattr(enc, "deepstack_features", None) or [])
    ]
    per_block = model_type == "qwen3_vl"
    new_ids, new_types, keep, positions, deleted = _naive_reference(
        stock_ids,
        inputs["input_ids"][0].tolist(),
        inputs["mm_token_type_ids"][0].tolist(),
        model.config,
        sources,
        strides,
        t,
        height,
        width,
        per_block,
    )
    if per_block:  # the blocks of frames that are no pooled frame's first, timestamp words included, are gone
        merged_away = t - len({src[0] for src in sources})
        assert len(deleted) == merged_away * (2 + 1 + height * width + 1)
    ref_inputs = {
        "input_ids": torch.tensor([new_ids]),
        "mm_token_type_ids": torch.tensor([new_types], dtype=torch.int32),
        "attention_mask": torch.ones(1, len(new_ids), dtype=torch.long),
        "position_ids": positions[:, None].float(),
    }
    output = BaseModelOutputWithPooling(pooler_output=(pooled.flatten(),))
    if deep:
        output.deepstack_features = [(d,) for d in deep]
    with torch.no_grad():
        ref = model(**ref_inputs, mm_encoder_outputs={"video": output}).logits
        with apply_adapter(model, pooling=pooling) as handle, DecoderInputs(model) as seen:
            adapted = model(**inputs).logits
    assert handle.last_stats[0]["tokens_after"] == pooled.num_tokens
    assert handle.last_stats[0]["frames_after"] == len(sources) and handle.last_stats[0]["frames"] == t
    assert seen.calls[-1]["inputs_embeds"].shape[1] == len(new_ids)
    torch.testing.assert_close(seen.calls[-1]["position_ids"].double(), positions[:, None], rtol=0, atol=1e-6)
    if deep:
        assert all(torch.equal(a, b) for a, b in zip(seen.calls[-1]["deepstack"], deep))
    text = [k for k, src in enumerate(keep) if src is not None]
    caller = torch.tensor([keep[k] for k in text])
    torch.testing.assert_close(adapted[0, caller], ref[0, text], rtol=1e-5, atol=1e-5)
    if deleted:
        assert not adapted[0, deleted].any()  # deleted caller positions have no logits (zeros)


DECODE_CONFIGS = {
    "progressive": {"pooling": PROGRESSIVE},
    "temporal": {"pooling": TEMPORAL},
    "rope_only": {"pooling": None, "rope": {"type": "yarn", "visual_window": 2, "scope": "visual"}},
}


@pytest.mark.parametrize("case", sorted(DECODE_CONFIGS))
def test_decode_ids_follow_the_text_rule_and_no_state_leaks(model_type, model, case):
    """Generated token k gets the id stock get_rope_index gives a k-th text token appended to the caller's prompt
    (the 5.x rule for text after a video), in generate and in a manual decode loop on the cache, so decoding equals
    one forward on the whole text. Stock 5.x generate does the same, but its forward-with-cache path continues from
    rope_deltas = largest id + 1: with more temporal patches than merged rows (12 > 4 here) that jumps past the
    rule on Qwen2/2.5-VL (Qwen3-VL's frame blocks advance the text position, so it never jumps)."""
    inputs = qwen_hand_inputs(model_type, 24, batch=2, frame_counts=[24, 8], seed=4)
    length = inputs["input_ids"].shape[1]
    extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if "second_per_grid_ts" in inputs else {}

    def rule(out):  # stock ids of the caller's prompt + generated tokens, as text
        generated = out.shape[1] - length
        whole = {
            "input_ids": out,
            "mm_token_type_ids": torch.cat(
                [inputs["mm_token_type_ids"], torch.zeros((2, generated), dtype=torch.int32)], 1
            ),
            "attention_mask": torch.cat([inputs["attention_mask"], torch.ones((2, generated), dtype=torch.long)], 1),
        }
        return model.model.get_rope_index(**whole, video_grid_thw=inputs["video_grid_thw"], **extra)[0]

    def manual_step(out):  # row 0 (no padding): prefill, then one token on the cache, no mask
        row = {k: v[:1] for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
        row["attention_mask"] = row["attention_mask"][:, -int(row["attention_mask"][0].sum()) :]
        row["input_ids"] = row["input_ids"][:, -row["attention_mask"].shape[1] :]
        row["mm_token_type_ids"] = row["mm_token_type_ids"][:, -row["attention_mask"].shape[1] :]
        patches = int(inputs["video_grid_thw"][0].prod())
        row.update(
            pixel_values_videos=inputs["pixel_values_videos"][:patches], video_grid_thw=inputs["video_grid_thw"][:1]
        )
        with torch.no_grad(), DecoderInputs(model) as seen:
            prefill = model(**row, use_cache=True)
            model(input_ids=out[:1, length : length + 1], cache=prefill.cache, use_cache=True)
        return seen.calls[-1]["position_ids"][-3:, 0, 0]

    with DecoderInputs(model) as stock_seen:
        stock_out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    stock_manual = manual_step(stock_out)
    with apply_adapter(model, **DECODE_CONFIGS[case]) as handle:
        with DecoderInputs(model) as seen:
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        manual = manual_step(out)
    assert handle.calls.family is None and get_adapter(model) is None
    for calls, tokens in ((seen.calls, out), (stock_seen.calls, stock_out)):
        decode = [c["position_ids"][-3:] for c in calls[1:]]  # t, h, w rows of the two decode steps
        assert len(decode) == 2
        for step, ids in enumerate(decode):
            assert torch.equal(ids[:, :, 0].double(), rule(tokens)[:, :, length + step].double()), step
    assert torch.equal(manual.double(), rule(out)[:, 0, length].double())
    jumps = not torch.equal(stock_manual.double(), rule(stock_out)[:, 0, length].double())
    assert jumps == (model_type != "qwen3_vl")


@pytest.mark.parametrize("pooling", [PROGRESSIVE, [TEMPORAL, PROGRESSIVE]])
def test_batch_and_successive_calls_match_separate_calls(model_type, model, pooling):
    inputs = qwen_hand_inputs(model_type, 4, batch=2, frame_counts=[4, 8], seed=5)
    singles = []
    with apply_adapter(model, pooling=pooling):
        batched = model(**inputs).logits
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        for row, frames in enumerate([4, 8]):
            one = qwen_hand_inputs(model_type, frames, batch=1, frame_counts=[frames], seed=5)
            live = inputs["attention_mask"][row].bool()
            one["input_ids"] = inputs["input_ids"][row, live][None]
            one["mm_token_type_ids"] = inputs["mm_token_type_ids"][row, live][None]
            one["attention_mask"] = torch.ones_like(one["input_ids"])
            patches = inputs["video_grid_thw"].prod(-1).tolist()
            lo = sum(patches[:row])
            one["pixel_values_videos"] = inputs["pixel_values_videos"][lo : lo + patches[row]]
            one["video_grid_thw"] = inputs["video_grid_thw"][row : row + 1]
            if "second_per_grid_ts" in inputs:
                one["second_per_grid_ts"] = inputs["second_per_grid_ts"][row : row + 1]
            singles.append((model(**one).logits, live, model.generate(**one, max_new_tokens=3, do_sample=False)))
    for row, (logits, live, one_gen) in enumerate(singles):
        torch.testing.assert_close(batched[row, live][-4:], logits[0, -4:], rtol=1e-4, atol=1e-4)
        assert torch.equal(gen[row, -3:], one_gen[0, -3:])


def test_bad_inputs_are_refused_and_model_unchanged(model_type, model):
    inputs = qwen_hand_inputs(model_type, 4, seed=6)
    stock = model(**inputs).logits
    with apply_adapter(model, pooling=PROGRESSIVE):
        bad_grid = dict(inputs, video_grid_thw=inputs["video_grid_thw"] * torch.tensor([[2, 1, 1]]))
        with pytest.raises(AdapterError, match="video_grid_thw"):
            model(**bad_grid)
        no_types = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
        with pytest.raises(AdapterError, match="mm_token_type_ids"):
            model(**no_types)
        fewer_tokens = dict(inputs, video_grid_thw=inputs["video_grid_thw"] * torch.tensor([[1, 2, 1]]))
        with pytest.raises(AdapterError, match="video_grid_thw"):
            model(**fewer_tokens)
    if model_type == "qwen3_vl":  # merging frames deletes text: only the processor's block layout is accepted
        stray = inputs["input_ids"].clone()
        ends = (stray[0] == model.config.vision_end_token_id).nonzero().squeeze(1)
        stray[0, ends[0]] = stray[0, 0]  # the first block loses its <|vision_end|>
        with apply_adapter(model, pooling=TEMPORAL):
            with pytest.raises(AdapterError, match="not wrapped"):
                model(**dict(inputs, input_ids=stray))
    assert torch.equal(model(**inputs).logits, stock)


# --- visual window extension on M-RoPE ------------------------------------------------------------------------


class RotaryOutputs:
    def __init__(self, model):
        self.calls = []
        rotary = model.model.language_model.rotary_emb
        self.handle = rotary.register_forward_hook(lambda m, a, o: self.calls.append((a[1].clone(), o[0].clone())))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_mrope_short_video_is_bit_exact(model_type, model):
    inputs = qwen_hand_inputs(model_type, 4, batch=2, seed=7)
    stock = model(**inputs).logits
    gen = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    for scope in ("all", "visual"):
        with apply_adapter(model, pooling=None, rope={"type": "yarn", "visual_window": 1000, "scope": scope}):
            assert torch.equal(model(**inputs).logits, stock)
            assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), gen)


def test_mrope_scope_all_on_every_axis_equals_hf_yarn_model(model_type, model):
    import copy

    inputs = qwen_hand_inputs(model_type, 4, seed=8)
    config = copy.deepcopy(model.config)
    params = dict(config.text_config.rope_parameters)
    params.update(
        rope_type="yarn",
        factor=3.0,
        original_max_position_embeddings=4,
        beta_fast=32.0,
        beta_slow=1.0,
        attention_factor=1.0,
    )
    config.text_config.rope_parameters = params
    ref = type(model)._from_config(config, attn_implementation=model.config._attn_implementation)
    ref.load_state_dict(model.state_dict())
    ref.eval()
    rope = {"type": "yarn", "visual_window": 4, "scope": "all", "factor": 3.0, "mrope_axes": ["t", "h", "w"]}
    with torch.no_grad(), apply_adapter(model, pooling=None, rope=rope):
        assert torch.equal(model(**inputs).logits, ref(**inputs).logits)
        kw = dict(max_new_tokens=4, do_sample=False)
        assert torch.equal(model.generate(**inputs, **kw), ref.generate(**inputs, **kw))


def test_mrope_scope_visual_changes_only_the_temporal_section_of_video_rows(model_type, model):
    inputs = qwen_hand_inputs(model_type, 8, seed=9)
    rope = {"type": "yarn", "visual_window": 2, "scope": "visual"}
    with apply_adapter(model, pooling=PROGRESSIVE, rope=rope) as handle:
        with RotaryOutputs(model) as seen:
            model(**inputs)
        factor = handle.last_stats[0]["rope_factor"]
    assert factor > 1
    pos, cos = seen.calls[-1]
    rotary = model.model.language_model.rotary_emb
    stock_cos, _ = rotary(cos, pos)  # stock rotation of the same (adapter-given) ids, hook removed
    # which dims of cos come from the t axis, as the module recomposes them
    marker = torch.zeros(3, 1, 1, sum(rotary.mrope_section))
    marker[0] = 1.0
    t_dims = rotary.recomposition_frequencies(marker)[0, 0].bool()
    changed_rows = (cos != stock_cos).any(-1)[0]
    n_video = int(changed_rows.sum())
    assert n_video == sum(s["tokens_after"] for s in handle.last_stats)  # exactly the video rows
    assert not (cos != stock_cos)[0][changed_rows][:, ~t_dims].any()  # only temporal-section dims differ
