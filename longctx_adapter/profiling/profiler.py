"""Memory and time of long-video inference, stage by stage, measured or extrapolated, next to an analytic estimate.

    rows = longctx_adapter.profile("llava-onevision-7b", frames=[8, 16], configs=["none", "progressive:2,8,4"],
                                   layers=1, dtype="bf16")
    write_outputs(rows, "out/")        # table.md, rows.csv, rows.json, memory.png

One row per (frames, adapter config). Each row runs `generate(max_new_tokens=2)` on one synthetic video (hand-built
inputs with the stock placeholder count, pixels in the model dtype) and splits it into three stages at hooks:

- `vision`: from the call to the first language-model forward (vision tower, projector, pooling, placeholder
  rewrite, embedding splice);
- `prefill`: the language model over the whole prompt (every chunk with `prefill_chunk_size`), lm_head on the last
  position, first token;
- `decode`: the first decode step (one token with the KV cache).

Per stage: peak memory, wall time. Per row: visual tokens before/after pooling, sequence length, KV-cache bytes
measured from the cache after prefill (`.layers[i].keys/.values`) and analytic (2 x layers x kv_heads x head_dim x
bytes x length), weights, and the estimator's figures (`estimate.py`).

How memory is measured:
- CUDA: `torch.cuda.max_memory_allocated()` with `reset_peak_memory_stats()` at every stage boundary (tensor bytes,
  allocator cache excluded); rows run in this process one after another (`empty_cache()` between rows).
- CPU: every row runs in a fresh interpreter (`fresh.py`), so rows do not contaminate each other. Peaks are the
  kernel's resident-set high-water mark `VmHWM` of /proc/self/status, reset at every stage boundary by writing "5" to
  /proc/self/clear_refs (Linux >= 4.0); where that file is missing or not writable (macOS, some containers) a thread
  samples the resident set every 0.5 ms instead (`rss_method` in the row says which; see `memory.py`). The worker
  runs with glibc `MALLOC_MMAP_THRESHOLD_=1 MiB`, so every tensor above 1 MiB is its own mapping and returns to the
  OS when freed: RSS then follows live tensors, the CPU analogue of max_memory_allocated. Reported CPU peaks are RSS
  minus the runtime's RSS (`runtime_rss_bytes`: Python, torch, transformers, measured before the model is built,
  plus what a first 2-frame generate() of the row's own model leaves behind), so they count model tensors only.

Truncated real-size models (`layers=N`, `vision_layers=M` on a preset): the run uses N decoder / M vision layers at
true width. Reported full-depth figures are `run + (estimate(full depth) - estimate(run depth))` for memory and
`run + (missing layers) x (measured mean time per layer)` for time; such rows say `method: extrapolated`, untruncated
runs `measured`, rows that only ran the estimator (`measure=False`) `estimated`. `*_run` columns keep what the
truncated run itself measured.

Adapter configs the model class does not support yet (AdapterError from apply_adapter) give rows with
`status: "unavailable: ..."`; the stock row of the same model is still measured.
"""

from __future__ import annotations

import csv
import json
import os
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

from longctx_adapter import config_text
from longctx_adapter.config import AdapterConfig
from longctx_adapter.errors import AdapterError
from longctx_adapter.eval.arguments import device_name, dtype_choice, positive_int
from longctx_adapter.profiling.dtypes import dtype_name, torch_dtype
from longctx_adapter.profiling.estimate import estimate_memory, quantized_cache_kwargs
from longctx_adapter.profiling.memory import memory_probe

__all__ = [
    "STAGES",
    "default_configs",
    "parse_config",
    "plot_memory",
    "profile",
    "to_markdown",
    "write_csv",
    "write_json",
    "write_outputs",
]

STAGES = ("vision", "prefill", "decode")
GIB = 1024**3
_MMAP_THRESHOLD = str(1 << 20)


# ---------------------------------------------------------------------------------------------------- configs


def parse_config(spec, model_type: str | None = None, folder=None) -> tuple[str, dict | None]:
    """(label, AdapterConfig dict or None for the stock model) from any form of the config grammar
    (longctx_adapter.config_text, docs/configuration.md): `none`, `preset`, `saved`, shorthands joined with '+'
    (`progressive:2,8,4+yarn-visual+chunk:16+lastlogits`), JSON text or a .json file, a dict or an AdapterConfig.
    The label is the text as given (JSON of a dict)."""
    if spec is None:
        return "none", None
    if isinstance(spec, AdapterConfig):
        label = spec.to_json()
    elif isinstance(spec, Mapping):
        label = json.dumps(dict(spec), sort_keys=True)
    else:
        label = str(spec).strip()
    config = config_text.parse_config(spec, model_type, folder=folder)
    if config is None and label.lower() == "stock":
        label = "none"
    return label, None if config is None else config.to_dict()


