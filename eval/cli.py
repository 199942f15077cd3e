"""The evaluation subcommands of ``longctx-adapter``: ``run``, ``niah`` and ``ablate`` (parsers and handlers)."""

from __future__ import annotations

import argparse
import sys

from longctx_adapter.eval.arguments import (
    check_model_folder,
    device_name,
    dtype_choice,
    non_negative_int,
    positive_float,
    positive_int,
    require_matplotlib,
)

from longctx_adapter.errors import AdapterError

__all__ = ["ablation_bases", "add_ablate_parser", "add_niah_parser", "add_run_parser"]

_CONFIG_HELP = (
    "adapter config (grammar: docs/configuration.md): preset | saved | none (stock model) | a JSON config or stage | "
    "a .json file | shorthands joined with '+', e.g. progressive:2,8,4+yarn-visual+chunk:8. Default: the model "
    "folder's saved longctx_adapter.json (it wins over the preset), else the family preset"
)
_ABLATE_CONFIG_HELP = (
    "base config of the grid, repeatable (one set of cells per base; same grammar as run --config: preset | saved | "
    "none | JSON | .json file | shorthands joined with '+'). Each --grid axis replaces that field of the base. "
    "Default: the model folder's saved longctx_adapter.json (it wins over everything else), else none (the stock "
    "model)"
)


def _model_options(parser) -> None:
    parser.add_argument("--model", required=True, metavar="PATH", help="local checkpoint folder (config, weights, "
                        "processor files), e.g. one written by save_pretrained")
    parser.add_argument("--dtype", default="auto", type=dtype_choice("auto"), help="auto (checkpoint dtype on GPU, float32 on CPU), bf16, fp16, "
                        "fp32 or their torch names (bfloat16, ...)")
    parser.add_argument("--device", default="auto", type=device_name, help="auto, cpu, cuda, cuda:1 ... (under accelerate launch: each "
                        "process's own device)")
    parser.add_argument("--visual-window", type=positive_int, default=None, metavar="N",
                        help="visual training window in tokens for the RoPE shorthands (default: the family preset)")
    parser.add_argument("--backend", choices=("pyav", "decord", "torchcodec"), default="pyav",
                        help="video decoder (decord / torchcodec must be installed)")


# ----------------------------------------------------------------------------------------------- run


def add_run_parser(sub) -> argparse.ArgumentParser:
    run = sub.add_parser(
        "run",
        help="answer a question about a video with a local checkpoint, streaming the answer",
        description="Load a local checkpoint and its processor, sample frames from the video, apply the adapter, "
        "stream the answer, then print what the adapter did (frames, visual tokens before/after, RoPE factor, peak "
        "memory).",
    )
    _model_options(run)
    run.add_argument("--video", required=True, metavar="FILE", help="video file (anything PyAV/FFmpeg reads)")
    run.add_argument("--question", required=True, help="the question")
    sampling = run.add_mutually_exclusive_group()
    sampling.add_argument("--frames", type=positive_int, default=32,
                          help="frames sampled uniformly (default 32; capped at the video's frame count, with a "
                          "warning)")
    sampling.add_argument("--fps", type=positive_float, default=None, help="sample at this rate instead (see --max-frames)")
    run.add_argument("--max-frames", type=positive_int, default=None, help="cap on frames with --fps (only)")
    run.add_argument("--config", default=None, help=_CONFIG_HELP)
    run.add_argument("--max-new-tokens", type=positive_int, default=None,
                     help="longest answer in tokens (default: the checkpoint's generation_config max_new_tokens "
                     "when it sets one, else 128); generation also stops at the model's end token")
    run.add_argument("--prefill-chunk-size", default="auto", metavar="N|auto|off",
                     help="prefill the prompt N tokens at a time (lower peak memory on long prompts); auto (default): "
                     "4096 once the prompt is longer than that; off: one pass")
    run.add_argument("--no-stream", dest="stream", action="store_false",
                     help="preprocess the whole clip at once instead of streaming it a chunk of frames at a time "
                     "(streaming is used when the pooling is frame-local and the backend is pyav)")
    run.set_defaults(func=_run)
    return run


def _run(args) -> int:
    from longctx_adapter.eval.runner import run_question

    if args.max_frames is not None and args.fps is None:  # it would be ignored: --frames is the count itself
        raise AdapterError("--max-frames caps --fps sampling; without --fps, give the frame count with --frames")
    run_question(
        args.model, args.video, args.question, frames=args.frames, fps=args.fps, max_frames=args.max_frames,
        config=args.config, visual_window=args.visual_window, max_new_tokens=args.max_new_tokens, dtype=args.dtype,
        device=args.device, backend=args.backend, prefill_chunk_size=_chunk_setting(args.prefill_chunk_size),
        stream=args.stream,
    )
    return 0


