"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: pooling on the merged (t, h/2, w/2) grid, with M-RoPE ids for the pooled layout.

- Features come from the stock `get_video_features` (Qwen3-VL: its DeepStack features are pooled the same way).
- Positions: `get_rope_index` is wrapped on this instance. For an adapted call it returns ids computed by the
  adapter: every text token keeps the id the stock model gives it for the *unpooled* input (transformers 5.x rule,
  including where text after a video starts), each pooled video token gets the centre of the window it averages
  in the stock (t, h, w) frame (fractional where windows have even size).
- Decoding follows the same text rule: generated token k gets the id stock `get_rope_index` gives a k-th text
  token appended to the prompt. Stock 5.24 `generate` already does (it carries position ids forward), but the
  forward-with-cache path (manual decode loops) adds `rope_deltas` = largest id + 1 - length, which jumps past the
  rule when a Qwen2/2.5-VL video has more temporal patches than merged rows/columns. So with any feature on, every
  call through the wrapper returns rule-based deltas; with every feature off the stock function answers.
- `video_grid_thw` is rewritten to the pooled grid when every frame has one size, and otherwise to a flat
  (1, 2, 2n) grid that only carries the token count (the adapter, not the grid, gives positions then).
- Qwen3-VL puts every temporal patch in its own block: `<t seconds><|vision_start|> tokens <|vision_end|>`
  (the processor wraps all blocks of a video in one more `<|vision_start|> ... <|vision_end|>`). When pooling
  merges frames (temporal, adaptive3d, conv3d with a temporal window > 1) or drops them (select_frames), each
  pooled frame takes the block of its FIRST input frame: that frame's timestamp text, markers and stock ids;
  the blocks of the other input frames, timestamp text included, are deleted. Timestamps are kept, never
  re-rendered, so a merged frame reads as its window's start time. Pooled tokens sit at the kept block's
  start (t) plus their window centre (h, w), as Qwen3-VL places an unpooled frame. DeepStack features are
  pooled exactly like the main features.
