"""Largest frame count that fits a memory size, from the estimator alone (analytic; nothing is run).

    .venv/bin/python benchmarks/frames_fit.py [--write]      # make frames-fit

Prints the "How many frames fit" tables of docs/memory-24gb.md (16/24/40/80 GB) and draws docs/frames_fit.png
(largest frame count vs memory size, 16-80 GB, one line per configuration, LLaVA-OneVision-7B and Qwen2-VL-7B).
`--write` also replaces the tables in docs/memory-24gb.md (between its `frames-fit` markers). Every number comes
from `profiling.estimate.max_frames`: bf16 weights, 90 % of the memory size usable, `device="cuda"`, the model's
preset with chunked vision encoding (16 frames) and chunked prefill (4096), one video, batch 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "memory-24gb.md"
PNG = ROOT / "docs" / "frames_fit.png"
START, END = "<!-- frames-fit:start -->", "<!-- frames-fit:end -->"
GIB = 2**30
TABLE_SIZES = (16, 24, 40, 80)
PLOT_SIZES = tuple(range(16, 81, 4))
LIMIT = 1 << 14
MODELS = (("llava-onevision-7b", "LLaVA-OneVision-7B"), ("qwen2-vl-7b", "Qwen2-VL-7B"))
COLUMNS = (  # label, adapter preset?, prefill chunk, kv bits, streamed ingestion (encode_video, what `run` does)
    ("stock", False, None, None, False),
    ("stock + chunked prefill", False, 4096, None, False),
    ("preset", True, 4096, None, False),
    ("preset, streamed", True, 4096, None, True),
    ("streamed + 4-bit KV", True, 4096, 4, True),
    ("streamed + 2-bit KV", True, 4096, 2, True),
)


def _preset(config) -> dict:
    from longctx_adapter import AdapterConfig

    data = AdapterConfig.preset(config.model_type).to_dict()
    data["vision_chunk_frames"] = 16
    return data


def largest(config, size_gb: int, column) -> int:
    from longctx_adapter.profiling.estimate import max_frames

    _, preset, chunk, bits, streamed = column
    adapter = _preset(config) if preset else None
    return max_frames(config, 0.9 * size_gb * GIB, adapter, limit=LIMIT, device="cuda", prefill_chunk_size=chunk,
                      kv_bits=bits, streamed=streamed)  # fmt: skip


def _strides(config) -> str:
    stage = _preset(config)["pooling"][0]
    return f"progressive {','.join(str(s) for s in stage['strides'])},{stage['group']}"


def tables() -> str:
    from longctx_adapter.profiling.sizes import real_config

    out = []
    for name, title in MODELS:
        config = real_config(name)
        frame = " (448x448 frames)" if config.model_type.startswith("qwen") else ""
        out += [f"{title} (preset {_strides(config)}){frame}:", ""]
        out.append("| memory | " + " | ".join(c[0] for c in COLUMNS) + " |")
        out.append("|---|" + "---:|" * len(COLUMNS))
        for size in TABLE_SIZES:
            cells = []
            for column in COLUMNS:
                n = largest(config, size, column)
                cells.append(f"{LIMIT}+" if n >= LIMIT else str(n))
            out.append(f"| {size} GB | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(path=PNG) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from longctx_adapter.profiling.sizes import real_config

    fig, axes = plt.subplots(1, len(MODELS), figsize=(11, 4.4), dpi=110, sharey=True)
    for ax, (name, title) in zip(axes, MODELS):
        config = real_config(name)
        for column in COLUMNS:
            counts = [largest(config, size, column) for size in PLOT_SIZES]
            ax.plot(PLOT_SIZES, [c if c else float("nan") for c in counts], "o-", markersize=3, label=column[0])
        ax.set_yscale("log", base=2)
        ax.set_xticks(TABLE_SIZES + (32, 48, 64))
        ax.set_xlabel("GPU memory (GiB; 90 % usable)")
        ax.set_title(f"{title}, bf16 (preset: {_strides(config)})", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"largest frame count that fits (capped at {LIMIT})")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.text(0.01, 0.01, "analytic: profiling.estimate.max_frames (no measurement); no point where nothing fits (the weights alone)", fontsize=7)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def write_page(text: str, page=PAGE) -> None:
    body = page.read_text()
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{text}{END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="replace the tables in docs/memory-24gb.md")
    args = parser.parse_args(argv)
    text = tables()
    print(text)
    if args.write:
        write_page(text)
    print(f"plot: {plot()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