def _chunk_setting(text: str):
    text = str(text).strip().lower()
    if text in ("auto", "off"):
        return text
    try:
        return int(text)
    except ValueError:
        raise AdapterError(f"--prefill-chunk-size must be auto, off or a number of tokens, got {text!r}") from None


# ----------------------------------------------------------------------------------------------- niah


def add_niah_parser(sub) -> argparse.ArgumentParser:
    niah = sub.add_parser(
        "niah",
        help="offline V-NIAH: generate a needle-in-a-video-haystack dataset, export videos, plot heatmaps",
        description="Offline V-NIAH. 'generate' writes a synthetic dataset (haystack + needle specs + annotations "
        "JSONL); evaluate it with 'longctx-adapter ablate --dataset DIR' (heatmaps come with the summary); 'export' "
        "writes one video per item and frame count; 'plot' draws the depth x frames heatmap from results.jsonl.",
    )
    actions = niah.add_subparsers(dest="niah_command", required=True)
    gen = actions.add_parser("generate", help="write a V-NIAH dataset")
    gen.add_argument("--out", required=True, metavar="DIR")
    gen.add_argument("--items", type=positive_int, default=None, help="items (default: one per depth)")
    gen.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1] (default 0,0.25,...,1)")
    gen.add_argument("--haystack-frames", type=positive_int, default=64, help="frames of the haystack video (default 64)")
    gen.add_argument("--size", type=positive_int, default=64, help="frame side in pixels (default 64)")
    gen.add_argument("--options", type=positive_int, default=4, help="options per question (default 4)")
    gen.add_argument("--distractors", type=non_negative_int, default=0, help="distractor needles per item (default 0)")
    gen.add_argument("--seed", type=non_negative_int, default=0)
    gen.add_argument("--format", choices=("npy", "mp4"), default="npy", help="haystack storage (default npy)")
    gen.set_defaults(func=_niah_generate)
    exp = actions.add_parser("export", help="write every item at every frame count as a video + annotations")
    exp.add_argument("--dataset", required=True, metavar="DIR")
    exp.add_argument("--frames", required=True, help="frame counts, e.g. 8,16,32")
    exp.add_argument("--out", default=None, metavar="DIR", help="default DIR/videos")
    exp.add_argument("--format", choices=("npy", "mp4"), default="mp4")
    exp.set_defaults(func=_niah_export)
    plot = actions.add_parser("plot", help="depth x frames heatmap from ablate results")
    plot.add_argument("--results", required=True, metavar="JSONL", help="results.jsonl of an ablate run")
    plot.add_argument("--out", required=True, metavar="PNG")
    plot.add_argument("--config", default=None, help="config label to plot (default: the first)")
    plot.add_argument("--value", choices=("correct", "gen_correct"), default="correct")
    plot.set_defaults(func=_niah_plot)
    return niah


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AdapterError(f"expected numbers separated by ',', got {text!r}") from None


def _niah_generate(args) -> int:
    from longctx_adapter.eval.niah import write_niah

    path = write_niah(args.out, args.items, haystack_frames=args.haystack_frames, size=args.size,
                      video_format=args.format, seed=args.seed, depths=_floats(args.depths),
                      num_options=args.options, distractors=args.distractors)
    print(f"wrote {path}")
    return 0


def _niah_export(args) -> int:
    from longctx_adapter.eval.arguments import parse_frames
    from longctx_adapter.eval.niah import export_videos

    path = export_videos(args.dataset, parse_frames(args.frames), args.out, video_format=args.format)
    print(f"wrote {path}")
    return 0


def _niah_plot(args) -> int:
    from pathlib import Path

    from longctx_adapter.eval.ablate import _read_jsonl
    from longctx_adapter.eval.niah import plot_heatmap

    require_matplotlib("niah plot")
    if not Path(args.results).is_file():
        raise AdapterError(f"results file not found: {args.results} (pass the results.jsonl an ablate run wrote)")
    records = [r for r in _read_jsonl(Path(args.results)) if r.get("depth") is not None]
    if not records:
        raise AdapterError(f"{args.results} holds no V-NIAH results")
    label = args.config or records[0]["config"]
    subset = [r for r in records if r["config"] == label]
    if not subset:
        raise AdapterError(f"no results for config {label!r}; labels: {sorted({r['config'] for r in records})}")
    print(f"wrote {plot_heatmap(subset, args.out, title=f'V-NIAH: {label}', value=args.value)}")
    return 0


# ----------------------------------------------------------------------------------------------- ablate


