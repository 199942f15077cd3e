"""Question scorer overhead as a fraction of the LMM prefill at 64 frames (CPU, random weights); prints Markdown.

    .venv/bin/python benchmarks/scorer_overhead.py [--frames 64] [--rounds 3] [--decoder-layers 1 2] [--skip-real]

Model: LLaVA-NeXT-Video (CLIP-L/336 tower; 64 frames -> 64 x 12 x 12 = 9,216 stock tokens) with prompt-guided
pooling to PPLLaVA's budget (`output` [16, 8, 8] = 1,024 tokens on the real grid; kernel [4, 2, 2] on the tiny one).

- tiny: `tiny.tiny_model("llava_next_video")` + `tiny_scorer.tiny_clip` (8x8 patches, 2 layers).
- real-size, truncated: `real_configs.real_model("llava-next-video-7b")` with its CLIP-L/336 tower cut to 1 layer and
  the 7B decoder cut to `--decoder-layers` (full-size embedding, projector and lm_head); scorer = CLIP-L/336
  geometry (vision 1024 wide, 1 layer; text 768 wide, 12 layers; projection 768), float32.

Per row: "prefill" = one adapted forward (logits_to_keep=1) *without* a question, where prompt_guided falls back to
conv3d average pooling, so it is the LMM's own encode + pool + decoder prefill; "guided" = the same call with a
question; "scorer" = time inside the scorer step of that call (text embedding, uncached, + scorer vision pass or
reuse of the tower's hidden states + score-map mapping), timed in place. Overhead = scorer / prefill. Two scorers:
"own pass" (a separate CLIP, so a second vision pass runs) and "reuse" (the scorer's vision weights are the LMM's
tower, so only post-layernorm + projection of the captured hidden states runs). Median of `--rounds` (default 2) after a warm-up; rows print as they finish.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from longctx_adapter import apply_adapter  # noqa: E402
from longctx_adapter.hooks.scorer import Scorer  # noqa: E402
from longctx_adapter.testing.tiny_scorer import clip_from_vision_tower, tiny_clip, tiny_scorer_tokenizer  # noqa: E402

QUESTION = "what color is the ball that moves across the table"


def _timed_guides(handle, sink: list):
    guidance = handle.guidance
    inner = guidance.guides

    def guides(*args, **kwargs):
        guidance.scorer._texts.clear()  # time the text tower too
        start = time.perf_counter()
        out = inner(*args, **kwargs)
        sink.append(time.perf_counter() - start)
        return out

    guidance.guides = guides


def _measure(model, inputs, pooling, scorer, rounds: int) -> dict:
    scorer_times: list[float] = []
    prefill, guided = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with apply_adapter(model, pooling=pooling, scorer=scorer) as handle, torch.no_grad():
            _timed_guides(handle, scorer_times)
            reuse = handle.guidance.reuse
            model(**inputs, logits_to_keep=1)  # warm-up
            model(**inputs, logits_to_keep=1, question=QUESTION)
            scorer_times.clear()
            for _ in range(rounds):
                start = time.perf_counter()
                model(**inputs, logits_to_keep=1)
                prefill.append(time.perf_counter() - start)
                start = time.perf_counter()
                model(**inputs, logits_to_keep=1, question=QUESTION)
                guided.append(time.perf_counter() - start)
            stats = handle.last_stats[0]
    scorer_times = [t for t in scorer_times[1::2]]  # calls with a question (the others return early)
    return {
        "reuse": reuse,
        "tokens": f"{stats['tokens_before']:,} -> {stats['tokens_after']:,}",
        "prefill": statistics.median(prefill),
        "guided": statistics.median(guided),
        "scorer": statistics.median(scorer_times),
    }


def _clip_l336(layers: int = 1):
    """CLIP ViT-L/14-336 geometry (openai/clip-vit-large-patch14-336): vision 1024/4096/16 heads/336 px/patch 14,
    text 768/3072/12 layers/12 heads/77 positions/vocab 49408, projection 768; random weights."""
    from transformers import CLIPConfig, CLIPModel
    from transformers import initialization as hf_init

    from longctx_adapter.profiling.sizes import fill_random_

    config = CLIPConfig(
        text_config=dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            vocab_size=49408,
            eos_token_id=3,
        ),
        vision_config=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=layers,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
        ),
        projection_dim=768,
    )
    with hf_init.no_init_weights():
        model = CLIPModel._from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    fill_random_(model, seed=1)
    return model.eval()


def tiny_rows(frames: int, rounds: int) -> list[dict]:
    from longctx_adapter.testing.tiny import hand_inputs, tiny_model

    model = tiny_model("llava_next_video", seed=0)
    inputs = hand_inputs("llava_next_video", frames, seed=1)
    pooling = {"type": "prompt_guided", "kernel": [4, 2, 2], "stride": [4, 2, 2]}
    rows = []
    for name, clip in (("own pass", tiny_clip(seed=3)), ("reuse", clip_from_vision_tower(model))):
        row = _measure(model, inputs, pooling, Scorer(clip, tiny_scorer_tokenizer()), rounds)
        rows.append({"case": f"tiny LLaVA-NeXT-Video + tiny CLIP ({name})", **row})
    return rows


def real_rows(frames: int, rounds: int, decoder_layers: list[int], emit=None) -> list[dict]:
    from longctx_adapter.profiling.sizes import real_model, video_inputs

    rows = []
    pooling = {"type": "prompt_guided", "output": [16, 8, 8]}
    clip = _clip_l336(layers=1)
    for layers in decoder_layers:
        model = real_model("llava-next-video-7b", layers=layers, vision_layers=1, dtype=torch.float32)
        inputs = video_inputs(model.config, frames, dtype=torch.float32)
        own = Scorer(clip, tiny_scorer_tokenizer())
        same = _clip_l336(layers=1)
        same.vision_model.load_state_dict(model.model.vision_tower.state_dict())
        for name, scorer in (("own pass", own), ("reuse", Scorer(same, tiny_scorer_tokenizer()))):
            row = _measure(model, inputs, pooling, scorer, rounds)
            case = f"7B LLaVA-NeXT-Video ({layers} decoder layer{'s' * (layers > 1)}, 1 CLIP-L layer) ({name})"
            rows.append({"case": case, **row})
            if emit is not None:
                emit(rows[-1])
        del model
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--decoder-layers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--skip-real", action="store_true")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"Scorer overhead at {args.frames} frames, CPU ({torch.get_num_threads()} threads), float32, median of "
          f"{args.rounds}\n")  # fmt: skip
    print("| case | visual tokens | prefill (no question) s | guided s | scorer step s | scorer / prefill |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = tiny_rows(args.frames, args.rounds)
    if not args.skip_real:
        rows += real_rows(args.frames, args.rounds, args.decoder_layers, emit=_emit)
    for r in rows:
        if not r.get("printed"):
            _emit(r)


def _emit(r: dict) -> None:
    r["printed"] = True
    print(
        f"| {r['case']}{'' if r['reuse'] == ('reuse' in r['case']) else ' (!)'} | {r['tokens']} | "
        f"{r['prefill']:.3f} | {r['guided']:.3f} | {r['scorer']:.3f} | {100 * r['scorer'] / r['prefill']:.1f} % |",
        flush=True,
    )


if __name__ == "__main__":
    main()
