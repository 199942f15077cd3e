"""Which tokens each method keeps, on one synthetic video seen by the shipped tiny model: the picture of
docs/token-merging.md.

    python -m longctx_adapter.eval.merge_picture        # writes docs/token_merging.png

The video is held-out item 0 of the ``count`` task at 16 frames (2x the training length) from the measurement
stream of :mod:`longctx_adapter.eval.measure_tiny`; its features are the tiny model's own (vision tower +
projector: a 7x7 grid per frame). One row per method, one column per frame. Each kept token is drawn at the
(row, column) of the token it keeps (for pooling: the centre of its window); a merged token's square grows with how
many input tokens it stands for (the number printed when above 1). Frames with a coloured square are the markers
the question is about.
"""

from __future__ import annotations

import argparse
import os

import torch
from longctx_adapter.eval.measure_merging import BUDGETS, GRID, budget_tokens
from longctx_adapter.eval.measure_tiny import DEFAULT_MODEL, MEASURE_STREAM, ROOT, STOCK_SPATIAL, load_model
from longctx_adapter.eval.synthetic_qa import FRAME_SIZE, batch_inputs, make_item

from longctx_adapter.ops.pooling import pool_video
from longctx_adapter.ops.positions import pooled_coordinates
from longctx_adapter.ops.stages.merging import MergeDecision

FRAMES = 16
TASK = "count"


def methods(frames: int) -> dict:
    rows = {"stock (16 per frame)": STOCK_SPATIAL}
    for budget, pooling in BUDGETS.items():
        tokens = budget_tokens(budget, frames)
        rows[f"progressive {budget}"] = pooling
        rows[f"merge_temporal {budget}"] = [STOCK_SPATIAL, {"type": "merge_temporal", "max_tokens": tokens}]
        rows[f"segment_density {budget}"] = [STOCK_SPATIAL, {"type": "segment_density", "max_tokens": tokens}]
    return rows


@torch.no_grad()
def features(model, tokenizer, item) -> torch.Tensor:
    """(T, 7, 7, D) projected features of the tiny model: what the pooling stages receive."""
    inputs = batch_inputs([item], tokenizer)
    inner = model.model
    pixels = inputs["pixel_values_videos"].flatten(0, 1)
    hidden = inner.vision_tower(pixels, output_hidden_states=True).hidden_states[model.config.vision_feature_layer]
    feats = inner.multi_modal_projector(hidden)
    return feats.reshape(item.num_frames, GRID, GRID, -1)


def kept_tokens(grid: torch.Tensor, stages) -> list[list[tuple[float, float, int]]]:
    """Per frame: (row, column) in patch units of every kept token, and how many input tokens it stands for."""
    pooled = pool_video(grid, stages)
    coords = pooled_coordinates(torch.arange(grid.shape[0], dtype=torch.float64), GRID, GRID, stages,
                                trace=pooled.trace)  # fmt: skip
    decision = next((d for d in pooled.trace if isinstance(d, MergeDecision)), None)
    counts = decision.counts.tolist() if decision is not None else [1] * pooled.num_tokens
    out, cursor = [], 0
    for frame in coords.frames:
        rows = frame.reshape(-1, 3).tolist()
        out.append([(r, c, counts[cursor + k]) for k, (_, r, c) in enumerate(rows)])
        cursor += len(rows)
    return out


def draw(item, rows: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    frames = item.num_frames
    scale = FRAME_SIZE / GRID  # pixels per patch
    fig, axes = plt.subplots(len(rows), frames, figsize=(0.95 * frames, 1.05 * len(rows) + 0.4), squeeze=False)
    for axis_row, (name, per_frame) in zip(axes, rows.items()):
        total = sum(len(tokens) for tokens in per_frame)
        for t, (ax, tokens) in enumerate(zip(axis_row, per_frame)):
            ax.imshow(item.frames[t], interpolation="nearest", alpha=0.55)
            for r, c, count in tokens:
                side = scale * (0.9 + 0.9 * min(count, 16) ** 0.5 / 4)
                x, y = (c + 0.5) * scale, (r + 0.5) * scale
                ax.add_patch(Rectangle((x - side / 2, y - side / 2), side, side, fill=False, lw=1.1, color="black"))
                if count > 1:
                    ax.text(x, y, str(count), fontsize=4.5, ha="center", va="center", color="black")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.5, FRAME_SIZE - 0.5)
            ax.set_ylim(FRAME_SIZE - 0.5, -0.5)
            if t in item.markers:
                for side in ax.spines.values():
                    side.set_color("tab:red")
                    side.set_linewidth(2.0)
            if axis_row is axes[0]:
                ax.set_title(f"frame {t}", fontsize=7)
        axis_row[0].set_ylabel(f"{name}\n{total} tokens", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle(
        f'"{item.question}" -> {item.answer}: tokens each method keeps (16 frames = 2x the training length; '
        "a number = input tokens merged into that token; red frames hold the markers)",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "token_merging.png"))
    args = p.parse_args(argv)
    model, tokenizer = load_model(args.model)
    item = make_item(TASK, FRAMES, MEASURE_STREAM, 0)
    grid = features(model, tokenizer, item)
    rows = {name: kept_tokens(grid, stages) for name, stages in methods(FRAMES).items()}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    draw(item, rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