def add_ablate_parser(sub) -> argparse.ArgumentParser:
    ablate = sub.add_parser(
        "ablate",
        help="evaluate a grid of adapter configs x frame counts on a local dataset (one model load, resumable)",
        description="Evaluate every (item, frames, config) of a grid in one model load. Results go to "
        "OUT/results.jsonl as they are computed; rerunning the same command continues where it stopped. Writes "
        "OUT/summary.md (table), summary.json, accuracy.png and, for V-NIAH, heatmaps. Under 'accelerate launch "
        "--num_processes N' items are split across processes and the results merged.",
    )
    _model_options(ablate)
    ablate.add_argument("--dataset", required=True, metavar="PATH",
                        help="our JSONL file or folder (incl. V-NIAH), Video-MME parquet/JSON, MVBench or MLVU json/ "
                        "folder")
    ablate.add_argument("--kind", choices=("auto", "jsonl", "niah", "videomme", "mvbench", "mlvu"), default="auto",
                        help="dataset format (auto: JSONL folder/file, .parquet = Video-MME)")
    ablate.add_argument("--video-dir", default=None, metavar="DIR", help="video folder of a public benchmark")
    ablate.add_argument("--tasks", default=None, help="MVBench/MLVU tasks to keep (comma-separated)")
    ablate.add_argument("--limit", type=positive_int, default=None, help="first N items only")
    ablate.add_argument("--frames", default="32", help="frame counts, e.g. 32,64,128 (default 32)")
    ablate.add_argument("--fps", type=positive_float, default=None, help="sample at this rate, --frames being the cap")
    ablate.add_argument("--config", action="append", default=None, metavar="CONFIG", help=_ABLATE_CONFIG_HELP)
    ablate.add_argument("--grid", action="append", default=[], metavar="AXIS=V1,V2",
                        help="an axis of the grid: pooling=none,progressive:2,8,4 or rope=none,yarn-all,yarn-visual "
                        "(values in the config grammar; repeat for each axis; default: the base config alone, or "
                        "pooling=none without one)")
    ablate.add_argument("--mode", choices=("loglik", "generate", "both"), default="loglik",
                        help="loglik: teacher-forced option likelihood; generate: greedy answer + matching")
    ablate.add_argument("--target", choices=("letter", "text", "both"), default="letter",
                        help="what loglik scores per option: ' A', ' <option text>' or ' A. <text>'")
    ablate.add_argument("--reduce", choices=("sum", "mean"), default="sum", help="loglik: sum or mean log-prob")
    ablate.add_argument("--max-new-tokens", type=positive_int, default=16,
                        help="generate: tokens per answer (default 16)")
    ablate.add_argument("--out", required=True, metavar="DIR")
    ablate.add_argument("--no-progress", action="store_true")
    ablate.set_defaults(func=_ablate)
    return ablate


def ablation_bases(configs, model_path, model_type, visual_window=None):
    """(label, config) bases of an ablation: each --config, else the folder's saved config, else None (stock)."""
    from longctx_adapter.config_text import parse_config, saved_config_path

    if configs:
        return [(text, parse_config(text, model_type, folder=model_path, visual_window=visual_window))
                for text in configs]
    if saved_config_path(model_path) is not None:
        return [("saved", parse_config("saved", model_type, folder=model_path, visual_window=visual_window))]
    return None


def _ablate(args) -> int:
    from accelerate import PartialState
    from longctx_adapter.eval.ablate import run_ablation, summarize, to_markdown
    from longctx_adapter.eval.arguments import parse_frames
    from longctx_adapter.eval.configs import check_cells, expand_grid
    from longctx_adapter.eval.datasets import load_dataset
    from longctx_adapter.eval.runner import load_model
    from transformers import AutoConfig

    # Everything that can be refused is refused before the model loads and before any unit runs.
    require_matplotlib("ablate")  # the summary plots come at the end of the run
    frames = parse_frames(args.frames)
    model_type = check_model_folder(args.model)
    bases = ablation_bases(args.config, args.model, model_type, args.visual_window)
    cells = expand_grid(args.grid, model_type, args.visual_window, bases)
    check_cells(cells, AutoConfig.from_pretrained(args.model), frames)  # each config against this model's sizes
    tasks = args.tasks.split(",") if args.tasks else None
    items = load_dataset(args.dataset, args.kind, args.video_dir, tasks=tasks, limit=args.limit)
    import torch

    # Under a torchrun-style launcher (accelerate launch --multi_gpu / torchrun) on a CPU-only run, tell accelerate
    # to use gloo over CPU processes (it would otherwise look for GPUs and run every process as rank 0).
    cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)
    device = state.device if state.num_processes > 1 and args.device == "auto" else args.device
    model, processor = load_model(args.model, dtype=args.dtype, device=device)
    records = run_ablation(model, processor, items, frames, cells, args.out, mode=args.mode, target=args.target,
                           reduce=args.reduce, max_new_tokens=args.max_new_tokens, progress=not args.no_progress,
                           fps=args.fps, backend=args.backend)
    if state.is_main_process:
        sys.stdout.write(to_markdown(summarize(records, [c.label for c in cells])))
        print(f"results: {args.out}/results.jsonl, summary: {args.out}/summary.md")
    return 0
