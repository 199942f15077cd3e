"""The call path of an adapted model: encode, pool, rewrite placeholders, call the stock forward/generate.

Stock `forward` and `generate` both accept pre-computed `mm_encoder_outputs`, so the adapter never copies an HF
forward: it encodes with the stock encoder, pools, shrinks the placeholder runs, and hands everything to the
original bound method. Calls without visual input (including every decode step) go straight through.

Everything here works on an AdapterHandle (hooks/handle.py) through its public interface: the family declaration
(`handle.family`), the config, the guidance, the RoPE hooks, `record`, `call_scope`, `continuations`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import warnings
from dataclasses import dataclass, field

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.chunking import encode_segments, pool_segment, pool_side_grids
from longctx_adapter.hooks.streaming import check_encoded
from longctx_adapter.ops.positions import frame_sources
from longctx_adapter.ops.tokens import Rewritten, find_runs, merged_frame_blocks, resize_runs, to_caller_layout


@dataclass
class Prepared:
    call: dict  # the call as the stock forward/generate will receive it
    rewritten: Rewritten
    caller_input_ids: torch.Tensor
    stats: list[dict] = field(default_factory=list)
    family: object = None  # what the family's finish() returned for this call


@dataclass
class PoolContext:
    """What a family's finish() step may need after the rewrite."""

    call: dict  # the caller's call
    new_call: dict
    rewritten: Rewritten
    segments: list
    pooled: list  # PooledVideo per segment (None for stock segments)
    segment_runs: list  # the placeholder runs each segment fills
    segment_lengths: list  # their new lengths


def video_stat(
    row: int,
    tokens_before: int,
    tokens_after: int,
    *,
    frames: int | None = None,
    frames_after: int | None = None,
    grid: list | None = None,
    pooled: bool = False,
    rope_factor: float | None = None,
) -> dict:
    """One entry of `handle.last_stats`: the one place its schema is written.

    frames / frames_after / grid: the video's frames before and after pooling and its (T, H, W) grid (None when
    the call was not pooled); rope_factor: filled in once the call's RoPE plan is known (None: RoPE stays stock).
    Question-guided calls add question, kept_frames and anchors.
    """
    return {
        "row": row,
        "frames": frames,
        "frames_after": frames_after,
        "grid": grid,
        "tokens_before": int(tokens_before),
        "tokens_after": int(tokens_after),
        "pooled": pooled,
        "rope_factor": rope_factor,
    }


def bind_call(signature: inspect.Signature, args: tuple, kwargs: dict) -> dict:
    """Positional and keyword arguments as one flat dict of keyword arguments."""
    bound = signature.bind_partial(*args, **kwargs)
    call = {}
    for name, value in bound.arguments.items():
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            call.update(value)
        else:
            call[name] = value
    return call


