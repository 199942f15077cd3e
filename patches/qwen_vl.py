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
  pooled exactly like the main features. Merge stages (tokens chosen from the features) replay the features'
  decision (`PooledVideo.trace`) on the ids, the DeepStack features and the blocks; a merged frame is its
  representatives' frame, and a frame left with no token loses its block.
- Pixels arrive patchified: (sum t*h*w, C*tp*p*p) rows with `video_grid_thw` in pre-merge patch units; chunked
  encoding splits those rows per video, a chunk of temporal patches at a time; the question scorer sees the
  frames rebuilt from the rows (both frames of each temporal patch).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.family import HALF, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, EncoderCost, Segment, make_family
from longctx_adapter.ops.positions import mrope_positions

# Qwen-VL tokens are already 2x2-merged patches: stride 1 keeps the stock resolution on the key frame.
PRESET = {"pooling": {"type": "progressive", "group": 4, "strides": [1, 4], "mode": "bilinear"}}
#: frames are resized to this (height, width) when a caller gives no size (the processor picks one from
#: min/max pixels; 448x448 gives 16x16 merged tokens per temporal patch at patch 14)
FRAME_SIZE = (448, 448)


def frame_grid(config):
    # Pooling acts on merged tokens; the frame size is per input, so apply-time checks use a generous grid.
    return 1 << 20, 1 << 20


def _merge(model) -> int:
    return model.config.vision_config.spatial_merge_size


def _check_grids(encoder_kwargs) -> torch.Tensor:
    grids = encoder_kwargs.get("video_grid_thw")
    if grids is None:
        raise AdapterError("Qwen-VL videos need video_grid_thw (the processor returns it); pass it with the pixels")
    return grids