"""

from __future__ import annotations

import inspect
import threading

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.family import Segment, make_family
from longctx_adapter.ops.positions import mrope_positions

_MERGE_ATTR = "spatial_merge_size"


def frame_grid(config):
    # Pooling acts on merged tokens; the frame size is per input, so apply-time checks use a generous grid.
    return 1 << 20, 1 << 20


def _merge(model) -> int:
    return getattr(model.config.vision_config, _MERGE_ATTR)


def _blocks_per_frame(model) -> bool:
    return model.config.model_type == "qwen3_vl"


def encode(model, encoder_kwargs, run_lengths, adapter_config):
    inner = model.model
    grids = encoder_kwargs.get("video_grid_thw")
    if grids is None:
        raise AdapterError("Qwen-VL videos need video_grid_thw (the processor returns it); pass it with the pixels")
    pixels = encoder_kwargs["pixel_values_videos"]
    patches = int(grids.prod(-1).sum())
    if grids.dim() != 2 or grids.shape[-1] != 3 or patches != pixels.shape[0]:
        raise AdapterError(
            f"video_grid_thw {grids.tolist()} describes {patches} patches but pixel_values_videos holds "
            f"{pixels.shape[0]}; pass video_grid_thw and pixels from the same processor call"
        )
    merge = _merge(model)
    if bool((grids[:, 1:] % merge).any()):
        raise AdapterError(f"video_grid_thw {grids.tolist()} has h or w not divisible by the merge size {merge}")
    output = inner.get_video_features(pixels, grids, return_dict=True)
    per_block = _blocks_per_frame(model)
    deepstack = getattr(output, "deepstack_features", None) or []
    segments = []
    for v, (feats, (t, h, w)) in enumerate(zip(output.pooler_output, grids.tolist())):
        shape = (t, h // merge, w // merge, feats.shape[-1])
        side = tuple(layer[v].reshape(shape) for layer in deepstack)
        segments.append(
            Segment(
                stock_tokens=feats.shape[0],
                grid=feats.reshape(shape),
                runs=t if per_block else 1,
                side_grids=side,
            )
        )
    return segments, output


def frame_blocks(model, row_ids, runs) -> list[tuple[int | None, int]]:
    """Caller span (start, stop) of each Qwen3-VL frame block: timestamp text through `<|vision_end|>`.

    The first block's text starts after the outer `<|vision_start|>` the processor puts around a video; without
    one (hand-built prompts) its start is unknown (None), so only pooling that keeps the first frame works there.
    """
    config = model.config
    start_id, end_id = config.vision_start_token_id, config.vision_end_token_id
    ids = row_ids.tolist()
    blocks, previous_end = [], None
    for frame, run in enumerate(runs):
        end = run.start + run.length
        opener = ids[run.start - 1] if run.start > 0 else None
        if opener != start_id or end >= len(ids) or ids[end] != end_id:
            raise AdapterError(
                f"frame {frame} of a Qwen3-VL video is not wrapped as <|vision_start|> tokens <|vision_end|>, so "
                "pooling that merges frames cannot rewrite its block; pass input_ids as the processor writes them"
            )
        if previous_end is None:
            start = None
            for k in range(run.start - 2, -1, -1):  # back over the timestamp text to the video's outer opener
                if ids[k] == start_id:
                    start = k + 1
                    break
                if ids[k] == end_id:
                    break
        else:
            start = previous_end + 1
            if any(t in (start_id, end_id) for t in ids[start : run.start - 1]):
                raise AdapterError(
                    f"the text between frames {frame - 1} and {frame} of a Qwen3-VL video holds vision markers; "
                    "pooling that merges frames deletes that text, so pass input_ids as the processor writes them"
                )
        blocks.append((start, end + 1))
        previous_end = end
    return blocks


def pack(template, features, side_features=()):
    template.pooler_output = tuple(features)
    if side_features and getattr(template, "deepstack_features", None) is not None:
        layers = len(side_features[0])
        template.deepstack_features = [tuple(video[layer] for video in side_features) for layer in range(layers)]
    return template


class _Positions(threading.local):
    ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    deltas: torch.Tensor | None = None


def install(handle) -> None:
    """Wrap get_rope_index on this instance so adapted calls get the adapter's ids (see module docstring)."""
    inner = handle.model.model
    original = inner.get_rope_index
    signature = inspect.signature(original)
    state = _Positions()
    handle.family_state = state
    convention = bool(handle.config.pooling) or handle.config.rope is not None  # all off: stock, bit for bit

    def get_rope_index(input_ids, *args, **kwargs):
        ids = state.ids
        if ids is not None and input_ids is not None:
            if input_ids.shape == ids.shape and torch.equal(input_ids.to(ids.device), ids):
                return state.positions.clone(), state.deltas.clone()
            rows = input_ids.shape[0] // max(1, ids.shape[0])
            if rows > 1 and torch.equal(input_ids, ids.repeat_interleave(rows, dim=0)):  # beams / num_return
                return state.positions.repeat_interleave(rows, dim=1), state.deltas.repeat_interleave(rows, dim=0)
        if not convention or input_ids is None:
            return original(input_ids, *args, **kwargs)
        call = dict(signature.bind(input_ids, *args, **kwargs).arguments)
        call.update(call.pop("kwargs", {}))
        if call.get("mm_token_type_ids") is None:
            return original(input_ids, *args, **kwargs)
        positions, next_text = _stock_ids_and_next_text_id(original, call)
        return positions, (next_text - _live(call["input_ids"], call.get("attention_mask")))[:, None]

    handle._patch_attr(inner, "get_rope_index", get_rope_index)
    handle.original_get_rope_index = original


def _live(input_ids, mask) -> torch.Tensor:
    return mask.sum(1) if mask is not None else torch.full((input_ids.shape[0],), input_ids.shape[1])


