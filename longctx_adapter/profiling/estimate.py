"""Analytic memory estimate of one long-video generate() call, stage by stage (docs/memory.md#what-dominates).

`estimate_memory(config, frames, adapter_config)` returns the peak tensor bytes of the three stages the profiler
measures (vision, prefill, first decode step) for batch 1, built from:

- weights: parameter bytes counted exactly (the model is instantiated on the meta device once per config);
- inputs: pixels in the model dtype (what the profiler feeds; HF processors return float32, which callers usually
  cast), ids and masks;
- vision encoder at a chunk of C frames (C = all frames unless `vision_chunk_frames`): the live tensors of the
  widest step (patch embedding, one encoder layer's attention or MLP, the projector / merger, the model's own
  pooling, the adapter's pooling), plus what the encoder output keeps alive (the selected hidden state and the
  post-norm last hidden state on LLaVA; the pre-merger hidden state on Qwen);
- language model: the KV cache (2 x layers x kv_heads x head_dim x bytes per token), the widest step of one
  decoder layer at full prompt length (RMSNorm's float32 upcast, q/k RoPE temporaries, sdpa output and its
  transposed copy, the MLP's act(gate), up and their product = 3 x L x intermediate), the embeddings held by the
  model forward, RoPE cos/sin;
- logits for the last position only (generate's `logits_to_keep=1`, plus its float32 copy); `logits="all"` gives
  the L x vocab x bytes of a plain forward without logits_to_keep, `logits="all_fp32"` that plus a float32 copy
  (what older LLaVA code did on every prefill: `logits.float()` over the whole prompt).

Assumptions (what the numbers do not cover): batch 1, no padding, so sdpa runs without a materialised mask and
uses GQA natively (eager attention's L^2 x heads scores are not modelled: never usable at these lengths); memory-
efficient attention kernels (CPU flash, CUDA flash / mem-efficient) with O(L) workspace; no allocator caching or
fragmentation (CUDA's reserved memory is typically 5-15 % above allocated); the vision tower's hidden states other
than the selected layer are not kept (transformers 5.x keeps only the selected ones). Qwen-VL vision estimates
follow the 5.24 code but were checked less closely than the LLaVA family (see tests/test_profiling.py).
"""

from __future__ import annotations

import json
from functools import lru_cache

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import chunk_plan, count_tokens, pooled_shape
from longctx_adapter.ops.stages import FrameSizes, GridShape, parse_stages
from longctx_adapter.profiling.dtypes import dtype_bytes
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for

__all__ = [
    "KV_BITS",
    "estimate_ingestion",
    "estimate_memory",
    "max_frames",
    "param_bytes",
    "quantize_transient_bytes",
    "quantized_cache_kwargs",
    "quantized_kv_bytes_per_token",
]

#: widths the quantized cache backends offer (quanto: 2 and 4; hqq: 1 to 8)
KV_BITS = (2, 4, 8)
#: transformers' QuantizedCache defaults: tokens kept in full precision, values per quantization group
KV_RESIDUAL, KV_GROUP = 128, 64
#: the quantized-cache backends the estimator models
KV_BACKENDS = ("quanto", "hqq")
#: quantization scratch of one cache tensor, in copies of it: quanto (in the model dtype) and hqq on CPU (float32,
#: besides the float32 input); measured on one true-width 7B cache layer (benchmarks/estimator_check.py)
QUANTO_SCRATCH_COPIES, HQQ_SCRATCH_FLOAT32_COPIES = 2.25, 8


def quantized_cache_kwargs(bits: int, backend: str = "quanto") -> dict:
    """`generate` kwargs of transformers' quantized KV cache (optimum-quanto: 2 or 4 bits; hqq: 1 to 8)."""
    return {"cache_implementation": "quantized", "cache_config": {"backend": backend, "nbits": bits}}


@lru_cache(maxsize=64)
def _param_count(config_json: str, model_type: str) -> tuple[int, int]:
    """(parameters, buffer elements) of the model a config describes, counted on the meta device."""
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(model_type, **json.loads(config_json))
    cls = transformers.AutoModelForImageTextToText._model_mapping[type(config)]
    with torch.device("meta"):
        model = cls._from_config(config)
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for b in model.buffers())
    return params, buffers


