"""`longctx-adapter`: adapt Hugging Face video LMs to long videos. Commands: demo (the shipped tiny model,
stock vs adapted), profile (memory and time per stage vs frames), plan (the least-compressing config that fits a
memory size), run (one question about one video), niah
(V-NIAH: a needle in a video haystack) and ablate (a grid of configs x frame counts on a dataset).
`longctx-adapter COMMAND --help` describes each; docs/cli.md lists what each refuses and why."""

from __future__ import annotations

import argparse
import sys
import warnings

from longctx_adapter.errors import AdapterError
from longctx_adapter.eval.arguments import non_negative_int, positive_int


def _demo(args) -> int:
    if not args.random:
        from longctx_adapter.demo.trained import run_trained_demo

        run_trained_demo(frames=args.frames or 64, questions=args.questions, seed=args.seed, config=args.config)
        return 0
    from longctx_adapter.demo.random_model import run_demo

    run_demo(frames=args.frames or 256, new_tokens=args.new_tokens, seed=args.seed, config=args.config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx-adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="stock vs adapted answers of the shipped tiny TRAINED video LM on long synthetic videos",
        description="Default: the shipped tiny trained LLaVA-OneVision (trained on 4-8 frame videos) answers "
        "questions about longer synthetic videos, stock vs adapted (config shipped beside its weights); prints "
        "answers, accuracy, visual tokens, KV cache and peak RSS. --random: a tiny RANDOM model instead "
        "(answers are noise; token counts, prefill time and memory are real).",
    )
    demo.add_argument("--random", action="store_true", help="use the tiny RANDOM model demo instead")
    demo.add_argument(
        "--frames", type=positive_int, default=None,
        help="frames of each synthetic video (default 64, at least 3; --random: 256)",
    )
    demo.add_argument("--questions", type=positive_int, default=12, help="questions asked (trained demo; default 12)")
    demo.add_argument("--new-tokens", type=positive_int, default=8,
                      help="tokens to generate (--random only; default 8)")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="seed of the model weights and the video")
    demo.add_argument(
        "--config",
        metavar="CONFIG",
        default=None,
        help="adapter config in the grammar of every command (docs/configuration.md): shorthands joined with '+' "
        "(e.g. progressive:2,4,4+yarn-visual@64), a JSON config or stage, a .json file, saved (the trained model's "
        "shipped longctx_adapter.json), or none/null (pooling off). Default: the trained model's shipped "
        "longctx_adapter.json; with --random progressive:2,7,4 (the tiny grid is 7x7)",
    )
    demo.set_defaults(func=_demo)
    _add_profile_command(sub)
    _add_plan_command(sub)
    _add_eval_commands(sub)
    return parser


def _profile(args) -> int:
    from longctx_adapter.profiling.profiler import run_profile_cli

    return run_profile_cli(args)


def _add_profile_command(sub) -> None:
    """`profile`: memory/time per stage vs frames (longctx_adapter.profiling.profiler)."""
    from longctx_adapter.profiling.profiler import add_profile_arguments

    parser = sub.add_parser(
        "profile",
        help="peak memory and time per stage (vision, prefill, decode) vs frames, per adapter config",
        description="Measure (or estimate) memory and time of generate() on one synthetic video per (frames, config) "
        "and write table.md, rows.csv, rows.json and memory.png into --out.",
    )
    add_profile_arguments(parser)
    parser.set_defaults(func=_profile)


def _plan(args) -> int:
    from longctx_adapter.profiling.planner import run_plan_cli

    return run_plan_cli(args)


def _add_plan_command(sub) -> None:
    """`plan`: the least-compressing configuration whose estimated peak fits a memory size."""
    from longctx_adapter.profiling.planner import add_plan_arguments

    parser = sub.add_parser(
        "plan",
        help="the least-compressing config (stock, chunking, pooling, KV quantization) that fits a memory size",
        description="Estimate (analytically) the peak memory of one video of --frames frames and print the first "
        "configuration that fits --memory: the stock model, then chunked prefill, then pooling from mild to strong, "
        "then a quantized KV cache, then temporal merging; with its peak, visual tokens and the config to pass on.",
    )
    add_plan_arguments(parser)
    parser.set_defaults(func=_plan)


def _add_eval_commands(sub) -> None:
    """`run`, `niah`, `ablate`: the evaluation harness (longctx_adapter.eval.cli)."""
    from longctx_adapter.eval.cli import add_ablate_parser, add_niah_parser, add_run_parser

    add_run_parser(sub)
    add_niah_parser(sub)
    add_ablate_parser(sub)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "niah_command", None))))
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(command, warnings.showwarning)
        try:
            return args.func(args)
        except AdapterError as err:
            print(f"longctx-adapter {command}: error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # a path the command cannot read or write (an --out under a file, no permission, ...)
            where = f": {err.filename}" if err.filename else ""
            print(f"longctx-adapter {command}: error: {err.strerror or err}{where} (check the paths given)",
                  file=sys.stderr)
            return 2


def _one_line_warnings(command: str, fallback):
    """The package's own warnings (e.g. fewer frames than asked for) as one `warning:` line, like errors."""

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.startswith("longctx_adapter"):
            print(f"longctx-adapter {command}: warning: {message}", file=sys.stderr, flush=True)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":
    sys.exit(main())
