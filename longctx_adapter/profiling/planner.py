"""The least-compressing configuration whose estimated peak fits a memory size (`longctx-adapter plan`).

Candidates are tried from least to most compressing, and the first whose analytic peak (`estimate.py`) fits the
usable memory wins:

1. the stock model;
2. the stock model with chunked prefill (`generate(..., prefill_chunk_size=PREFILL_CHUNK)`);
3. pooling schedules from mild to strong: the spatial levels of the budget stage's ladder (progressive pooling, key
   frames at stride 2, the other frames at stride 2, 3, ... up to the frame grid), never more tokens than the stock
   model keeps, each with chunked vision encoding and chunked prefill, and streamed ingestion (`encode_video`, what
   `run` does for such configs: one chunk's pixels at a time) where the family supports it;
4. the same schedules with a quantized KV cache (4 bits, then 2 bits when allowed);
5. temporal merging (the ladder's last levels) with the most quantized KV cache allowed.

Usable memory is the given size less a reserve (default 10 %) for the CUDA context, the allocator's cache and
fragmentation, which the estimator does not model. Estimates are analytic: see docs/memory-24gb.md for how far they
were checked against measurements.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.ops.stages import GridShape
from longctx_adapter.profiling.estimate import KV_BITS, estimate_memory, quantized_cache_kwargs
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for

__all__ = ["PREFILL_CHUNK", "Plan", "auto_prefill_chunk", "frame_local_chunk", "parse_memory", "plan", "quantized_cache_kwargs"]

#: prompt tokens per prefill chunk when chunked prefill is on
PREFILL_CHUNK = 4096
#: frames per vision chunk the planner aims for (rounded up to what the pooling needs to stay frame-local)
VISION_CHUNK = 16
_UNITS = {"": 2**30, "g": 2**30, "gb": 2**30, "gib": 2**30, "m": 2**20, "mb": 2**20, "mib": 2**20, "t": 2**40,
          "tb": 2**40, "tib": 2**40}  # fmt: skip


def auto_prefill_chunk(prompt_tokens: int, setting="auto") -> int | None:
    """generate's prefill_chunk_size for a prompt: "auto" chunks at PREFILL_CHUNK tokens once the prompt is longer
    (below that one chunk is the whole prompt, so chunking saves nothing); "off"/None: never; an int: that size."""
    if setting is None or setting == "off":
        return None
    if setting == "auto":
        return PREFILL_CHUNK if prompt_tokens > PREFILL_CHUNK else None
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
        raise AdapterError(f"prefill chunk size must be 'auto', 'off' or a positive number of tokens, got {setting!r}")
    return setting


@dataclass(frozen=True)
class Plan:
    """One candidate: what to pass on, and what the estimator says it costs."""

    step: str
    adapter_config: dict | None
    prefill_chunk_size: int | None
    kv_bits: int | None
    peak_bytes: int
    visual_tokens: int
    fits: bool
    estimate: dict = field(repr=False, compare=False, default_factory=dict)
    streamed: bool = False  # the estimate assumes streamed ingestion (encode_video; `run` does it by itself)

    def generate_kwargs(self) -> dict:
        """Keyword arguments of `model.generate` this plan relies on."""
        out = {} if self.prefill_chunk_size is None else {"prefill_chunk_size": self.prefill_chunk_size}
        if self.kv_bits is not None:
            out.update(quantized_cache_kwargs(self.kv_bits))
        return out


def parse_memory(text) -> int:
    """'24GB', '24 GiB', '24', '24576MB' -> bytes. GPU sizes are quoted in binary units, so GB means GiB here."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
        if match is None or match.group(2).lower() not in _UNITS:
            raise AdapterError(f"memory {text!r} is not a size; write it like 24GB, 24GiB or 24576MB")
        value, unit = float(match.group(1)), match.group(2).lower()
    if value <= 0:
        raise AdapterError(f"memory must be positive, got {text!r}")
    return int(value * _UNITS[unit])


def _video_shape(config, family, frames: int) -> GridShape:
    return GridShape(*family.video_grid(config, frames, family.frame_size))