def param_bytes(config, dtype="bfloat16") -> int:
    """Weight bytes of the model `config` describes (parameters in `dtype`; buffers counted as float32)."""
    data = config.to_dict()
    for key in ("transformers_version", "architectures", "_name_or_path", "model_type"):
        data.pop(key, None)
    params, buffers = _param_count(json.dumps(data, sort_keys=True, default=str), config.model_type)
    return params * dtype_bytes(dtype) + buffers * 4


def quantized_kv_bytes_per_token(config, bits: int, dtype="bfloat16", group: int = KV_GROUP) -> float:
    """Cache bytes per token of the quantized KV cache: `bits` per value plus one scale and one zero point (model
    dtype) per group of `group` values, for keys and values of every layer."""
    t = _text(getattr(config, "config", config))
    values = 2 * t["layers"] * t["kv_heads"] * t["head_dim"]
    return values * bits / 8 + values / group * 2 * dtype_bytes(dtype)


def _check_kv_backend(backend: str) -> None:
    if backend not in KV_BACKENDS:
        raise AdapterError(f"kv_backend must be one of {KV_BACKENDS}, got {backend!r}")


def quantize_transient_bytes(values: int, dtype="bfloat16", device: str = "cpu", backend: str = "quanto") -> int:
    """Peak scratch of quantizing one cache tensor of `values` values with one of transformers' quantized-cache
    backends; a layer's keys and values are quantized one after the other, so one scratch is live at a time.

    quanto (scale and shift per group from min/max, then round and pack): 2.25 copies of the tensor in the model
    dtype (4.5 bytes per value in bf16: 4.0-5.5 measured on a true-width 7B layer at 8k tokens, 4 and 2 bits, every
    kind of update; benchmarks/estimator_check.py). Assumed the same on CUDA (not measured).
    hqq (its proximal optimizer, hqq/core/optimize.py) works in float32: on CPU the float32 input (no copy when the
    model is float32) and 8 more float32 copies at once (36 bytes per value; 34.9-36.2 measured the same way): the
    previous step's W_q and W_r, the new W_q and W_r, the error, its shrunk copy, and the zero-point update's
    temporaries. On CUDA (not measured) the steps run in float16: the float32 input plus about 9 float16 copies."""
    _check_kv_backend(backend)
    if backend == "quanto":
        return int(values * QUANTO_SCRATCH_COPIES * dtype_bytes(dtype))
    if str(device).split(":")[0] == "cuda":
        return values * (4 + 9 * 2)
    return values * ((0 if dtype_bytes(dtype) == 4 else 4) + 4 * HQQ_SCRATCH_FLOAT32_COPIES)


