"""Train the shipped tiny video LM from scratch on short synthetic videos (CPU, fixed seed, minutes).

    python -m longctx_adapter.eval.train_tiny            # or: make train-tiny
    python -m longctx_adapter.eval.train_tiny --steps 200 --out /tmp/trial   # a quick trial

The model is a real ``LlavaOnevisionForConditionalGeneration`` (SigLIP vision tower, 2-layer MLP projector,
Qwen2 decoder with RoPE) built from ``longctx_adapter.testing.tiny.tiny_config("llava_onevision")``: 28 px frames,
patch 4 -> 7x7 grid, bilinear 2x -> 16 tokens per frame, plus one newline per video. It is trained on the
synthetic QA of :mod:`longctx_adapter.eval.synthetic_qa` with videos of ``--min-frames`` to ``--max-frames``
frames only (default 4..8: at most 8 x 16 + 1 = 129 visual tokens, the model's *visual training window*).
Loss: cross-entropy of the answer word at the last prompt position (teacher forcing on the answer token only).

Writes the HF folder (config.json, model.safetensors, tokenizer and processor files) plus
``train_summary.json`` (arguments, time, losses, held-out accuracy at the training lengths).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item

from longctx_adapter.testing.tiny import tiny_config, tiny_processor, tiny_tokenizer

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "longctx_adapter", "models", "tiny_video_lm"
)
TRAIN_STREAM = 1_000  # item seeds used for training: TRAIN_STREAM + seed
HELDOUT_STREAM = 7  # item seed of held-out evaluation (never used in training)


def build_model(seed: int):
    from transformers import LlavaOnevisionForConditionalGeneration

    config = tiny_config("llava_onevision")
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    return model


def answer_ids(tokenizer, items) -> torch.Tensor:
    return torch.tensor([tokenizer.convert_tokens_to_ids(it.answer) for it in items], dtype=torch.long)


@torch.no_grad()
def accuracy(model, tokenizer, frames: int, per_task: int, seed: int = HELDOUT_STREAM, batch: int = 32) -> dict:
    """Held-out accuracy per task at one frame count (argmax over the whole vocabulary)."""
    model.eval()
    result = {}
    for task in TASKS:
        correct = 0
        for start in range(0, per_task, batch):
            items = [make_item(task, frames, seed, i) for i in range(start, min(per_task, start + batch))]
            logits = model(**batch_inputs(items, tokenizer), logits_to_keep=1).logits[:, -1]
            correct += int((logits.argmax(-1) == answer_ids(tokenizer, items)).sum())
        result[task] = correct / per_task
    return result


def train(args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = tiny_tokenizer()
    model = build_model(args.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    rng = np.random.default_rng(args.seed)
    lengths = np.arange(args.min_frames, args.max_frames + 1)
    start = time.perf_counter()
    history = []
    run_loss, run_acc, run_n = 0.0, 0.0, 0
    index = 0
    for step in range(args.steps):
        frames = int(rng.choice(lengths))
        tasks = rng.choice(len(TASKS), size=args.batch)
        items = []
        for t in tasks:
            items.append(make_item(TASKS[t], frames, TRAIN_STREAM + args.seed, index))
            index += 1
        inputs = batch_inputs(items, tokenizer)
        target = answer_ids(tokenizer, items)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = model(**inputs, logits_to_keep=1).logits[:, -1]
        loss = F.cross_entropy(logits, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run_loss += loss.item()
        run_acc += float((logits.argmax(-1) == target).float().mean())
        run_n += 1
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            entry = {
                "step": step + 1,
                "loss": run_loss / run_n,
                "train_acc": run_acc / run_n,
                "lr": lr_at(step),
                "elapsed_s": time.perf_counter() - start,
            }
            history.append(entry)
            print(json.dumps(entry), flush=True)
            run_loss, run_acc, run_n = 0.0, 0.0, 0
    train_s = time.perf_counter() - start
    model.eval()
    heldout = {str(t): accuracy(model, tokenizer, t, args.eval_items) for t in (args.min_frames, args.max_frames)}
    print(json.dumps({"heldout_accuracy": heldout}), flush=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_rel = os.path.relpath(os.path.abspath(args.out), root)
    summary = {
        "args": {**vars(args), "out": out_rel if not out_rel.startswith("..") else args.out},
        "train_seconds": train_s,
        "items_seen": index,
        "final_train_loss": history[-1]["loss"],
        "final_train_acc": history[-1]["train_acc"],
        "heldout_accuracy": heldout,
        "heldout_items_per_task": args.eval_items,
        "history": history,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor()}",
    }
    os.makedirs(args.out, exist_ok=True)
    # The model answers with one word and has no end token: its generation config says how long an answer is, so
    # `generate()` without max_new_tokens (what `longctx-adapter run` does by default) stops there.
    model.generation_config.max_new_tokens = 1
    model.save_pretrained(args.out)
    tiny_processor("llava_onevision").save_pretrained(args.out)
    with open(os.path.join(args.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder (default: the shipped model folder)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-frames", type=int, default=4)
    p.add_argument("--max-frames", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-items", type=int, default=200, help="held-out items per task and length at the end")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