def prepare(handle, call: dict, question=None, encoded=None) -> Prepared | None:
    """Pool this call's visual input, or return None when there is nothing to do (stock path).

    question: the caller's `question=` (question-guided stages; see longctx_adapter/hooks/question.py).
    encoded: the caller's `encoded_video=` (a video encoded and pooled ahead; see hooks/streaming.py).
    """
    family, config, model = handle.family, handle.config, handle.model
    if encoded is not None:
        call = check_encoded(handle, encoded, call)
    elif not config.pooling:
        return None
    elif not any(call.get(key) is not None for key in family.pixel_keys):
        return None
    input_ids = call.get("input_ids")
    if input_ids is None:
        raise AdapterError(
            "pooling needs input_ids to find the visual placeholders, but the call passed inputs_embeds; "
            "pass input_ids (as the processor returns them) or disable pooling with pooling=None"
        )
    if call.get("position_ids") is not None:
        raise AdapterError(
            "pooling changes the sequence length, so caller-given position_ids cannot be honoured; "
            "drop position_ids (the model derives them from attention_mask)"
        )
    if (call.get("mm_encoder_outputs") or {}).get(family.modality) is not None:
        raise AdapterError(f"pass either pixels or mm_encoder_outputs[{family.modality!r}], not both")
    logits_to_keep = call.get("logits_to_keep", 0)
    if isinstance(logits_to_keep, torch.Tensor):
        raise AdapterError("logits_to_keep as a tensor of indices is not supported while pooling; pass an int")

    runs = find_runs(input_ids, family.token_id(model.config))
    encoder = getattr(model.model, family.encoder_name)
    accepted = inspect.signature(encoder).parameters
    encoder_kwargs = {k: call[k] for k in accepted if k in call and k != "kwargs"}
    guidance = handle.guidance
    if encoded is not None:  # pooled ahead, frame-local stages only: no question guidance to capture
        segments, template, guidance = [encoded.segment], encoded.fresh_template(), None
    else:
        with guidance.capture(model) if guidance is not None else contextlib.nullcontext() as captured:
            segments, template = encode_segments(family, model, encoder_kwargs, [r.length for r in runs], config)
    segment_runs = _runs_per_segment(family, runs, segments)
    guides, questions = [None] * len(segments), None
    if guidance is not None:
        guides, questions = guidance.guides(model, call, question, segments, segment_runs, encoder_kwargs, captured)

    features, side_features, pooled_videos, segment_lengths, stats, deleted = [], [], [], [], [], []
    for seg, seg_runs, guide in zip(segments, segment_runs, guides):
        row = seg_runs[0].row
        if seg.grid is None:
            pooled, feats, lengths = None, seg.fixed, [seg.fixed.shape[0]]
        else:
            pooled = pool_segment(seg, config.pooling, guide)
            feats = pooled.flatten()
            if seg.tail is not None:
                feats = torch.cat([feats, seg.tail.to(feats.dtype)], dim=0)
            lengths, drops = _lengths_per_run(handle, pooled, seg, seg_runs, input_ids, feats.shape[0])
            deleted += drops
        features.append(feats)
        side_features.append(pool_side_grids(seg, config.pooling, guide, trace=getattr(pooled, "trace", None)))
        pooled_videos.append(pooled)
        segment_lengths.append(lengths)
        stats.append(
            video_stat(
                row,
                sum(r.length for r in seg_runs),
                feats.shape[0],
                frames=seg.frames,
                frames_after=None if pooled is None else len(pooled.sizes),
                grid=None if seg.grid is None else list(seg.grid.shape[:3]),
                pooled=seg.grid is not None,
            )
        )
        if guidance is not None:
            info = getattr(pooled, "guided", None)
            stats[-1].update(
                question=questions[row],
                kept_frames=list(info.kept_frames) if info is not None and info.kept_frames is not None else None,
                anchors=list(info.anchors) if info is not None and info.anchors is not None else None,
            )

    rewritten = resize_runs(
        input_ids,
        runs,
        [n for lengths in segment_lengths for n in lengths],
        attention_mask=call.get("attention_mask"),
        labels=call.get("labels"),
        pad_token_id=_pad_token_id(model.config),
        extra={
            name: (call[name], *fills) for name, fills in family.token_tensors.items() if call.get(name) is not None
        },
        drop=deleted,
    )
    new_call = {k: v for k, v in call.items() if k not in family.pixel_keys}
    encoded = dict(call.get("mm_encoder_outputs") or {})
    _encode_other_modality(model, family, call, new_call, encoded)
    new_call["input_ids"] = rewritten.input_ids
    if rewritten.attention_mask is not None:
        new_call["attention_mask"] = rewritten.attention_mask
    if call.get("labels") is not None:
        new_call["labels"] = rewritten.labels
    new_call.update(rewritten.extra)
    encoded[family.modality] = family.pack(template, features, side_features if any(side_features) else ())
    new_call["mm_encoder_outputs"] = encoded
    state = None
    if family.finish is not None:
        context = PoolContext(call, new_call, rewritten, segments, pooled_videos, segment_runs, segment_lengths)
        state = family.finish(handle, context)
    return Prepared(new_call, rewritten, input_ids, stats, state)


def _encode_other_modality(model, family, call, new_call, encoded) -> None:
    """Stock-encode images that share a call with a pooled video: forward() refuses pixels next to encoder outputs."""
    if family.modality != "video" or call.get("pixel_values") is None or encoded.get("image") is not None:
        return
    encoder = model.model.get_image_features
    accepted = inspect.signature(encoder).parameters
    kwargs = {k: call[k] for k in accepted if k in call and k != "kwargs"}
    encoded["image"] = encoder(**kwargs, return_dict=True)
    new_call.pop("pixel_values")