def default_configs(model) -> list[str]:
    """`profile` without --config: the stock model, then the folder's saved config if `model` is a folder with
    one, else progressive:2,8,4."""
    return ["none", "saved" if config_text.saved_config_path(model) is not None else "progressive:2,8,4"]


# ---------------------------------------------------------------------------------------------------- stages


def kv_cache_bytes(cache) -> int:
    """Bytes held by the keys and values of a transformers Cache (what grows with visual tokens); a quantized
    cache's layers count their quantized tensors and every tensor of their metadata (scales, zero points) too."""
    total = 0
    for layer in getattr(cache, "layers", None) or []:
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            total += _tensor_bytes(getattr(layer, name, None))
    return total


def _tensor_bytes(value) -> int:
    """Bytes of the tensors in `value`: a tensor, or tuples / lists / dicts of them (hqq keeps (tensor, meta)).

    A wrapper tensor subclass (quanto's packed 4-bit tensors) reports its logical dtype's size; its storage is the
    tensors it flattens to (`__tensor_flatten__`), counted instead."""
    if isinstance(value, (tuple, list)):
        return sum(_tensor_bytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    import torch

    flatten = getattr(value, "__tensor_flatten__", None)
    if flatten is not None and type(value) is not torch.Tensor:
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(value, name)) for name in names)
    if hasattr(value, "numel") and hasattr(value, "element_size"):
        return value.numel() * value.element_size()
    return 0


def _layer_lists(model):
    """(decoder layers, vision layers) ModuleLists of an HF VLM."""
    inner = model.model
    decoder = inner.language_model.layers
    tower = getattr(inner, "vision_tower", None) or getattr(inner, "visual", None)
    vision = None
    for name, module in tower.named_modules():
        if name.rsplit(".", 1)[-1] in ("layers", "blocks") and hasattr(module, "__len__"):
            vision = module
            break
    return decoder, vision


