"""Train a tiny video LM whose language window is ~5x its visual window (CPU, fixed seeds, minutes per seed).

    python -m longctx_adapter.eval.train_tiny_vcwe --seeds 0 1 2         # or: make train-tiny-vcwe
    python -m longctx_adapter.eval.train_tiny_vcwe --steps 20 --out /tmp/trial   # a quick trial

Same architecture and video tasks as the shipped control model (:mod:`longctx_adapter.eval.train_tiny`): a real
``LlavaOnevisionForConditionalGeneration`` from ``tiny_config("llava_onevision")``, videos of 4 to 8 frames only, so at
most 8 x 16 + 1 = 129 visual tokens (its *visual* window). After ``--video-first`` (400) video-only steps, every
step also trains on **text-only items of the same task family** (:mod:`longctx_adapter.eval.synthetic_text`) of 8 to
664 words, i.e. prompts of up to 672 tokens (its *language* window, 5.2x the visual one): half of each batch is
video, half text, and the longest text grows from 8 to 664 words over the first ``--curriculum`` (40 %) of those
steps. 5,000 steps of 16 items in all.
This is the situation the visual context window paper describes (an LMM trained on long text but short videos), in
miniature.

Targets are the answer word **and an end-of-answer token** (``</s>``, the generation config's EOS): the answer is
appended to the prompt and the loss is the cross-entropy of the answer at the last prompt position plus
``--eos-weight`` times that of EOS after the answer, so greedy ``generate`` stops by itself.

Why this schedule (seed-0 trials of 700 to 5,000 steps; a tiny model must first find the marker at all, and until it
does a task sits at chance): with text from the first step, one modality stayed near chance for 1,000-2,300 steps
(which one, and for how long, changed with small changes of the recipe); video first and then text from 64 words left
the text tasks at chance for 700 steps; EOS at weight 1 slowed the start of the video tasks. 400 video-only steps,
then text starting at 8 words and growing to 664, with EOS at weight 0.1, finds the markers in both modalities within
~200 steps; counting is learned last and needs the long low-learning-rate tail.

Writes one HF folder per seed (``<out>/seed<N>``) with ``train_summary.json``.
``--ship`` also copies seed 0 into ``longctx_adapter/models/tiny_video_lm_vcwe`` (package data: the shipped
visual-window model; ``make measure-tiny-vcwe`` with ``--write-preset`` then writes the configuration chosen on
validation beside it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import time

import numpy as np
import torch
import torch.nn.functional as F
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item
from longctx_adapter.eval.synthetic_text import PROMPT_EXTRA, make_text_item, text_batch_inputs

from longctx_adapter.testing.tiny import EOS_ID, tiny_config, tiny_processor, tiny_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(ROOT, "out", "tiny_vcwe")
SHIPPED_DIR = os.path.join(ROOT, "longctx_adapter", "models", "tiny_video_lm_vcwe")
TRAIN_STREAM = 2_000  # item seeds used for training: TRAIN_STREAM + seed (the control model used 1000 + seed)
HELDOUT_STREAM = 7  # item seed of the train-time check (never used in training)


def build_model(seed: int, layers: int = 2):
    """The control model's architecture (``tiny_config("llava_onevision")``) with ``layers`` decoder layers."""
    from transformers import LlavaOnevisionForConditionalGeneration

    config = tiny_config("llava_onevision", num_hidden_layers=layers)
    torch.manual_seed(seed)
    return LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def seed_dir(out: str, seed: int) -> str:
    return os.path.join(out, f"seed{seed}")


def answer_ids(tokenizer, items) -> torch.Tensor:
    return torch.tensor([tokenizer.convert_tokens_to_ids(it.answer) for it in items], dtype=torch.long)


