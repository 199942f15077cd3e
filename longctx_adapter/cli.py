"""`longctx-adapter` command line: subcommands grow with the library (demo now; profile, ablate, run later)."""

from __future__ import annotations

import argparse
import sys

from .errors import AdapterError


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(frames=args.frames, new_tokens=args.new_tokens, seed=args.seed, config=args.config)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx-adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="stock vs adapted generate on a tiny RANDOM LLaVA-OneVision and a long synthetic video",
        description="Stock vs adapted generate on a tiny random LLaVA-OneVision (random weights: answers are "
        "noise) and a synthetic video; prints visual tokens, prefill time, peak RSS and KV-cache bytes per run.",
    )
    demo.add_argument("--frames", type=int, default=256, help="frames of the synthetic video (default 256)")
    demo.add_argument("--new-tokens", type=int, default=8, help="tokens to generate (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the model weights and the video")
    demo.add_argument(
        "--config",
        metavar="JSON",
        default=None,
        help='adapter config as JSON: one pooling stage, a list of stages, null (pooling off), or a full config '
        'dict {"pooling": ..., "rope": null, "pool_single_images": false}. Default: '
        '{"type": "progressive", "group": 4, "strides": [2, 7], "mode": "bilinear"} (the tiny grid is 7x7)',
    )
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AdapterError as err:
        print(f"longctx-adapter {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