def frame_local_chunk(config, family, stages: list[dict], frames: int) -> int | None:
    """The smallest multiple of the temporal patch, at least VISION_CHUNK, at which the stages pool chunk by chunk."""
    from longctx_adapter.ops.pooling import chunk_plan

    if family.split_video is None:
        return None
    step = family.temporal_patch(config) if family.temporal_patch else 1
    for chunk in range(max(step, VISION_CHUNK - VISION_CHUNK % step), frames + step, step):
        if chunk >= VISION_CHUNK and chunk_plan(stages, chunk // step)[0]:
            return chunk if chunk < frames else None
    return None


def _levels(shape: GridShape, group: int = 4):
    """(kind, stages) of the budget ladder: 'spatial' levels then 'temporal' levels, mildest first."""
    key, strongest = min(2, shape.height, shape.width), min(shape.height, shape.width)

    def progressive(other):
        strides = [key] if other == key else [key, other]
        return {"type": "progressive", "group": group, "strides": strides, "mode": "bilinear"}

    for other in range(key, strongest + 1):
        yield "spatial", [progressive(other)]
    for merge in range(2, shape.frames + 1):
        yield "temporal", [{"type": "temporal", "kernel": merge, "stride": merge}, progressive(strongest)]


def plan(
    config,
    frames: int,
    memory,
    *,
    dtype: str = "bfloat16",
    reserve: float = 0.10,
    kv_bits: tuple[int, ...] = (4,),
    device: str = "cuda",
    text_tokens: int = 34,
    streamed: bool = True,
) -> tuple[Plan, list[Plan]]:
    """(the chosen plan, every candidate tried in order). Raises when nothing the ladder offers fits.

    config: an HF config of a supported family (e.g. `sizes.real_config("llava-onevision-7b")`). kv_bits: quantized
    KV widths allowed, tried in order (empty: never quantize the cache). streamed: estimate chunked pooled candidates
    with streamed ingestion (`encode_video`, what `run` does) where the family supports it; False: the caller feeds
    the whole video's pixels to `generate` (e.g. the profiler).
    """
    config = getattr(config, "config", config)
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise AdapterError(f"frames must be a positive integer, got {frames!r}")
    if not 0 <= reserve < 1:
        raise AdapterError(f"reserve must be a fraction in [0, 1), got {reserve!r}")
    for bits in kv_bits:
        if bits not in KV_BITS:
            raise AdapterError(f"KV bits {bits!r} not supported; use one of {KV_BITS}")
    if config.model_type not in MODEL_TYPE_TO_PATCH or family_for(config.model_type).cost is None:
        raise AdapterError(f"no memory model for model_type {config.model_type!r}; plan needs a supported family")
    family = family_for(config.model_type)
    usable = int(parse_memory(memory) * (1 - reserve))
    shape = _video_shape(config, family, frames)
    stock_tokens = family.stock_tokens(config, frames, family.frame_size)
    streams = streamed and family.split_video is not None  # encode_video's families
    tried: list[Plan] = []

    def attempt(step, stages, prefill, bits) -> Plan | None:
        adapter, streaming = None, False
        if stages is not None:
            adapter = {"pooling": stages, "vision_chunk_frames": frame_local_chunk(config, family, stages, frames)}
            streaming = adapter["vision_chunk_frames"] is not None and streams
        estimate = estimate_memory(
            config, frames, adapter, dtype=dtype, prefill_chunk_size=prefill, kv_bits=bits, device=device,
            text_tokens=text_tokens, streamed=streaming,
        )  # fmt: skip
        if adapter is not None:
            adapter = _full_config(config.model_type, adapter)
        if prefill is not None and estimate["seq_len"] <= prefill:
            return None  # one chunk: chunked prefill changes nothing
        candidate = Plan(step, adapter, prefill, bits, estimate["peak_bytes"], estimate["visual_tokens_after"],
                         estimate["peak_bytes"] <= usable, estimate, streaming)  # fmt: skip
        tried.append(candidate)
        return candidate if candidate.fits else None

    found = attempt("stock", None, None, None) or attempt("stock + chunked prefill", None, PREFILL_CHUNK, None)
    if found:
        return found, tried
    spatial, temporal, seen = [], [], set()
    for kind, stages in _levels(shape):
        tokens = count_tokens(shape.frames, shape.height, shape.width, stages)
        if tokens > stock_tokens or tokens in seen:
            continue  # never more tokens than the stock model; equal counts: the milder level already stands
        seen.add(tokens)
        (spatial if kind == "spatial" else temporal).append(stages)
    for bits in (None, *kv_bits):
        kv_text = f" + {bits}-bit KV" if bits else ""
        for stages in spatial:
            if found := attempt(f"pooling {_name(stages)}{kv_text}", stages, PREFILL_CHUNK, bits):
                return found, tried
    strongest_kv = min(kv_bits) if kv_bits else None
    kv_text = f" + {strongest_kv}-bit KV" if strongest_kv else ""
    for stages in temporal:  # linear: longer merges need longer vision chunks, so the peak is not monotone
        if found := attempt(f"pooling {_name(stages)}{kv_text}", stages, PREFILL_CHUNK, strongest_kv):
            return found, tried
    least = min(tried, key=lambda p: p.peak_bytes)
    raise AdapterError(
        f"nothing fits: the smallest estimated peak for {frames} frames is {least.peak_bytes / 2**30:.1f} GiB "
        f"({least.step}) and {memory} leaves {usable / 2**30:.1f} GiB after the {reserve:.0%} reserve; use fewer "
        f"frames, a larger memory size{'' if 2 in kv_bits else ', or allow 2-bit KV (--kv-bits 4,2)'}"
    )


def _full_config(model_type: str, adapter: dict) -> dict:
    """The family preset (RoPE settings) with the planned pooling and vision chunk."""
    from longctx_adapter.config import AdapterConfig

    return AdapterConfig.preset(model_type).replace(**adapter).to_dict()


def _name(stages: list[dict]) -> str:
    from longctx_adapter.ops.stages import stage_from_dict

    return "+".join(stage_from_dict(s).shorthand() or json.dumps(s) for s in stages)


def describe(chosen: Plan, tried: list[Plan], memory, reserve: float, frames: int) -> str:
    """The text `longctx-adapter plan` prints."""
    gib = 2**30
    lines = [f"{frames} frames, {memory} ({parse_memory(memory) * (1 - reserve) / gib:.1f} GiB usable after a "
             f"{reserve:.0%} reserve); estimated peaks (analytic):"]  # fmt: skip
    for candidate in tried:
        mark = "->" if candidate is chosen else "  "
        lines.append(f" {mark} {candidate.step:<48} {candidate.peak_bytes / gib:7.1f} GiB  "
                     f"{candidate.visual_tokens:>9,} visual tokens  {'fits' if candidate.fits else 'too big'}")  # fmt: skip
    lines.append(f"chosen: {chosen.step}")
    lines.append(f"estimated peak: {chosen.peak_bytes / gib:.1f} GiB; visual tokens: {chosen.visual_tokens:,}")
    lines.append(f"adapter config (--config): {json.dumps(chosen.adapter_config) if chosen.adapter_config else 'none'}")
    kwargs = chosen.generate_kwargs()
    lines.append(f"generate kwargs: {json.dumps(kwargs) if kwargs else '{}'}")
    if chosen.streamed:
        chunk = chosen.adapter_config["vision_chunk_frames"]
        lines.append(f"ingestion: streamed, {chunk} frames at a time (run does it; in Python: encode_video)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- CLI


def _fraction(text: str) -> float:
    """--reserve: a share of the memory in [0, 1)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1, got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value


def add_plan_arguments(parser) -> None:
    from longctx_adapter.eval.arguments import dtype_choice, positive_int

    parser.add_argument("--model", required=True, help="real-size preset (e.g. llava-onevision-7b) or a local HF "
                        "checkpoint/config folder")  # fmt: skip
    parser.add_argument("--frames", type=positive_int, required=True, help="frames of the video")
    parser.add_argument("--memory", required=True, help="accelerator memory, e.g. 24GB (binary units: GB = GiB)")
    parser.add_argument("--reserve", type=_fraction, default=0.10, help="fraction kept free for the CUDA context, the "
                        "allocator cache and fragmentation (default 0.10)")  # fmt: skip
    parser.add_argument("--kv-bits", default="4", help="quantized KV widths allowed, tried in order, e.g. 4 or 4,2; "
                        "'none' never quantizes the cache (default 4)")  # fmt: skip
    parser.add_argument("--dtype", default="bf16", type=dtype_choice(), help="bf16 | fp16 | fp32 (default bf16)")
    parser.add_argument("--json", action="store_true", help="print the chosen plan as JSON only")


def run_plan_cli(args) -> int:
    from longctx_adapter.profiling.dtypes import dtype_name
    from longctx_adapter.profiling.profiler import _configs, _source

    kv_text = str(args.kv_bits).strip().lower()
    try:
        bits = () if kv_text == "none" else tuple(int(v) for v in kv_text.split(",") if v.strip())
    except ValueError:
        raise AdapterError(f"--kv-bits must be 'none' or widths such as 4 or 4,2, got {args.kv_bits!r}") from None
    kind, source = _source(args.model)
    config = _configs(kind, source, None, None, None)[0]
    chosen, tried = plan(config, args.frames, args.memory, dtype=dtype_name(args.dtype), reserve=args.reserve,
                         kv_bits=bits)  # fmt: skip
    if args.json:
        print(json.dumps({"step": chosen.step, "peak_bytes": chosen.peak_bytes, "visual_tokens": chosen.visual_tokens,
                          "adapter_config": chosen.adapter_config, "generate_kwargs": chosen.generate_kwargs(),
                          "streamed": chosen.streamed}))  # fmt: skip
    else:
        print(describe(chosen, tried, args.memory, args.reserve, args.frames))
    return 0