def with_answer(inputs: dict, answers: torch.Tensor) -> dict:
    """The prompt with the answer appended (teacher forcing of answer -> EOS)."""
    out = dict(inputs)
    out["input_ids"] = torch.cat([inputs["input_ids"], answers[:, None]], dim=1)
    out["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(answers[:, None])], dim=1)
    return out


def answer_eos_loss(
    model, inputs: dict, answers: torch.Tensor, eos_weight: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of the answer (at the last prompt position) plus ``eos_weight`` times that of EOS (after the
    answer); and which answers were right."""
    logits = model(**with_answer(inputs, answers), logits_to_keep=2).logits
    eos = torch.full_like(answers, EOS_ID)
    loss = F.cross_entropy(logits[:, 0], answers) + eos_weight * F.cross_entropy(logits[:, 1], eos)
    return loss, logits[:, 0].argmax(-1) == answers


def video_batch(tokenizer, rng, stream: int, start: int, size: int, frames: int, task_p=None):
    tasks = rng.choice(len(TASKS), size=size, p=task_p)
    items = [make_item(TASKS[t], frames, stream, start + i) for i, t in enumerate(tasks)]
    return batch_inputs(items, tokenizer), answer_ids(tokenizer, items), [it.task for it in items]


def text_batch(tokenizer, rng, stream: int, start: int, size: int, words: int, task_p=None):
    tasks = rng.choice(len(TASKS), size=size, p=task_p)
    items = [make_text_item(TASKS[t], words, stream, start + i) for i, t in enumerate(tasks)]
    return text_batch_inputs(items, tokenizer), answer_ids(tokenizer, items), [it.task for it in items]


@torch.no_grad()
def accuracy(model, tokenizer, make, length: int, per_task: int, seed: int = HELDOUT_STREAM, batch: int = 32) -> dict:
    """First-token accuracy per task at one length (frames for videos, words for text), argmax over the vocabulary."""
    model.eval()
    result = {}
    for task in TASKS:
        correct = 0
        for start in range(0, per_task, batch):
            items = [make(task, length, seed, i) for i in range(start, min(per_task, start + batch))]
            inputs = batch_inputs(items, tokenizer) if make is make_item else text_batch_inputs(items, tokenizer)
            logits = model(**inputs, logits_to_keep=1).logits[:, -1]
            correct += int((logits.argmax(-1) == answer_ids(tokenizer, items)).sum())
        result[task] = correct / per_task
    return result


def make_optimizer(model, lr: float, weight_decay: float):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98)), params


def lr_schedule(lr: float, warmup: int, steps: int):
    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    return lr_at


def text_ceiling(args, step: int) -> int:
    """Longest text of a step: grows linearly from ``--min-words`` to ``--max-words`` over the first
    ``--curriculum`` share of the mixed steps (those after ``--video-first``; 0: the full range at once)."""
    ramp = args.curriculum * (args.steps - args.video_first)
    into = step - args.video_first
    if ramp <= 0 or into >= ramp:
        return args.max_words
    return args.min_words + int((args.max_words - args.min_words) * max(0, into) / ramp)


def train_one(args, seed: int, out: str, log=print) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = tiny_tokenizer()
    model = build_model(seed, args.layers)
    model.train()
    opt, params = make_optimizer(model, args.lr, args.weight_decay)
    lr_at = lr_schedule(args.lr, args.warmup, args.steps)
    rng = np.random.default_rng(seed)
    stream = TRAIN_STREAM + seed
    mixed_text = round(args.batch * args.text_share)
    task_p = np.asarray(args.task_weights, dtype=np.float64) / sum(args.task_weights)
    frame_choices = np.arange(args.min_frames, args.max_frames + 1)
    start = time.perf_counter()
    history, run = [], {"loss_video": 0.0, "loss_text": 0.0, "acc_video": 0.0, "acc_text": 0.0, "n": 0}
    hits = {}  # (kind, task) -> [right, seen] since the last log line
    video_index = text_index = 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        # Video only for the first --video-first steps, then video and text: two forwards of one length each (no
        # padding), gradients summed with their share of the batch as weight.
        n_text = mixed_text if step >= args.video_first else 0
        n_video = args.batch - n_text
        parts = []
        if n_video:
            frames = int(rng.choice(frame_choices))
            parts.append(("video", n_video, video_batch(tokenizer, rng, stream, video_index, n_video, frames, task_p)))
            video_index += n_video
        if n_text:
            words = int(rng.integers(args.min_words, text_ceiling(args, step) + 1))
            parts.append(("text", n_text, text_batch(tokenizer, rng, stream, text_index, n_text, words, task_p)))
            text_index += n_text
        for kind, size, (inputs, answers, tasks) in parts:
            loss, right = answer_eos_loss(model, inputs, answers, args.eos_weight)
            (loss * size / args.batch).backward()
            run[f"loss_{kind}"] += loss.item()
            run[f"acc_{kind}"] += float(right.float().mean())
            for task, r in zip(tasks, right.tolist()):
                hit = hits.setdefault(f"{kind}_{task}", [0, 0])
                hit[0] += int(r)
                hit[1] += 1
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run["n"] += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            n = run.pop("n")
            entry = {"step": step + 1, **{k: v / n for k, v in run.items()}, "lr": lr_at(step)}
            entry["acc_by_task"] = {k: round(h[0] / h[1], 3) for k, h in sorted(hits.items())}
            hits = {}
            entry["elapsed_s"] = time.perf_counter() - start
            history.append(entry)
            log(json.dumps({"seed": seed, **entry}))
            run = dict.fromkeys(run, 0.0) | {"n": 0}
    train_s = time.perf_counter() - start
    model.eval()
    check = {
        "video": {
            str(f): accuracy(model, tokenizer, make_item, f, args.eval_items)
            for f in (args.min_frames, args.max_frames)
        },
        "text": {
            str(w): accuracy(model, tokenizer, make_text_item, w, args.eval_items)
            for w in (args.min_words, args.max_words)
        },
    }
    log(json.dumps({"seed": seed, "heldout_accuracy": check}))
    out_rel = os.path.relpath(os.path.abspath(out), ROOT)
    summary = {
        "args": {**vars(args), "seed": seed, "out": out_rel if not out_rel.startswith("..") else out},
        "visual_window_tokens": args.max_frames * 16 + 1,
        "language_window_tokens": args.max_words + PROMPT_EXTRA,
        "train_seconds": train_s,
        "video_items_seen": video_index,
        "text_items_seen": text_index,
        "final": history[-1],
        "heldout_accuracy": check,
        "heldout_items_per_task": args.eval_items,
        "history": history,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}".strip(),
    }
    summary["args"].pop("seeds", None)
    summary["args"].pop("ship", None)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    tiny_processor("llava_onevision").save_pretrained(out)
    with open(os.path.join(out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def ship(folder: str, target: str = SHIPPED_DIR) -> None:
    """Copy a trained folder's files into the package folder, keeping the model card and adapter config there."""
    os.makedirs(target, exist_ok=True)
    for name in os.listdir(folder):
        if os.path.isfile(os.path.join(folder, name)):
            shutil.copy2(os.path.join(folder, name), os.path.join(target, name))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--out", default=DEFAULT_OUT, help="output folder: one subfolder seed<N> per seed (default out/tiny_vcwe)"
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds, one model each (default 0)")
    p.add_argument(
        "--ship", action="store_true", help="copy seed 0's folder into longctx_adapter/models/tiny_video_lm_vcwe"
    )
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--layers", type=int, default=2, help="decoder layers (the control model has 2)")
    p.add_argument("--batch", type=int, default=16, help="items per step, video and text together")
    p.add_argument("--text-share", type=float, default=0.5, help="share of each batch that is text-only items")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-frames", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=8)
    p.add_argument("--min-words", type=int, default=8)
    p.add_argument("--max-words", type=int, default=664)
    p.add_argument(
        "--curriculum",
        type=float,
        default=0.4,
        help="share of the mixed steps over which the longest text grows from --min-words to --max-words",
    )
    p.add_argument(
        "--task-weights",
        type=float,
        nargs=3,
        default=[1.0, 1.0, 1.0],
        metavar=("COLOR", "ORDER", "COUNT"),
        help="how often each task is drawn (default: equally often)",
    )
    p.add_argument("--eos-weight", type=float, default=0.1, help="weight of the end-of-answer token's loss")
    p.add_argument("--video-first", type=int, default=400, help="steps of video-only batches before text joins")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-items", type=int, default=100, help="held-out items per task and length at the end")
    args = p.parse_args(argv)
    if not 0.0 <= args.text_share <= 1.0:
        p.error("--text-share must be between 0 and 1")
    if len(args.task_weights) != len(TASKS) or min(args.task_weights) < 0 or sum(args.task_weights) <= 0:
        p.error("--task-weights needs three weights >= 0 with a positive sum")
    if not 0 <= args.video_first <= args.steps:
        p.error("--video-first must be between 0 and --steps")
    if args.ship and 0 not in args.seeds:
        p.error("--ship copies seed 0: include 0 in --seeds")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    for seed in args.seeds:
        out = seed_dir(args.out, seed)
        train_one(args, seed, out)
        if args.ship and seed == 0:
            ship(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