def _runs_per_segment(family, runs, segments) -> list[list]:
    """Give each encoded video the placeholder runs it fills, checking counts against the pixels."""
    needed = sum(seg.runs for seg in segments)
    if needed != len(runs):
        raise AdapterError(
            f"the input holds {len(runs)} {family.modality} placeholder runs but the pixels encode to "
            f"{needed}; feed input_ids and pixels from the same processor call"
        )
    out, cursor = [], 0
    for seg in segments:
        seg_runs = runs[cursor : cursor + seg.runs]
        cursor += seg.runs
        tokens = sum(r.length for r in seg_runs)
        if tokens != seg.stock_tokens or len({r.row for r in seg_runs}) != 1:
            raise AdapterError(
                f"row {seg_runs[0].row}: a {family.modality} has {tokens} placeholder tokens but its pixels give "
                f"{seg.stock_tokens} features; feed input_ids and pixels from the same processor call"
            )
        out.append(seg_runs)
    return out


def _lengths_per_run(handle, pooled, seg, seg_runs, input_ids, total: int) -> tuple[list[int], list]:
    """New length of each placeholder run of one video, and the caller spans to delete (one block per frame).

    A pooled frame left with no token (a merge stage moved all of them into other frames) has no block: its block
    is deleted like the block of a frame pooled into another one."""
    if seg.runs == 1:
        return [total], []
    counts = [h * w for h, w in pooled.sizes]
    if len(counts) == seg.runs and all(counts):
        return counts, []
    family = handle.family
    if family.frame_blocks is None:
        raise AdapterError(
            f"this model puts every frame of a video in its own block ({seg.runs} blocks) and its patch cannot "
            f"rewrite them for a pooling that changes the frame count ({seg.runs} -> {len(counts)}); use stages "
            "that keep the frame count (progressive, or adaptive3d/conv3d with temporal size/kernel 1)"
        )
    frames, height, width = seg.grid.shape[:3]
    guide = getattr(getattr(pooled, "guided", None), "guide", None)  # question-guided stages decide alike
    if len(counts) == seg.runs:  # frames kept one to one: a frame's tokens stay in its own block
        sources = [(frame,) for frame in range(frames)]
    else:
        sources = frame_sources(frames, height, width, handle.config.pooling, guide, trace=pooled.trace)
    live = [j for j, count in enumerate(counts) if count]
    blocks = family.frame_blocks(handle.model, input_ids[seg_runs[0].row], seg_runs)
    return merged_frame_blocks(seg_runs, [sources[j] for j in live], [counts[j] for j in live], blocks)


def _pad_token_id(config) -> int:
    for cfg in (config, getattr(config, "text_config", None)):
        pad = getattr(cfg, "pad_token_id", None) if cfg is not None else None
        if pad is not None:
            return int(pad)
    return 0


def _rope_plan(handle, prepared: Prepared | None, call: dict):
    """The RoPE plan of this call's full prompt (after pooling), or None when RoPE stays stock."""
    if handle.rope is None:
        return None
    input_ids = prepared.call["input_ids"] if prepared is not None else call.get("input_ids")
    if input_ids is None:
        return None
    extent = None
    if handle.family.visual_extent is not None:
        extent = handle.family.visual_extent(handle, prepared, call)
    plan = handle.rope.plan_for(input_ids, handle.family.token_id(handle.model.config), extent)
    if plan is not None and prepared is not None:
        for stat in prepared.stats:
            stat["rope_factor"] = plan.factors[stat["row"]]
    return plan


def _call_scope(handle, prepared, plan):
    """Scope of one adapted call (see AdapterHandle.call_scope): RoPE plan active, the family's call state set."""
    return handle.call_scope(plan, None if prepared is None else prepared.family)


def _remember_cache(handle, plan, output):
    """A cache created inside this forward keeps the plan, so decode steps that pass it back rotate alike."""
    cache = getattr(output, "cache", None)
    if plan is not None and cache is not None:
        handle.rope.remember(cache, plan)
    return output


def _plan_call(handle, call, question=None, encoded=None):
    """Pool and plan one call, and record what the adapter does on it (only calls with visual input count)."""
    prepared = prepare(handle, call, question, encoded)
    plan = _rope_plan(handle, prepared, call)
    if prepared is not None:
        handle.record(prepared.stats, prepared.rewritten.attention_mask)
    elif plan is not None:
        counts = plan.visual.sum(dim=1).tolist()
        handle.record([video_stat(row, n, n, rope_factor=plan.factors[row]) for row, n in enumerate(counts) if n])
    return prepared, plan