def encode(model, encoder_kwargs, run_lengths, adapter_config, *, blocks_per_frame: bool):
    inner = model.model
    grids = _check_grids(encoder_kwargs)
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
    deepstack = getattr(output, "deepstack_features", None) or []
    segments = []
    for v, (feats, (t, h, w)) in enumerate(zip(output.pooler_output, grids.tolist())):
        shape = (t, h // merge, w // merge, feats.shape[-1])
        side = tuple(layer[v].reshape(shape) for layer in deepstack)
        segments.append(
            Segment(
                stock_tokens=feats.shape[0],
                grid=feats.reshape(shape),
                runs=t if blocks_per_frame else 1,
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
    if side_features:  # Qwen3-VL's DeepStack features (a streamed video's template starts without them)
        layers = len(side_features[0])
        template.deepstack_features = [tuple(video[layer] for video in side_features) for layer in range(layers)]
    return template


# ------------------------------------------------------------------------------------------------ positions


@dataclass(frozen=True)
class Installed:
    """The family's state on one handle: the stock get_rope_index the wrapper stands in front of."""

    stock_rope_index: object


@dataclass(frozen=True)
class CallPositions:
    """The M-RoPE ids of one adapted call, computed in finish() and answered by the wrapped get_rope_index."""

    ids: torch.Tensor  # the rewritten input_ids they belong to
    positions: torch.Tensor  # (3, B, L)
    deltas: torch.Tensor  # (B, 1)


def install(handle) -> Installed:
    """Wrap get_rope_index on this instance so adapted calls get the adapter's ids (see module docstring)."""
    inner = handle.model.model
    original = inner.get_rope_index
    signature = inspect.signature(original)
    convention = bool(handle.config.pooling) or handle.config.rope is not None  # all off: stock, bit for bit

    def get_rope_index(input_ids, *args, **kwargs):
        current = handle.calls.family
        if current is not None and input_ids is not None:
            ids = current.ids
            if input_ids.shape == ids.shape and torch.equal(input_ids.to(ids.device), ids):
                return current.positions.clone(), current.deltas.clone()
            rows = input_ids.shape[0] // max(1, ids.shape[0])
            if rows > 1 and torch.equal(input_ids, ids.repeat_interleave(rows, dim=0)):  # beams / num_return
                return current.positions.repeat_interleave(rows, dim=1), current.deltas.repeat_interleave(rows, dim=0)
        if not convention or input_ids is None:
            return original(input_ids, *args, **kwargs)
        call = dict(signature.bind(input_ids, *args, **kwargs).arguments)
        call.update(call.pop("kwargs", {}))
        if call.get("mm_token_type_ids") is None:
            return original(input_ids, *args, **kwargs)
        positions, next_text = _stock_ids_and_next_text_id(original, call)
        return positions, (next_text - _live(call["input_ids"], call.get("attention_mask")))[:, None]

    handle.shadow(inner, "get_rope_index", get_rope_index)
    return Installed(original)


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


_GRID_KEYS = ("image_grid_thw", "video_grid_thw", "second_per_grid_ts")


def finish(handle, ctx) -> CallPositions:
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

    stock, next_text = _stock_ids_and_next_text_id(
        handle.family_state.stock_rope_index,
        {
            "input_ids": call["input_ids"],
            "mm_token_type_ids": call["mm_token_type_ids"],
            "attention_mask": call.get("attention_mask"),
            **{k: call[k] for k in _GRID_KEYS if call.get(k) is not None},
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
        trace = getattr(pooled, "trace", None)  # data-dependent stages replay what they decided on the features
        ids = mrope_positions(0.0, t_rel, height, width, handle.config.pooling, guide, trace).to(positions.device)
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
    return CallPositions(
        ids=ids,
        positions=positions.long() if bool(torch.equal(positions, positions.round())) else positions.float(),
        # decode step k of row b (live index live_b + k) gets next_text_b + k: the stock rule's id for text there
        deltas=(next_text - live.to(next_text.device))[:, None],
    )


def visual_extent(handle, prepared, call) -> list[float]:
    """Temporal span of each row's video tokens in M-RoPE positions (after pooling): the RoPE factor's numerator."""
    model = handle.model
    if prepared is not None:
        positions, input_ids = prepared.family.positions, prepared.call["input_ids"]
    else:
        if call.get("mm_token_type_ids") is None or call.get("input_ids") is None or call.get("video_grid_thw") is None:
            return [0.0] * (0 if call.get("input_ids") is None else call["input_ids"].shape[0])
        positions, _ = handle.family_state.stock_rope_index(
            call["input_ids"],
            mm_token_type_ids=call["mm_token_type_ids"],
            attention_mask=call.get("attention_mask"),
            **{k: call[k] for k in _GRID_KEYS if call.get(k) is not None},
        )
        input_ids = call["input_ids"]
    visual = input_ids == model.config.video_token_id
    spans = []
    for t_ids, mask in zip(positions[0].double(), visual):
        picked = t_ids[mask.to(t_ids.device)]
        spans.append(float(picked.max() - picked.min() + 1) if picked.numel() else 0.0)
    return spans


def rope_positions(model, inputs: dict):
    """The M-RoPE ids (3, B, L) the model's get_rope_index gives a whole input (eval's option scoring continues a
    cached prompt with them: stock 5.x decoding starts from the prompt's largest id + 1, not where its own rule
    puts text after a long video). None without mm_token_type_ids."""
    if inputs.get("mm_token_type_ids") is None:
        return None
    keys = ("mm_token_type_ids", "attention_mask", *_GRID_KEYS)
    positions, _ = model.model.get_rope_index(
        inputs["input_ids"], **{k: inputs[k] for k in keys if inputs.get(k) is not None}
    )
    return positions


# ------------------------------------------------------------------------------------------------ chunks, scorer


def temporal_patch(config) -> int:
    return config.vision_config.temporal_patch_size


def split_video(encoder_kwargs, bounds):
    """Each video's patch rows, a chunk of temporal patches at a time, with its own one-row video_grid_thw."""
    grids = _check_grids(encoder_kwargs)
    pixels = encoder_kwargs["pixel_values_videos"]
    row = 0
    for video, (t, h, w) in enumerate(grids.tolist()):
        for start, stop in bounds(t):
            rows = pixels[row + start * h * w : row + stop * h * w]
            grid = torch.tensor([[stop - start, h, w]], dtype=grids.dtype, device=grids.device)
            yield (video,), {"pixel_values_videos": rows, "video_grid_thw": grid}
        row += t * h * w


def scorer_frames(model, encoder_kwargs, segments):
    """Undo the processor's patchification: (t*h*w, C*tp*p*p) rows -> (t*tp, C, h*p, w*p) frames per video."""
    vision = model.config.vision_config
    merge, tp = vision.spatial_merge_size, vision.temporal_patch_size
    patch = vision.patch_size
    channels = getattr(vision, "in_channels", getattr(vision, "in_chans", 3))
    pixels, grids = encoder_kwargs["pixel_values_videos"], encoder_kwargs["video_grid_thw"]
    out, row = [], 0
    for t, h, w in grids.tolist():
        rows = pixels[row : row + t * h * w]
        row += t * h * w
        x = rows.reshape(t, h // merge, w // merge, merge, merge, channels, tp, patch, patch)
        x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * tp, channels, h * patch, w * patch)
        out.append((x, None))
    return out


# ------------------------------------------------------------------------------------------------ sizes


def _patches(config, frame_size) -> tuple[int, int]:
    """(h, w) in pre-merge patches of a frame of `frame_size` (height, width) pixels."""
    patch = config.vision_config.patch_size
    merge = config.vision_config.spatial_merge_size
    height, width = frame_size
    if height % (patch * merge) or width % (patch * merge):
        raise AdapterError(
            f"frame size {tuple(frame_size)} must be a multiple of patch x merge = {patch * merge} pixels"
        )
    return height // patch, width // patch


def _temporal_patches(config, frames: int) -> int:
    step = config.vision_config.temporal_patch_size
    if frames % step:
        raise AdapterError(f"Qwen-VL takes frames in groups of {step}; got {frames} frames")
    return frames // step


def video_grid(config, frames: int, frame_size=None) -> tuple[int, int, int]:
    """The merged (t, h, w) grid of one video: what the adapter pools."""
    if frame_size is None:
        raise AdapterError("Qwen-VL inputs need a frame_size (height, width) in pixels")
    t = _temporal_patches(config, frames)
    h, w = _patches(config, frame_size)
    merge = config.vision_config.spatial_merge_size
    return t, h // merge, w // merge


def stock_tokens(config, frames: int, frame_size=None) -> int:
    t, h, w = video_grid(config, frames, frame_size)
    return t * h * w


def _marker_tokens(blocks: int) -> int:
    return 2  # <|vision_start|> ... <|vision_end|>


def _stamp_tokens(block: int) -> int:
    """Tokens of a block's `<t seconds>` text: Qwen's tokenizer splits digits, so `<`, t's integer digits, `.`, `5`,
    ` seconds`, `>`; t = 2 * block + 0.5 at one frame a second (two-frame temporal patches), the rate assumed here."""
    return len(str(2 * block)) + 5


def _block_marker_tokens(blocks: int) -> int:
    return sum(_stamp_tokens(k) + 2 for k in range(blocks)) + 2  # per block: timestamp, start, end; the outer pair


def _video_inputs(
    config, frames, frame_size, words, text_before, text_after, generator, dtype, *, blocks_per_frame, seconds_per_grid
):
    frame_size = tuple(frame_size) if frame_size is not None else FRAME_SIZE
    vision = config.vision_config
    t = _temporal_patches(config, frames)
    h, w = _patches(config, frame_size)
    per_t = (h // vision.spatial_merge_size) * (w // vision.spatial_merge_size)
    start, end, video = config.vision_start_token_id, config.vision_end_token_id, config.video_token_id
    if blocks_per_frame:
        block = []
        for k in range(t):
            block += [words(_stamp_tokens(k)), torch.tensor([start]), torch.full((per_t,), video), torch.tensor([end])]
        visual = torch.cat([torch.tensor([start]), *block, torch.tensor([end])])  # the processor's outer pair
    else:
        visual = torch.cat([torch.tensor([start]), torch.full((t * per_t,), video), torch.tensor([end])])
    ids = torch.cat([words(text_before), visual, words(text_after)])[None]
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
    pixels = torch.randn((t * h * w, patch_dim), generator=generator, dtype=torch.float32).to(dtype)
    out = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "mm_token_type_ids": (ids == video).to(torch.int32) * 2,
        "pixel_values_videos": pixels,
        "video_grid_thw": torch.tensor([[t, h, w]]),
    }
    if seconds_per_grid:
        out["second_per_grid_ts"] = torch.tensor([1.0])
    return out


def processor_kwargs(frames: int, timestamps=None, fps=None) -> dict:
    """Tell the processor the frames' sampling rate (Qwen2.5-VL's second_per_grid_ts = temporal_patch_size / fps
    and Qwen3-VL's "<t seconds>" text come from it) and that the frames given are the whole video."""
    from transformers.video_utils import VideoMetadata

    if timestamps is not None and len(timestamps) > 1:
        span = float(timestamps[-1] - timestamps[0])
        sampled_fps = (len(timestamps) - 1) / span if span > 0 else (fps or 1.0)
    else:
        sampled_fps = fps or 1.0
    metadata = VideoMetadata(total_num_frames=frames, fps=sampled_fps, frames_indices=list(range(frames)))
    return {"do_sample_frames": False, "video_metadata": [metadata]}


# ------------------------------------------------------------------------------------------------ the three types


def _family(model_type: str, *, norm, mlp_width, blocks_per_frame=False, position_copy=False, seconds_per_grid=False):
    return make_family(
        model_type,
        "video",
        hooked=("get_rope_index", "visual"),
        frame_grid=frame_grid,
        encode=functools.partial(encode, blocks_per_frame=blocks_per_frame),
        pack=pack,
        token_tensors={"mm_token_type_ids": (0, 2)},
        install=install,
        finish=finish,
        visual_extent=visual_extent,
        blocks_per_frame=blocks_per_frame,
        frame_blocks=frame_blocks if blocks_per_frame else None,
        preset=PRESET,
        input_norm=norm,
        scorer_frames=scorer_frames,
        scorer_tower=None,  # the scorer never reuses Qwen's own vision pass
        split_video=split_video,
        temporal_patch=temporal_patch,
        stock_tokens=stock_tokens,
        video_grid=video_grid,
        frame_size=FRAME_SIZE,
        marker_tokens=_block_marker_tokens if blocks_per_frame else _marker_tokens,
        cost=EncoderCost("patches", mlp_width=mlp_width, position_copy=position_copy),
        video_inputs=functools.partial(
            _video_inputs, blocks_per_frame=blocks_per_frame, seconds_per_grid=seconds_per_grid
        ),
        prompt_placeholder="<|vision_start|><|video_pad|><|vision_end|>",
        processor_kwargs=processor_kwargs,
        pixel_budget_args=("min_pixels", "max_pixels"),
        rope_positions=rope_positions,
    )


CLIP_NORM = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
FAMILIES = (
    # vision MLP activations alive per patch: QuickGELU x * sigmoid(1.702 x) holds fc1's output, 1.702 x and its
    # sigmoid at once (measured on the true-width tower: benchmarks/streaming_ingestion.py --model qwen2-vl-7b)
    _family(
        "qwen2_vl",
        norm=CLIP_NORM,
        mlp_width=lambda v: 3 * (getattr(v, "embed_dim", None) or v.hidden_size) * v.mlp_ratio,
    ),
    # SwiGLU: act(gate), up and their product; temporal ids scale with second_per_grid_ts
    _family("qwen2_5_vl", norm=CLIP_NORM, mlp_width=lambda v: 3 * v.intermediate_size, seconds_per_grid=True),
    # one block per frame with its timestamp; interpolated position embeddings copied per call
    _family(
        "qwen3_vl",
        norm=(HALF, HALF),
        mlp_width=lambda v: 2 * v.intermediate_size,
        blocks_per_frame=True,
        position_copy=True,
    ),
)