def _text(config):
    t = config.text_config
    heads = t.num_attention_heads
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // heads
    return {
        "hidden": t.hidden_size,
        "inter": t.intermediate_size,
        "layers": t.num_hidden_layers,
        "heads": heads,
        "kv_heads": getattr(t, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab": t.vocab_size,
    }


def _stages(adapter_config):
    if adapter_config is None:
        return None, None
    data = adapter_config if isinstance(adapter_config, dict) else adapter_config.to_dict()
    pooling = data.get("pooling")
    return (tuple(pooling) if pooling else None), data.get("vision_chunk_frames")


def estimate_memory(
    config,
    frames: int,
    adapter_config=None,
    *,
    dtype="bfloat16",
    frame_size=None,
    text_tokens: int = 34,
    attn: str = "sdpa",
    prefill_chunk_size: int | None = None,
    logits: str = "last",
    device: str = "cpu",
    vision_hidden_states: str = "selected",
    kv_bits: int | None = None,
    kv_backend: str = "quanto",
    kv_offload: bool = False,
    streamed: bool = False,
) -> dict:
    """Peak bytes per stage of `generate()` on one video of `frames` frames; see the module docstring.

    config: an HF config (or a model, whose .config is used). adapter_config: None (stock model), an AdapterConfig or
    its dict. device: "cpu" adds CPU-only kernel scratch (bilinear on NCHW). vision_hidden_states: "selected"
    (transformers 5.x keeps only the feature layer) or "all" (older code: every vision layer's output is kept
    during the vision stage). kv_bits: transformers' quantized KV cache (`cache_implementation="quantized"`) with
    this many bits (see `quantized_kv_bytes_per_token`) and backend (`kv_backend`, "quanto" as `generate`'s
    default; its quantization scratch is `quantize_transient_bytes`). kv_offload: the offloaded cache, which keeps two layers'
    keys and values on the device (the one in use and the one prefetched) and the rest in host memory
    (`kv_host_bytes`). Returns token counts, component bytes and `{vision,prefill,decode}_peak_bytes`, `peak_bytes`.
    With a stage that keeps tokens chosen from the features (`merge_temporal`, `segment_density`) the visual token
    count, and every size built on it, is an upper bound (`visual_tokens_exact` False). streamed: the video comes
    through `encode_video` (frame-local stages at `vision_chunk_frames`): the vision stage holds one chunk's pixels
    (`estimate_ingestion`), and no pixels stay alive through prefill and decoding.
    """
    if kv_bits is not None and kv_offload:
        raise AdapterError("kv_bits and kv_offload are two cache implementations; choose one")
    _check_kv_backend(kv_backend)
    if kv_bits is not None and kv_bits not in KV_BITS:
        raise AdapterError(f"kv_bits must be one of {KV_BITS} (the quantized cache backends' widths), got {kv_bits!r}")
    config = getattr(config, "config", config)
    if attn == "eager":
        raise AdapterError("the estimator models sdpa/flash attention; eager attention (L^2 scores) is not modelled")
    if logits not in ("last", "all", "all_fp32"):
        raise AdapterError(f"logits must be 'last', 'all' or 'all_fp32', got {logits!r}")
    b = dtype_bytes(dtype)
    stages, chunk = _stages(adapter_config)
    kind = config.model_type
    cpu = str(device).split(":")[0] == "cpu"
    family = family_for(kind) if kind in MODEL_TYPE_TO_PATCH else None
    if family is None or family.cost is None:
        raise AdapterError(f"no memory model for model_type {kind!r}")
    if family.cost.kind == "tower":
        vis = _tower_vision(config, family, frames, stages, chunk, b, cpu=cpu, hidden=vision_hidden_states)
    else:
        vis = _patch_vision(config, family, frames, stages, chunk, b, frame_size)
    if streamed:
        _check_streamed(family, config, stages, chunk)
        vis["pixels"] = _chunk_pixel_bytes(vis, b)  # the vision stage's pixels: one chunk, gone after ingestion
        vis["peak"] = vis["stream_peak"]

    t = _text(config)
    h, inter, kvh, hd = t["hidden"], t["inter"], t["kv_heads"], t["head_dim"]
    seq = text_tokens + vis["extra_text"] + vis["tokens_after"]
    weights = param_bytes(config, dtype)
    ids = 3 * seq * 8 * 2  # input_ids, attention_mask (+ token types), caller's and rewritten
    kv_token = 2 * t["layers"] * kvh * hd * b
    kv = kv_token * seq
    kv_layer = 2 * kvh * hd * b * seq
    kv_host = 0
    kv_work = kv_work_later = 0  # cache-implementation transients on top of one layer's step (first / later update)
    if kv_bits is not None:
        # stored: every token quantized (plus a residual window of up to KV_RESIDUAL tokens in full precision);
        # each update dequantizes the layer, concatenates the new tokens and re-quantizes the whole layer
        # (measured on a true-width 7B cache layer: benchmarks/estimator_check.py). Keys and values are quantized one
        # after the other, so one tensor's optimizer scratch is live at a time. A later update (prefill chunk after the
        # first, decode) also holds the dequantized layer beside the concatenated keys and values it returns (the
        # concatenation is the one-layer copy counted below as for any cache); decode counts the step that flushes
        # the residual window into the quantized part (every KV_RESIDUAL tokens), its largest.
        kv_token = quantized_kv_bytes_per_token(config, kv_bits, dtype)
        kv = int(kv_token * seq) + KV_RESIDUAL * 2 * t["layers"] * kvh * hd * b
        kv_work = quantize_transient_bytes(kvh * hd * seq, dtype, device, kv_backend)
        kv_work_later = kv_layer + kv_work
    elif kv_offload:
        kv_host = kv
        kv = 2 * kv_layer  # the layer in use and the next one, prefetched

    # ---- prefill: what stays alive from the vision stage, then the widest step of the last decoder layer
    q_len = min(seq, prefill_chunk_size) if prefill_chunk_size else seq
    held = weights + (0 if streamed else vis["pixels"]) + ids + vis["kept"] + vis["features"]
    embeds = seq * h * b  # inputs_embeds, alive through the whole decoder stack
    rope = 2 * q_len * hd * b + q_len * hd * 4 * 2  # cos/sin in dtype + their float32 source
    rms = 8 * q_len * h  # RMSNorm upcast: float32 copy and its square
    attention = q_len * h * b * 5 + 2 * q_len * kvh * hd * b * 3 + kv_layer * (1 if not prefill_chunk_size else 2)
    # two moments of one attention step: the cache update (after q/k/v; a quantized cache's scratch, and on a later
    # chunk the dequantized seq - q_len tokens already stored), then sdpa (with a mask, i.e. a later chunk: repeat_kv
    # copies + the bool mask). The update's scratch is freed before sdpa, so the step holds the larger of the two
    # (measured: a 4-bit cache adds nothing to a 256-token chunked prefill at 4-6 K tokens, estimator_check.py).
    update = kv_work + (kv_layer * (seq - q_len) // seq if kv_bits is not None and q_len < seq else 0)
    sdpa = 2 * seq * t["heads"] * hd * b + q_len * seq if prefill_chunk_size and q_len < seq else 0
    attention += max(update, sdpa)
    mlp = 2 * q_len * h * b + 3 * q_len * inter * b
    layer_peak = q_len * h * b + max(rms, attention, mlp)
    logits_bytes = {"last": t["vocab"] * (b + 4), "all": seq * t["vocab"] * b, "all_fp32": seq * t["vocab"] * (b + 4)}[
        logits
    ]
    prefill = held + embeds + rope + kv + max(layer_peak, logits_bytes + q_len * h * b)

    # ---- first decode step: the cache grows by one token (the cat copies one layer at a time)
    decode = held + kv + kv_token + kv_layer + kv_work_later + t["vocab"] * (b + 4) * 2 + 64 * h * b

    vision = weights + vis["pixels"] + ids + max(vis["peak"], vis["kept"] + vis["features"] + 2 * seq * h * b)
    return {
        "frames": frames,
        "visual_tokens_before": vis["tokens_before"],
        "visual_tokens_after": vis["tokens_after"],
        # False when a stage keeps tokens chosen from the features (merging): then every count here is an upper bound
        "visual_tokens_exact": not any(stage.data_dependent for stage in parse_stages(stages)),
        "seq_len": seq,
        "weights_bytes": weights,
        "pixels_bytes": vis["pixels"],
        "vision_activation_bytes": vis["peak"],
        "vision_kept_bytes": vis["kept"],
        "features_bytes": vis["features"],
        "kv_bytes": kv,
        "kv_bytes_per_token": kv_token,
        "kv_host_bytes": kv_host,
        "layer_activation_bytes": layer_peak,
        "logits_bytes": logits_bytes,
        "vision_peak_bytes": vision,
        "prefill_peak_bytes": prefill,
        "decode_peak_bytes": decode,
        "peak_bytes": max(vision, prefill, decode),
        "chunk_frames": vis["chunk"],
        "streamed": streamed,
    }


# ------------------------------------------------------------------------------------------------ ingestion

#: float32 copies of a chunk's pixels alive while an HF video processor runs (its normalized output and the batch
#: it stacks), besides the uint8 frames it was given; a patch processor (Qwen-VL) also holds its patchified copy
PROCESSOR_FLOAT_COPIES = 2


def _check_streamed(family, config, stages, chunk) -> None:
    if not stages or not chunk or family.split_video is None:
        raise AdapterError(
            "streamed ingestion needs pooling stages, vision_chunk_frames and a family encode_video supports"
        )
    step = family.temporal_patch(config)
    if chunk % step or not chunk_plan(stages, chunk // step)[0]:
        raise AdapterError(f"the pooling stages are not frame-local at vision_chunk_frames={chunk}: nothing streams")


def _chunk_pixel_bytes(vis: dict, b: int) -> int:
    """What one streamed chunk's pixels hold during encoding: the processor's float32 output, and its cast to the
    model dtype when that is not float32."""
    values = vis["chunk"] * vis["frame_values"]
    return values * 4 + (values * b if b != 4 else 0)


def estimate_ingestion(config, frames: int, adapter_config, *, streamed: bool, dtype="bfloat16", frame_size=None,
                       device: str = "cpu") -> dict:  # fmt: skip
    """Peak bytes of ingestion alone (frames -> processor -> vision encoder -> pooled features), weights excluded.

    One-shot: the decoded clip (uint8), the processor's float32 pixels of every frame (and their cast), then the
    vision stage of `estimate_memory` (chunked encoding at `vision_chunk_frames`). Streamed (`encode_video`): two
    chunks of uint8 frames (the one held back in case the last chunk must join it, and the one being gathered), the
    processor's float32 copies of one chunk, then one chunk's encoder activations plus the pooled features so far.
    Frames are assumed at the processor's input size (a larger source adds its uint8 frames and resize buffers).
    """
    config = getattr(config, "config", config)
    b = dtype_bytes(dtype)
    stages, chunk = _stages(adapter_config)
    family = family_for(config.model_type)
    if family.cost is None:
        raise AdapterError(f"no memory model for model_type {config.model_type!r}")
    if family.cost.kind == "tower":
        vis = _tower_vision(config, family, frames, stages, chunk, b, cpu=str(device).startswith("cpu"))
    else:
        vis = _patch_vision(config, family, frames, stages, chunk, b, frame_size)
    height, width = vis["frame_side"]
    copies = PROCESSOR_FLOAT_COPIES + (1 if family.cost.kind == "patches" else 0)
    if streamed:
        _check_streamed(family, config, stages, chunk)
        count = vis["chunk"]
        raw = 2 * count * height * width * 3
        pixels = _chunk_pixel_bytes(vis, b)
        processing = raw + count * height * width * 3 + copies * count * vis["frame_values"] * 4
    else:
        count = frames
        raw = frames * height * width * 3
        pixels = frames * vis["frame_values"] * (4 + (b if b != 4 else 0))
        processing = raw + frames * height * width * 3 + copies * frames * vis["frame_values"] * 4
    encoding = raw + pixels + (vis["stream_peak"] if streamed else vis["peak"])
    return {
        "frames": frames,
        "streamed": streamed,
        "frames_bytes": raw,
        "pixels_bytes": pixels,
        "processor_peak_bytes": processing,
        "encoder_peak_bytes": vis["stream_peak"] if streamed else vis["peak"],
        "features_bytes": vis["features"],
        "peak_bytes": max(processing, encoding),
    }


# ------------------------------------------------------------------------------------------------ LLaVA family


def _tower_vision(config, family, frames, stages, chunk, b, cpu: bool = True, hidden="selected") -> dict:
    """SigLIP/CLIP tower + 2-layer projector; the stock model shrinks the grid after the projector (OneVision) or
    before it (NeXT-Video), as the family's EncoderCost says."""
    cost = family.cost
    after_projector = cost.pools_after_projector
    v = config.vision_config
    h = config.text_config.hidden_size
    side = v.image_size // v.patch_size
    cls = 1 if cost.cls_token else 0  # CLIP prepends a CLS token
    n = side * side + cls
    d, i = v.hidden_size, v.intermediate_size
    c = min(frames, chunk or frames)
    if stages:
        local = c >= frames or chunk_plan(stages, c)[0]
    else:
        local = True
    _, grid, _ = family.video_grid(config, frames)  # the (square) grid the adapter pools
    tokens_before = family.stock_tokens(config, frames)
    tokens_after = count_tokens(frames, grid, grid, stages) + family.tail_tokens if stages else tokens_before
    stock_grid = tokens_before - family.tail_tokens  # the stock model's tokens per video, without its tail
    pixels = frames * 3 * v.image_size**2 * b

    N = c * n  # encoder tokens of one chunk
    # encoder: patch embedding (conv output + position add), attention (input, norm, q, k, v, sdpa out, its
    # transposed copy), MLP (residual, norm, fc1, activation); CLIP selects layer -2, kept during the last layer
    selected_extra = N * d * b if getattr(config, "vision_feature_layer", -1) != -1 else 0
    # (the layer's input stays referenced by the encoder loop, so the MLP step holds input, residual, norm, fc1, act)
    encoder = max(2 * N * d, 7 * N * d, 3 * N * d + 2 * N * i) * b + selected_extra
    kept_hidden = 2 * N * d * b  # the selected hidden state + last_hidden_state, held by the encoder output
    if hidden == "all":  # every layer's output (and the embeddings) kept until the features are projected
        encoder += v.num_hidden_layers * N * d * b
        kept_hidden = (v.num_hidden_layers + 2) * N * d * b
    P = tokens_after
    # streamed ingestion pools one chunk at a time: its pooling temporaries scale with the chunk's pooled tokens
    Pc = (count_tokens(c, grid, grid, stages) + family.tail_tokens) if stages and local else P
    stream_peak = None
    if after_projector:
        proj = kept_hidden + 2 * N * h * b  # linear_1 out + activation (then activation + linear_2 out)
        if stages is None:  # stock: bilinear 2x on a contiguous NCHW copy, then cat with the newline
            pooled = stock_grid * h * b
            # CPU's bilinear kernel on NCHW input with many channels works on a channels-last copy plus an output-
            # sized buffer (measured: transient = input + output); CUDA's kernel reads NCHW in place
            scratch = N * h * b + pooled if cpu else 0
            post = kept_hidden + 2 * N * h * b + pooled + scratch
            post = max(post, kept_hidden + 2 * pooled)
        else:  # adapter: identity pooling, cat with the newline, then the adapter's pooling and two cats
            biggest_group = _op_scratch_tokens(stages, c, side) * h * b
            post = kept_hidden + 2 * N * h * b
            post_chunk = max(post, kept_hidden + N * h * b + biggest_group + 2 * Pc * h * b)
            post = max(post, kept_hidden + N * h * b + biggest_group + 2 * P * h * b)
            stream_peak = max(encoder, proj, post_chunk) + P * h * b
        chunk_peak = max(encoder, proj, post)
    else:
        # NeXT-Video: features (drop CLS: a view), 2x average pool (c x 144 x d), projector on pooled tokens
        Np = c * grid * grid
        pooled_in = Np * d * b
        proj = kept_hidden + pooled_in + 2 * Np * h * b
        chunk_peak = max(encoder, proj, kept_hidden + Np * h * b + (P * h * b * 3 if stages else 0))
        stream_peak = max(encoder, proj, kept_hidden + Np * h * b + Pc * h * b * 3) + P * h * b

    full = frames * n
    if chunk and stages:
        # chunked: one chunk's activations + all pooled tokens so far (or unpooled grids when not frame-local);
        # the encoder output is not kept (lean template), also when one chunk holds the whole video
        acc = P * h * b if local else (frames * grid * grid * h * b)
        peak = chunk_peak + acc
        kept = 0
    else:
        peak = chunk_peak
        kept = 2 * full * d * b  # stock / unchunked adapter keep the encoder output through prefill and decode
    features = (tokens_before if stages is None else P) * h * b
    return {
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
        "extra_text": 0,
        "pixels": pixels,
        "frame_values": 3 * v.image_size**2,  # pixel values of one input frame
        "frame_side": (v.image_size, v.image_size),
        "stream_peak": stream_peak,  # encode_video: one chunk's activations + the pooled features so far
        "peak": peak,
        "kept": kept,
        "features": features,
        "chunk": c,
    }


def _op_scratch_tokens(stages, frames, side) -> int:
    """Token vectors the largest pooling op holds beyond its input and output (e.g. progressive's same-stride
    gather), each stage on the grid it sees (frames of one size count as a grid, for stages that take frames)."""
    shape, most = GridShape(frames, side, side), 0
    for stage in parse_stages(stages):
        if isinstance(shape, FrameSizes):
            sizes = {size for count, size in shape.cycle if count}
            if not shape.exact or len(sizes) != 1:
                break
            ((height, width),) = sizes
            shape = GridShape(shape.frames, height, width)
        most = max(most, stage.scratch_tokens(shape))
        try:
            shape = stage.output_shape(shape)
        except AdapterError:  # a chunk shorter than a temporal window: the full video decides, not this estimate
            break
    return most


# ------------------------------------------------------------------------------------------------ Qwen-VL family


def _patch_vision(config, family, frames, stages, chunk, b, frame_size) -> dict:
    """ViT on patchified frames + merger (Qwen-VL), as the family's EncoderCost says."""
    cost = family.cost
    v = config.vision_config
    if frame_size is None:
        frame_size = family.frame_size
    height, width = frame_size
    p, merge, tp = v.patch_size, v.spatial_merge_size, v.temporal_patch_size
    hp, wp = height // p, width // p
    t = frames // tp
    tokens_before = family.stock_tokens(config, frames, frame_size)
    tokens_after = count_tokens(t, hp // merge, wp // merge, stages) if stages else tokens_before
    out_h = getattr(v, "out_hidden_size", None) or v.hidden_size
    d = getattr(v, "embed_dim", None) or v.hidden_size
    heads = v.num_heads
    mlp = cost.mlp_width(v)
    deepstack = len(getattr(v, "deepstack_visual_indexes", None) or [])
    c = min(frames, chunk or frames)
    ct = max(1, c // tp)
    N = ct * hp * wp  # patches of one chunk
    pixels = t * hp * wp * 3 * tp * p * p * b
    rope = 2 * N * (d // heads) * 4
    attention = (2 * N * d + 3 * N * d + 2 * N * d) * b + 4 * N * d * 4  # in, norm, qkv, out(+copy), fp32 rope q/k
    block = max(attention, (3 * N * d + N * mlp) * b)  # MLP: the residual, the norm's input and output + its width
    pos = N * d * b if cost.position_copy else 0
    merged = N // (merge * merge) * out_h * b
    encoder = rope + pos + block + deepstack * merged
    merger = rope + N * d * b * 3 + merged + deepstack * merged
    P = tokens_after
    # adapter pooling: the encoder output (pre-merger hidden + merged features) plus pooled copies
    pool = (N * d * b + merged * (1 + deepstack) + 3 * P * out_h * b * (1 + deepstack)) if stages else 0
    chunk_peak = max(encoder, merger, pool)
    Pc = count_tokens(ct, hp // merge, wp // merge, stages) if stages else P
    pool_chunk = (N * d * b + merged * (1 + deepstack) + 3 * Pc * out_h * b * (1 + deepstack)) if stages else 0
    stream_peak = max(encoder, merger, pool_chunk) + P * out_h * b * (1 + deepstack)
    full_n = t * hp * wp
    if chunk and stages:  # chunked: one chunk's activations + pooled tokens so far; lean template
        peak = chunk_peak + P * out_h * b * (1 + deepstack)
        kept = 0
    else:  # the encoder output (last_hidden_state, and the stock DeepStack features) stays referenced
        peak = chunk_peak
        kept = full_n * d * b + (0 if stages else full_n // (merge * merge) * out_h * b * deepstack)
    # vision start/end (Qwen3-VL: per block, with timestamp text); merging frames deletes blocks
    blocks = pooled_shape(t, hp // merge, wp // merge, stages).frames if stages else t
    extra_text = family.marker_tokens(blocks)
    features = (tokens_before if stages is None else P) * out_h * b * (1 + deepstack)
    return {
        "tokens_before": tokens_before,
        "tokens_after": tokens_after,
        "extra_text": extra_text,
        "pixels": pixels,
        "frame_values": hp * wp * 3 * p * p,  # pixel values of one input frame (a temporal patch holds tp frames)
        "frame_side": (height, width),
        "stream_peak": stream_peak,  # encode_video: one chunk's activations + the pooled features so far
        "peak": peak,
        "kept": kept,
        "features": features,
        "chunk": c,
    }


def max_frames(config, budget_bytes: float, adapter_config=None, *, step: int = 4, limit: int = 1 << 14, **kwargs):
    """The largest frame count (a multiple of `step`) whose estimated peak fits `budget_bytes`; 0 if none fits."""
    def fits(n):
        return estimate_memory(config, n, adapter_config, **kwargs)["peak_bytes"] <= budget_bytes

    if not fits(step):
        return 0
    lo, hi = 1, 2
    while hi * step <= limit and fits(hi * step):
        lo, hi = hi, hi * 2
    if hi * step > limit:
        return lo * step
    while hi - lo > 1:  # peak grows with frames: bisect between lo (fits) and hi (does not)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid * step) else (lo, mid)
    return lo * step