def wrap_forward(handle, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(*args, **kwargs):
        question = kwargs.pop("question", None)  # the adapter's own keywords: never reach the stock model
        encoded = kwargs.pop("encoded_video", None)
        if handle.inside_call:  # an adapted generate() already pooled and planned this sequence
            return original(*args, **kwargs)
        call = bind_call(signature, args, kwargs)
        prepared, plan = _plan_call(handle, call, question, encoded)
        if prepared is None and plan is None:
            return original(*args, **kwargs)
        with _call_scope(handle, prepared, plan):
            if prepared is None:
                if handle.config.last_logits_only and "logits_to_keep" not in call and call.get("labels") is None:
                    kwargs = {**kwargs, "logits_to_keep": 1}  # memory-lean option (see AdapterConfig)
                return _remember_cache(handle, plan, original(*args, **kwargs))
            return _caller_layout_forward(handle, original, call, prepared, plan)

    return forward


def _caller_layout_forward(handle, original, call, prepared, plan):
    new_call = prepared.call
    caller_to_new = prepared.rewritten.caller_to_new
    new_len = prepared.rewritten.input_ids.shape[1]
    keep = int(call.get("logits_to_keep", 0) or 0)
    if handle.config.last_logits_only and "logits_to_keep" not in call and call.get("labels") is None:
        keep = 1  # memory-lean option: the caller did not ask for every position's logits
    offset = 0
    if keep > 0:
        # The caller's last `keep` positions; compute logits from the earliest of them that survived.
        tail = caller_to_new[:, -keep:]
        valid = tail[tail >= 0]
        offset = int(valid.min()) if valid.numel() else new_len - 1
        new_call["logits_to_keep"] = new_len - offset
    output = _remember_cache(handle, plan, original(**new_call))
    if getattr(output, "logits", None) is not None:
        mapping = caller_to_new[:, -keep:] if keep > 0 else caller_to_new
        output.logits = to_caller_layout(output.logits, mapping, offset)
    return output


def wrap_generate(handle, original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def generate(*args, **kwargs):
        question = kwargs.pop("question", None)  # the adapter's own keywords: never reach the stock model
        encoded = kwargs.pop("encoded_video", None)
        call = bind_call(signature, args, kwargs)
        if call.get("inputs") is not None and call.get("input_ids") is None:
            call["input_ids"] = call.pop("inputs")
        continued = _continuation(handle, call)
        if continued is not None:
            if encoded is not None:
                raise AdapterError(
                    "this cache comes from an adapted call; continuing it with a new encoded video is not supported. "
                    "Start a new generate() without the cache"
                )
            return _continue_generation(handle, original, call, continued)
        prepared, plan = _plan_call(handle, call, question, encoded)
        with _call_scope(handle, prepared, plan):  # the forwards inside generate() pass straight through
            if prepared is None:
                return original(*args, **kwargs)
            _shift_lengths(handle.model, prepared)
            output = original(**prepared.call)
        _remember_continuation(handle, output, prepared, plan)
        return _caller_prompt(output, prepared)

    return generate


@dataclass
class Continuation:
    """How a cache returned by an adapted generate() lines up with the caller's sequences."""

    caller: torch.Tensor  # (B, Lc) sequences as returned to the caller
    adapted: torch.Tensor  # (B, La) the same sequences in the adapted layout the cache holds
    attention_mask: torch.Tensor
    extra: dict  # other per-token tensors in the adapted layout (e.g. mm_token_type_ids)
    plan: object


def _remember_continuation(handle, output, prepared, plan) -> None:
    """Record how the returned cache lines up with the caller's sequences; never fails a finished generate().

    The output is complete at this point: if it has a shape this bookkeeping does not expect, continuing from its
    cache is left unsupported (with a warning) rather than losing the output to an exception.
    """
    cache = getattr(output, "cache", None)
    if cache is None or isinstance(output, torch.Tensor):
        return
    try:
        continuation = _continuation_record(handle, output, prepared, plan)
        if continuation is None:
            return
        handle.continuations[cache] = continuation
        if plan is not None:
            handle.rope.remember(cache, plan)
    except Exception as error:  # noqa: BLE001 - the generation has finished; bookkeeping must not lose it
        _skip_continuation(f"{type(error).__name__}: {error}")


def _skip_continuation(why: str) -> None:
    warnings.warn(
        f"longctx-adapter: the returned cache cannot be continued with generate(cache=...) ({why}); "
        "the generated sequences are complete. Start a new generate() to continue the text",
        RuntimeWarning,
        stacklevel=4,
    )


def _continuation_record(handle, output, prepared, plan) -> Continuation | None:
    adapted = output.sequences
    prompt_ids = prepared.rewritten.input_ids
    rows, prompt_rows = adapted.shape[0], prompt_ids.shape[0]
    generated = adapted.shape[1] - prompt_ids.shape[1]
    if adapted.dim() != 2 or rows % prompt_rows or generated < 0:
        _skip_continuation(f"{tuple(adapted.shape)} sequences for a prompt of {tuple(prompt_ids.shape)}")
        return None
    per_row = rows // prompt_rows  # num_return_sequences (sampling or beams) expands every prompt row

    def expand(value: torch.Tensor) -> torch.Tensor:
        return value.repeat_interleave(per_row, dim=0) if per_row > 1 else value

    mask = prepared.call.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(prompt_ids)
    mask = expand(mask)
    mask = torch.cat([mask, mask.new_ones(rows, generated)], dim=1)
    extra = {}
    for name in handle.family.token_tensors:
        if prepared.call.get(name) is not None:
            value = expand(prepared.call[name])
            extra[name] = torch.cat([value, value.new_zeros(rows, generated)], dim=1)
    caller = expand(prepared.caller_input_ids.to(adapted.device))
    if generated:
        caller = torch.cat([caller, adapted[:, adapted.shape[1] - generated :]], dim=1)
    return Continuation(caller, adapted.clone(), mask, extra, plan)


def _continuation(handle, call) -> Continuation | None:
    cache = call.get("cache", call.get("past_key_values"))
    if cache is None:
        return None
    try:
        continued = handle.continuations.get(cache)
    except TypeError:  # an unhashable legacy cache
        return None
    if continued is None:
        return None
    if any(call.get(key) is not None for key in handle.family.pixel_keys):
        raise AdapterError(
            "this cache comes from an adapted call; continuing it with new pixels is not supported. "
            "Start a new generate() without the cache for a new video"
        )
    ids = call.get("input_ids")
    prefix = continued.caller.shape[1]
    if (
        ids is None
        or ids.shape[1] < prefix
        or not torch.equal(ids[:, :prefix].to(continued.caller.device), continued.caller)
    ):
        raise AdapterError(
            "the cache comes from an adapted generate(); continue it with input_ids that start with the sequences "
            "that call returned (prompt + generated tokens), as with a stock model"
        )
    return continued


def _continue_generation(handle, original, call, continued: Continuation):
    """Translate the caller's sequences to the layout the cache holds, generate, and translate back."""
    prefix = continued.caller.shape[1]
    ids = call["input_ids"]
    new_call = dict(call)
    new_call["input_ids"] = torch.cat([continued.adapted.to(ids.device), ids[:, prefix:]], dim=1)
    mask = call.get("attention_mask")
    tail_mask = mask[:, prefix:] if mask is not None else torch.ones_like(ids[:, prefix:])
    new_call["attention_mask"] = torch.cat([continued.attention_mask.to(tail_mask.device), tail_mask], dim=1)
    for name, value in continued.extra.items():
        given = call.get(name)
        tail = given[:, prefix:] if given is not None else value.new_zeros(ids.shape[0], ids.shape[1] - prefix)
        new_call[name] = torch.cat([value.to(tail.device), tail], dim=1)
    with handle.call_scope(continued.plan):
        output = original(**new_call)
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    restored = torch.cat([ids, sequences[:, new_call["input_ids"].shape[1] :]], dim=1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output


def _shift_lengths(model, prepared) -> None:
    """max_length / min_length count the caller's prompt: move them by how much the rewrite changed it."""
    call = prepared.call
    delta = prepared.rewritten.input_ids.shape[1] - prepared.caller_input_ids.shape[1]
    if delta == 0:
        return
    config = call.get("generation_config") or model.generation_config
    for key, new_tokens_key in (("max_length", "max_new_tokens"), ("min_length", "min_new_tokens")):
        if call.get(key) is not None:
            call[key] = call[key] + delta
        elif call.get(new_tokens_key) is None and getattr(config, new_tokens_key, None) is None:
            default = getattr(config, key, None)
            if default:  # e.g. the model's default max_length of 20 when no max_new_tokens is given
                call[key] = default + delta


def _caller_prompt(output, prepared):
    """Put the caller's own input_ids back in front of the generated tokens."""
    new_len = prepared.rewritten.input_ids.shape[1]
    sequences = output if isinstance(output, torch.Tensor) else output.sequences
    caller = prepared.caller_input_ids
    if sequences.shape[0] != caller.shape[0]:  # num_return_sequences / beams expand the batch
        caller = caller.repeat_interleave(sequences.shape[0] // caller.shape[0], dim=0)
    restored = torch.cat([caller.to(sequences.device), sequences[:, new_len:]], dim=1)
    if isinstance(output, torch.Tensor):
        return restored
    output.sequences = restored
    return output