class _StageRecorder:
    """Hooks that cut one generate() into vision / prefill / decode and time every decoder and vision layer."""

    def __init__(self, model, probe):
        self.model, self.probe = model, probe
        self.stage = None
        self.marks: dict[str, dict] = {}
        self.kv_bytes = None
        self.seq_len = None
        self.layer_s = {}  # "decoder:prefill" / "vision:vision" ... -> seconds inside those layers
        self._handles = []
        self._cache = None
        self._t0 = None
        self._layer_start = {}

    # stage bookkeeping
    def _enter(self, stage):
        now = self._now()
        if self.stage is not None:
            self.marks[self.stage] = {"peak": self.probe.peak(), "seconds": now - self._t0}
        self.probe.reset()
        self.stage, self._t0 = stage, self._now()

    def _now(self):
        self.probe.sync()
        return time.perf_counter()

    def start(self):
        self._enter("vision")

    def stop(self):
        self._enter(None)

    def _lm_pre(self, module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        length = embeds.shape[1] if embeds is not None else None
        if self.stage == "vision":
            self._enter("prefill")
        elif self.stage == "prefill" and length == 1 and self._cache is not None:
            self.kv_bytes = kv_cache_bytes(self._cache)
            self.seq_len = int(self._cache.get_seq_length())
            self._enter("decode")

    def _lm_post(self, module, args, kwargs, output):
        if self.stage == "prefill":
            self._cache = getattr(output, "cache", None) or getattr(output, "past_key_values", None)

    def _layer_pre(self, kind):
        def hook(module, args):
            self._layer_start[id(module)] = self._now()

        return hook

    def _layer_post(self, kind):
        def hook(module, args, output):
            key = f"{kind}:{self.stage}"
            self.layer_s[key] = self.layer_s.get(key, 0.0) + self._now() - self._layer_start.pop(id(module), self._now())

        return hook

    def __enter__(self):
        lm = self.model.model.language_model
        self._handles.append(lm.register_forward_pre_hook(self._lm_pre, with_kwargs=True))
        self._handles.append(lm.register_forward_hook(self._lm_post, with_kwargs=True))
        decoder, vision = _layer_lists(self.model)
        for kind, layers in (("decoder", decoder), ("vision", vision)):
            for layer in layers or []:
                self._handles.append(layer.register_forward_pre_hook(self._layer_pre(kind)))
                self._handles.append(layer.register_forward_hook(self._layer_post(kind)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._cache = None


# ---------------------------------------------------------------------------------------------------- one row


def _warm_kernels(device) -> None:
    """Touch the kernels every row uses (thread pools, BLAS, conv, sdpa) so their buffers are in the baseline."""
    import torch
    import torch.nn.functional as F

    x = torch.randn(64, 64, device=device)
    for dtype in (torch.float32, torch.bfloat16):
        y = x.to(dtype)
        (y @ y).sum().item()
        q = y.view(1, 4, 16, 64)
        F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().item()
        F.conv2d(y.view(1, 1, 64, 64), y[:3, :3].reshape(1, 1, 3, 3)).sum().item()
        F.interpolate(y.view(1, 1, 64, 64), size=(7, 7), mode="bilinear").sum().item()
        F.layer_norm(y, (64,)).sum().item()
        F.gelu(y, approximate="tanh").sum().item()


def _row_inputs(model, spec: dict, frames: int, device):
    from longctx_adapter.profiling.sizes import video_inputs

    return video_inputs(
        model.config, frames, spec.get("frame_size"), text_before=spec["text_before"], text_after=spec["text_after"],
        dtype=torch_dtype(spec["dtype"]), device=device, seed=spec["seed"],
    )


_GENERATE = {"max_new_tokens": 2, "min_new_tokens": 2, "do_sample": False}


def _warm_generate(model, spec: dict, device) -> None:
    """One stock generate() of the row's own model on a few of the row's text tokens (no video: cheap at any
    size), so that lazily imported generation code and its first-call allocations are in place, and in the
    baseline, before anything is measured. The vision kernels are warmed by `_warm_kernels`."""
    import torch

    ids = _row_inputs(model, spec, 2, device)["input_ids"]
    text = ids[:, : spec["text_before"]] if spec["text_before"] else ids[:, ids.shape[1] - spec["text_after"] :]
    if text.shape[1] == 0:
        return
    with torch.inference_mode():
        model.generate(input_ids=text, attention_mask=torch.ones_like(text), **_GENERATE)


def _build(spec: dict):
    import transformers

    from longctx_adapter.profiling.sizes import preset, real_config, real_model

    dtype = torch_dtype(spec["dtype"])
    source = spec["model"]
    if spec["kind"] == "preset":
        p = preset(source)
        config = real_config(p.name, spec["layers"], spec["vision_layers"])
        transformers.AutoModelForImageTextToText._model_mapping[type(config)]  # import the modeling module first
        return config, lambda: real_model(
            p.name, spec["layers"], spec["vision_layers"], dtype=dtype, device=spec["device"],
            attn_implementation=spec["attn"], seed=spec["seed"],
        )
    config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
    cls = transformers.AutoModelForImageTextToText._model_mapping[type(config)]

    def load():
        if spec.get("load_weights"):
            return cls.from_pretrained(
                source, dtype=dtype, attn_implementation=spec["attn"], local_files_only=True, device_map=spec["device"]
            ).eval()
        import torch
        from transformers import initialization as hf_init

        from longctx_adapter.profiling.sizes import fill_random_

        with hf_init.no_init_weights(), torch.device(spec["device"]):
            model = cls._from_config(config, dtype=dtype, attn_implementation=spec["attn"])
        fill_random_(model, seed=spec["seed"])
        return model.eval()

    return config, load


def _measure_row(spec: dict, model=None) -> dict:
    """Run one row (in a fresh process on CPU); returns the measured fields or a status explaining why not."""
    import torch

    from longctx_adapter import apply_adapter

    device = torch.device(spec["device"])
    probe = memory_probe(device)
    out = {"status": "ok", "rss_method": probe.method if device.type == "cpu" else None}
    try:
        _warm_kernels(device)
        if model is None:  # CPU rows in a fresh process: the baseline is the runtime, without the weights
            _, load = _build(spec)
            before = probe.current()
            model = load()
            loaded = probe.current()
            _warm_generate(model, spec, device)
            runtime = before + probe.current() - loaded  # what the first generate() added belongs to the runtime
        else:
            _warm_generate(model, spec, device)
            runtime = 0 if device.type == "cuda" else probe.current()
        out["runtime_rss_bytes"] = runtime if device.type == "cpu" else None
        out["weights_bytes_run"] = sum(p.numel() * p.element_size() for p in model.parameters())
        handle = None
        if spec["config"] is not None:
            try:
                handle = apply_adapter(model, spec["config"])
            except AdapterError as err:
                out["status"] = f"unavailable: {err}"
                return out
        try:
            inputs = _row_inputs(model, spec, spec["frames"], device)
            out["visual_tokens_before"] = int((inputs["input_ids"] == model.config.video_token_id).sum())
            gen = dict(_GENERATE)
            if spec.get("prefill_chunk_size"):
                gen["prefill_chunk_size"] = spec["prefill_chunk_size"]
            if spec.get("kv_bits"):
                gen.update(quantized_cache_kwargs(spec["kv_bits"], spec.get("kv_backend", "quanto")))
            gen.update(spec.get("generate_kwargs") or {})  # e.g. a quantized cache (benchmarks/estimator_check.py)
            with torch.inference_mode(), _StageRecorder(model, probe) as rec:
                rec.start()
                model.generate(**inputs, **gen)
                rec.stop()
            stats = list(handle.last_stats) if handle is not None else []
        finally:
            if handle is not None:
                handle.remove()
        pooled = [s for s in stats if s.get("pooled")]
        out["visual_tokens_after"] = sum(s["tokens_after"] for s in pooled) if pooled else out["visual_tokens_before"]
        out["seq_len"] = rec.seq_len
        out["kv_bytes_measured"] = rec.kv_bytes
        for stage in STAGES:
            mark = rec.marks.get(stage, {})
            peak = mark.get("peak")
            out[f"{stage}_peak_bytes_run"] = None if peak is None else peak - runtime
            out[f"{stage}_s_run"] = mark.get("seconds")
        out["layer_s"] = dict(rec.layer_s)
    except torch.OutOfMemoryError as err:  # CUDA OOM
        out["status"] = f"oom: {str(err).splitlines()[0]}"
    except MemoryError as err:
        out["status"] = f"oom: {err}"
    except Exception as err:  # a row that fails must not take the whole profile down
        out["status"] = f"error: {type(err).__name__}: {err}"
        out["traceback"] = traceback.format_exc(limit=6)
    finally:
        probe.close()
    return out


def _spawned(spec: dict) -> dict:
    """_measure_row in a fresh interpreter with glibc's mmap threshold at 1 MiB (see the module docstring)."""
    from longctx_adapter.profiling.fresh import FreshProcessError, run_fresh

    try:
        return run_fresh(_measure_row, (spec,), env={"MALLOC_MMAP_THRESHOLD_": _MMAP_THRESHOLD}, quiet=True)
    except FreshProcessError as err:
        killed = "oom: worker killed (SIGKILL, likely out of memory)"
        return {"status": killed if err.killed else f"error: worker exited {err.returncode}",
                "traceback": err.output_tail}


# ---------------------------------------------------------------------------------------------------- profile()


def _source(model_or_preset) -> tuple[str, str | None]:
    from longctx_adapter.profiling.sizes import PRESETS, preset

    if not isinstance(model_or_preset, (str, os.PathLike)):
        return "model", None
    text = str(model_or_preset)
    try:
        return "preset", preset(text).name
    except AdapterError:
        if Path(text).exists():
            return "path", text
        raise AdapterError(
            f"{text!r} is neither a real-size preset ({sorted(PRESETS)}) nor a local path to an HF config/checkpoint"
        ) from None


def profile(
    model_or_preset,
    frames: Sequence[int] = (8, 16, 32),
    configs: Sequence = ("none",),
    *,
    layers: int | None = None,
    vision_layers: int | None = None,
    dtype: str = "bf16",
    device: str | None = None,
    attn_implementation: str = "sdpa",
    frame_size: Sequence[int] | None = None,
    text_before: int = 14,
    text_after: int = 20,
    prefill_chunk_size: int | None = None,
    kv_bits: int | None = None,
    kv_backend: str = "quanto",
    measure: bool = True,
    measure_max_frames: int | None = None,
    load_weights: bool = False,
    seed: int = 0,
    progress=None,
) -> list[dict]:
    """Profile memory and time per stage for every (frames, config); see the module docstring for what and how.

    model_or_preset: a real-size preset name (`sizes.PRESETS`), a local HF checkpoint/config directory (random
        weights unless `load_weights=True`), or a model object (measured in this process, no truncation).
    configs: any form of the config grammar (`parse_config`: shorthands, `preset`, `saved` for a folder's
        longctx_adapter.json, JSON text or files), dicts or AdapterConfigs; "none" is the stock model.
    layers / vision_layers: truncate a preset's decoder / vision tower (vision_layers defaults to layers).
    kv_bits / kv_backend: generate with transformers' quantized KV cache (`estimate.quantized_cache_kwargs`), and
        estimate with the estimator's quantized-cache terms.
    measure: False gives estimator-only rows (`method: estimated`), e.g. for full size on a small machine;
        `measure_max_frames=N` measures rows up to N frames and estimates the longer ones.
    progress: optional callable(row) called after each row (the CLI drives its progress bar with it).
    """
    import torch

    kind, source = _source(model_or_preset)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype_name(dtype)
    frames = [int(f) for f in frames]
    if not frames or min(frames) < 1:
        raise AdapterError(f"frames must be positive integers, got {frames}")
    model_obj = model_or_preset if kind == "model" else None
    full_config, run_config, name = _configs(kind, source, model_obj, layers, vision_layers)
    folder = source if kind == "path" else None
    parsed = [parse_config(c, full_config.model_type, folder) for c in configs]

    base = {
        "kind": kind, "model": source, "layers": layers, "vision_layers": vision_layers, "dtype": dtype,
        "device": str(device), "attn": attn_implementation, "frame_size": list(frame_size) if frame_size else None,
        "text_before": text_before, "text_after": text_after, "prefill_chunk_size": prefill_chunk_size,
        "kv_bits": kv_bits, "kv_backend": kv_backend, "seed": seed, "load_weights": load_weights,
    }
    in_process = kind == "model" or torch.device(device).type == "cuda"
    rows = []
    try:
        for n in frames:
            for label, config in parsed:
                spec = {**base, "frames": n, "config": config}
                row = _row_header(name, full_config, run_config, spec, label)
                est_full = _safe_estimate(full_config, spec, config)
                est_run = _safe_estimate(run_config, spec, config)
                measured = None
                if measure and (measure_max_frames is None or n <= measure_max_frames):
                    measured = _measure_in_process(spec, model_obj) if in_process else _spawned(spec)
                _fill(row, measured, est_full, est_run, full_config, run_config)
                rows.append(row)
                if progress is not None:
                    progress(row)
    finally:
        _CUDA_MODELS.clear()  # a model built for CUDA rows is not kept past this call
    return rows


def _configs(kind, source, model_obj, layers, vision_layers):
    if kind == "preset":
        from longctx_adapter.profiling.sizes import real_config

        return real_config(source), real_config(source, layers, vision_layers), source
    if kind == "path":
        import transformers

        config = transformers.AutoConfig.from_pretrained(source, local_files_only=True)
        return config, config, source
    return model_obj.config, model_obj.config, type(model_obj).__name__


_CUDA_MODELS: dict = {}


def _measure_in_process(spec, model_obj):
    import gc

    import torch

    model = model_obj
    if model is None:  # CUDA rows of a preset/path: build once per (source, depth, dtype), reuse across rows
        key = (spec["model"], spec["layers"], spec["vision_layers"], spec["dtype"], spec["device"], spec["attn"])
        if key not in _CUDA_MODELS:
            _CUDA_MODELS.clear()
            gc.collect()
            torch.cuda.empty_cache()
            _, load = _build(spec)
            _CUDA_MODELS[key] = load()
        model = _CUDA_MODELS[key]
    gc.collect()
    if torch.device(spec["device"]).type == "cuda":
        torch.cuda.empty_cache()
    return _measure_row(spec, model)


def _row_header(name, full_config, run_config, spec, label) -> dict:
    text_full, vision_full = _depths(full_config)
    text_run, vision_run = _depths(run_config)
    return {
        "model": name,
        "model_type": full_config.model_type,
        "device": spec["device"],
        "dtype": spec["dtype"],
        "attn": spec["attn"],
        "frames": spec["frames"],
        "config": label,
        "config_json": json.dumps(spec["config"]) if spec["config"] is not None else None,
        "status": "ok",
        "method": None,
        "text_layers_run": text_run,
        "text_layers_full": text_full,
        "vision_layers_run": vision_run,
        "vision_layers_full": vision_full,
        "vision_chunk_frames": (spec["config"] or {}).get("vision_chunk_frames"),
        "prefill_chunk_size": spec["prefill_chunk_size"],
    }


def _depths(config) -> tuple[int, int]:
    vision = config.vision_config
    depth = getattr(vision, "num_hidden_layers", None)
    if depth is None:
        depth = getattr(vision, "depth", None)
    return int(config.text_config.num_hidden_layers), int(depth)


def _safe_estimate(config, spec, adapter_config):
    try:
        return estimate_memory(
            config, spec["frames"], adapter_config, dtype=spec["dtype"], frame_size=spec["frame_size"],
            text_tokens=spec["text_before"] + spec["text_after"], attn=spec["attn"],
            prefill_chunk_size=spec["prefill_chunk_size"], device=spec["device"], kv_bits=spec.get("kv_bits"),
            kv_backend=spec.get("kv_backend", "quanto"),
        )
    except AdapterError as err:
        return {"error": str(err)}


def _fill(row, measured, est_full, est_run, full_config, run_config) -> None:
    truncated = (row["text_layers_run"], row["vision_layers_run"]) != (row["text_layers_full"], row["vision_layers_full"])
    if "error" in est_full:
        row["status"] = f"unavailable: {est_full['error']}"
    else:
        row["visual_tokens_before"] = est_full["visual_tokens_before"]
        row["visual_tokens_after"] = est_full["visual_tokens_after"]
        row["seq_len"] = est_full["seq_len"]
        row["weights_bytes"] = est_full["weights_bytes"]
        row["kv_bytes_analytic"] = est_full["kv_bytes"]
        row["kv_bytes_analytic_run"] = est_run.get("kv_bytes")
        for stage in STAGES:
            row[f"{stage}_peak_bytes_est"] = est_full[f"{stage}_peak_bytes"]
        row["peak_bytes_est"] = est_full["peak_bytes"]
    if measured is None:
        row["method"] = "estimated"
        for stage in STAGES:
            row[f"{stage}_peak_bytes"] = row.get(f"{stage}_peak_bytes_est")
        row["peak_bytes"] = row.get("peak_bytes_est")
        return
    row["status"] = measured["status"] if measured["status"] != "ok" else row["status"]
    for key in ("rss_method", "runtime_rss_bytes", "weights_bytes_run", "kv_bytes_measured", "traceback"):
        if key in measured:
            row[key] = measured[key]
    if measured["status"] != "ok":
        row["method"] = "measured"
        return
    row["method"] = "extrapolated" if truncated else "measured"
    for key in ("visual_tokens_before", "visual_tokens_after", "seq_len"):
        row[key] = measured[key]  # what the model really did (the estimate's counts are kept when they agree)
    missing = {
        "decoder": row["text_layers_full"] - row["text_layers_run"],
        "vision": row["vision_layers_full"] - row["vision_layers_run"],
    }
    run_layers = {"decoder": max(1, row["text_layers_run"]), "vision": max(1, row["vision_layers_run"])}
    layer_s = measured.get("layer_s") or {}
    peaks = []
    for stage in STAGES:
        run_peak = measured.get(f"{stage}_peak_bytes_run")
        run_s = measured.get(f"{stage}_s_run")
        row[f"{stage}_peak_bytes_run"] = run_peak
        row[f"{stage}_s_run"] = run_s
        if run_peak is not None and truncated and "error" not in est_full and "error" not in est_run:
            run_peak = run_peak + est_full[f"{stage}_peak_bytes"] - est_run[f"{stage}_peak_bytes"]
        row[f"{stage}_peak_bytes"] = run_peak
        if run_s is not None and truncated:  # + missing layers x the mean time of a run layer in this stage
            for kind in ("decoder", "vision"):
                run_s += missing[kind] * layer_s.get(f"{kind}:{stage}", 0.0) / run_layers[kind]
        row[f"{stage}_s"] = run_s
        if run_peak is not None:
            peaks.append(run_peak)
    row["peak_bytes"] = max(peaks) if peaks else None


# ---------------------------------------------------------------------------------------------------- outputs


_CSV_COLUMNS = [
    "model", "model_type", "device", "dtype", "attn", "frames", "config", "status", "method",
    "visual_tokens_before", "visual_tokens_after", "seq_len",
    "vision_peak_bytes", "prefill_peak_bytes", "decode_peak_bytes", "peak_bytes",
    "vision_s", "prefill_s", "decode_s",
    "vision_peak_bytes_est", "prefill_peak_bytes_est", "decode_peak_bytes_est", "peak_bytes_est",
    "vision_peak_bytes_run", "prefill_peak_bytes_run", "decode_peak_bytes_run",
    "vision_s_run", "prefill_s_run", "decode_s_run",
    "weights_bytes", "weights_bytes_run", "kv_bytes_measured", "kv_bytes_analytic_run", "kv_bytes_analytic",
    "text_layers_run", "text_layers_full", "vision_layers_run", "vision_layers_full", "vision_chunk_frames",
    "prefill_chunk_size", "rss_method", "runtime_rss_bytes", "config_json",
]


def write_csv(rows: Sequence[dict], path) -> Path:
    path = Path(path)
    extra = sorted({k for r in rows for k in r} - set(_CSV_COLUMNS) - {"traceback"})
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_COLUMNS + extra, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    return path


def write_json(rows: Sequence[dict], path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(list(rows), indent=1, default=str) + "\n")
    return path


def _gib(value) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def _secs(value) -> str:
    return "" if value is None else f"{value:.2f}"


def to_markdown(rows: Sequence[dict]) -> str:
    """A Markdown table: one line per row, memory in GiB (full depth: measured/extrapolated, and estimated)."""
    header = [
        "frames", "config", "method", "visual tokens", "seq len", "vision GiB", "prefill GiB", "decode GiB",
        "peak GiB", "est. peak GiB", "KV GiB (meas. run / analytic full)", "vision s", "prefill s", "decode s",
        "status",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        tokens = ""
        if r.get("visual_tokens_before") is not None:
            tokens = f"{r['visual_tokens_before']:,} -> {r.get('visual_tokens_after', 0):,}"
        kv = f"{_gib(r.get('kv_bytes_measured'))} / {_gib(r.get('kv_bytes_analytic'))}"
        status = r.get("status", "")
        cells = [
            r["frames"], r["config"], r.get("method") or "", tokens,
            f"{r['seq_len']:,}" if r.get("seq_len") is not None else "",
            _gib(r.get("vision_peak_bytes")), _gib(r.get("prefill_peak_bytes")), _gib(r.get("decode_peak_bytes")),
            _gib(r.get("peak_bytes")), _gib(r.get("peak_bytes_est")), kv,
            _secs(r.get("vision_s")), _secs(r.get("prefill_s")), _secs(r.get("decode_s")),
            status if len(status) < 60 else status[:57] + "...",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_memory(rows: Sequence[dict], path, title: str | None = None, stages: bool = True) -> Path:
    """PNG: peak memory (GiB) vs frames, one line per adapter config.

    Filled markers: measured or extrapolated rows; hollow markers: estimator-only rows; dashed: the estimator for
    measured rows; dotted: the vision stage's peak.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    labels = list(dict.fromkeys(r["config"] for r in rows))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(labels):
        color = colors[i % len(colors)]
        mine = sorted((r for r in rows if r["config"] == label and r.get("status") == "ok"), key=lambda r: r["frames"])
        points = [(r["frames"], r["peak_bytes"] / GIB, r["method"]) for r in mine if r.get("peak_bytes") is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], "-", color=color, label=label)
            ran = [p for p in points if p[2] != "estimated"]
            guessed = [p for p in points if p[2] == "estimated"]
            if ran:
                ax.plot([p[0] for p in ran], [p[1] for p in ran], "o", color=color)
            if guessed:
                ax.plot([p[0] for p in guessed], [p[1] for p in guessed], "o", color=color, markerfacecolor="white")
        est = [(r["frames"], r["peak_bytes_est"] / GIB) for r in mine
               if r.get("peak_bytes_est") is not None and r.get("method") != "estimated"]
        if est:
            ax.plot(*zip(*est), "--", color=color, alpha=0.6, linewidth=1)
        if stages:
            vis = [(r["frames"], r["vision_peak_bytes"] / GIB) for r in mine if r.get("vision_peak_bytes") is not None]
            if vis:
                ax.plot(*zip(*vis), ":", color=color, alpha=0.8, linewidth=1)
    frames = sorted({r["frames"] for r in rows})
    if len(frames) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(frames)
    ax.set_xticklabels([str(f) for f in frames])
    ax.set_xlabel("frames")
    ax.set_ylabel("peak memory (GiB)")
    first = rows[0] if rows else {}
    ax.set_title(title or f"{first.get('model', '')} {first.get('dtype', '')} on {first.get('device', '')}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.text(
        0.01, 0.01,
        "filled: measured / extrapolated; hollow: estimated; dashed: estimator; dotted: vision stage peak",
        fontsize=7,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(rows: Sequence[dict], out_dir, title: str | None = None) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "table.md"
    table.write_text(to_markdown(rows))
    return {
        "table": table,
        "csv": write_csv(rows, out / "rows.csv"),
        "json": write_json(rows, out / "rows.json"),
        "png": plot_memory(rows, out / "memory.png", title=title),
    }


def fits(rows_or_estimates, budget_bytes: float) -> int | None:
    """The largest frame count among rows whose peak fits `budget_bytes` (None if none does)."""
    ok = [r["frames"] for r in rows_or_estimates if r.get("peak_bytes") is not None and r["peak_bytes"] <= budget_bytes]
    return max(ok) if ok else None



# ---------------------------------------------------------------------------------------------------- CLI


def add_profile_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="real-size preset (e.g. llava-onevision-7b) or a local HF path")
    parser.add_argument("--frames", default="8,16,32", help="comma-separated frame counts (default 8,16,32)")
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="SPEC",
        help="adapter config, repeatable (grammar: docs/configuration.md): none | preset | saved | a JSON config "
        "or stage | a .json file | shorthands joined with '+', e.g. progressive:2,8,4+yarn-visual+chunk:16. "
        "Default: none and, for a model folder with a saved longctx_adapter.json, that saved config (it wins over "
        "the preset), else none and progressive:2,8,4",
    )
    parser.add_argument("--layers", type=positive_int, default=None,
                        help="decoder layers to run (truncate; default: all)")
    parser.add_argument(
        "--vision-layers", type=positive_int, default=None, help="vision layers to run (default: same as --layers)"
    )
    parser.add_argument("--dtype", default="bf16", type=dtype_choice(), help="bf16 | fp16 | fp32 | fp64 (default bf16)")
    parser.add_argument("--device", default=None, type=device_name,
                        help="cpu | cuda[:i] (default: cuda if available)")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (default sdpa)")
    parser.add_argument("--frame-size", default=None, help="HxW pixels per frame (Qwen-VL; default 448x448)")
    parser.add_argument("--prefill-chunk-size", type=positive_int, default=None,
                        help="generate's prefill_chunk_size")
    parser.add_argument("--estimate-only", action="store_true", help="run only the analytic estimator")
    parser.add_argument(
        "--measure-max-frames", type=positive_int, default=None,
        help="measure up to this many frames, estimate beyond"
    )
    parser.add_argument("--weights", action="store_true", help="load real weights from a local --model path")
    parser.add_argument("--title", default=None, help="plot title")
    parser.add_argument("--out", required=True, help="output directory")


def run_profile_cli(args) -> int:
    from tqdm import tqdm

    from longctx_adapter.eval.arguments import check_model_folder, parse_frames, require_matplotlib

    require_matplotlib("profile")  # memory.png comes at the end: refuse before measuring anything
    frames = parse_frames(args.frames)
    if os.path.exists(args.model):  # a local folder (else a real-size preset name, checked by profile())
        check_model_folder(args.model)
    configs = args.config or default_configs(args.model)
    frame_size = None
    if args.frame_size:
        parts = args.frame_size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise AdapterError(f"--frame-size expects HxW in pixels, e.g. 448x448, got {args.frame_size!r}")
        frame_size = [int(x) for x in parts]
    total = len(frames) * len(configs)
    with tqdm(total=total, desc="profile", unit="row") as bar:

        def progress(row):
            bar.set_postfix_str(f"{row['frames']} frames, {row['config']}: {row.get('status')}")
            bar.update(1)

        rows = profile(
            args.model,
            frames=frames,
            configs=configs,
            layers=args.layers,
            vision_layers=args.vision_layers,
            dtype=args.dtype,
            device=args.device,
            attn_implementation=args.attn,
            frame_size=frame_size,
            prefill_chunk_size=args.prefill_chunk_size,
            measure=not args.estimate_only,
            measure_max_frames=args.measure_max_frames,
            load_weights=args.weights,
            progress=progress,
        )
    paths = write_outputs(rows, args.out, title=args.title)
    print(to_markdown(rows))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0