def _stock_ids_and_next_text_id(original, call: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stock ids of an input, and the id the stock rule gives one more text token after it (per row).

    transformers 5.x starts text after a Qwen2/2.5-VL video at max(h, w) past the video start, but its rope_deltas
    continue from the largest id + 1, past that rule after a long video (see the module docstring). The rule's next
    id comes from the stock function itself, asked about one more text token.
    """
    input_ids, types, mask = call["input_ids"], call["mm_token_type_ids"], call.get("attention_mask")
    extended = dict(call)
    extended["input_ids"] = torch.cat([input_ids, input_ids[:, -1:]], dim=1)
    extended["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(types[:, :1])], dim=1)
    if mask is not None:
        extended["attention_mask"] = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    positions, _ = original(**extended)
    return positions[..., :-1], positions[0, :, -1]


def _pooled_grids(pooled_videos, merge: int) -> list[list[int]]:
    grids = []
    for pooled in pooled_videos:
        sizes = set(pooled.sizes)
        if len(sizes) == 1:
            ((h, w),) = sizes
            grids.append([len(pooled.sizes), h * merge, w * merge])
        else:
            grids.append([1, merge, merge * pooled.num_tokens])  # ragged frames: a token count, not a geometry
    return grids


def finish(handle, ctx) -> None:
    """Rewrite video_grid_thw and precompute the M-RoPE ids of the adapted sequence."""
    model = handle.model
    model.model.rope_deltas = None  # never reuse another call's deltas
    call, new_call, rewritten = ctx.call, ctx.new_call, ctx.rewritten
    old_grid = call["video_grid_thw"]
    new_call["video_grid_thw"] = torch.tensor(
        _pooled_grids(ctx.pooled, _merge(model)), dtype=old_grid.dtype, device=old_grid.device
    )
    if call.get("mm_token_type_ids") is None:
        raise AdapterError("Qwen-VL needs mm_token_type_ids (the processor returns it); pass it with input_ids")

    stock_kwargs = {
        k: call[k] for k in ("image_grid_thw", "video_grid_thw", "second_per_grid_ts") if call.get(k) is not None
    }
    stock, next_text = _stock_ids_and_next_text_id(
        handle.original_get_rope_index,
        {
            "input_ids": call["input_ids"],
            "mm_token_type_ids": call["mm_token_type_ids"],
            "attention_mask": call.get("attention_mask"),
            **stock_kwargs,
        },
    )
    index = rewritten.new_to_caller
    positions = stock.to(torch.float64).gather(2, index.clamp(min=0)[None].expand(3, -1, -1).to(stock.device))
    positions = positions.masked_fill((index < 0)[None].to(stock.device), 0.0)
    for seg, runs, lengths, pooled in zip(ctx.segments, ctx.segment_runs, ctx.segment_lengths, ctx.pooled):
        frames, height, width = seg.grid.shape[:3]
        row, first = runs[0].row, runs[0].start
        start = stock[1, row, first].double()
        if seg.runs == 1:
            t_rel = stock[0, row, first + torch.arange(frames) * height * width].double() - start
        else:
            t_rel = torch.zeros(frames, dtype=torch.float64)  # one block per frame, each with its own start
        guide = getattr(getattr(pooled, "guided", None), "guide", None)  # question-guided stages decide alike
        ids = mrope_positions(0.0, t_rel, height, width, handle.config.pooling, guide).to(positions.device)
        offset = 0
        for run, count in zip(runs, lengths):
            if count == 0:  # the block of a frame pooled into an earlier one: deleted
                continue
            base = start if seg.runs == 1 else stock[1, row, run.start].double()
            end = int(rewritten.caller_to_new[row, run.start + run.length - 1]) + 1  # runs stay right-aligned
            positions[:, row, end - count : end] = ids[:, offset : offset + count] + base
            offset += count

    ids = new_call["input_ids"]
    live = _live(ids, new_call.get("attention_mask"))
    state = handle.family_state
    state.ids = ids
    state.positions = positions.long() if bool(torch.equal(positions, positions.round())) else positions.float()
    # decode step k of row b (live index live_b + k) gets next_text_b + k: the stock rule's id for text at that place
    state.deltas = (next_text - live.to(next_text.device))[:, None]


def visual_extent(handle, prepared, call) -> list[float]:
    """Temporal span of each row's video tokens in M-RoPE positions (after pooling): the RoPE factor's numerator."""
    model = handle.model
    if prepared is not None:
        positions, input_ids = handle.family_state.positions, prepared.call["input_ids"]
    else:
        if call.get("mm_token_type_ids") is None or call.get("input_ids") is None or call.get("video_grid_thw") is None:
            return [0.0] * (0 if call.get("input_ids") is None else call["input_ids"].shape[0])
        keys = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")
        positions, _ = handle.original_get_rope_index(
            call["input_ids"],
            mm_token_type_ids=call["mm_token_type_ids"],
            attention_mask=call.get("attention_mask"),
            **{k: call[k] for k in keys if call.get(k) is not None},
        )
        input_ids = call["input_ids"]
    visual = input_ids == model.config.video_token_id
    spans = []
    for t_ids, mask in zip(positions[0].double(), visual):
        picked = t_ids[mask.to(t_ids.device)]
        spans.append(float(picked.max() - picked.min() + 1) if picked.numel() else 0.0)
    return spans


def release(handle) -> None:
    state = handle.family_state
    state.ids = state.positions = state.deltas = None


def _family(model_type: str):
    return make_family(
        model_type,
        "video",
        hooked=("get_rope_index", "visual"),
        frame_grid=frame_grid,
        encode=encode,
        pack=pack,
        token_tensors={"mm_token_type_ids": (0, 2)},
        visual_extent=visual_extent,
        install=install,
        finish=finish,
        release=release,
        frame_blocks=frame_blocks if model_type == "qwen3_vl" else None,
    )
