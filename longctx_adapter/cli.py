"""`longctx-adapter` command line: subcommands grow with the library (demo now; profile, ablate, run later)."""

from __future__ import annotations

import argparse
import sys


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(frames=args.frames, new_tokens=args.new_tokens, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="longctx-adapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stock vs adapted generate on a tiny random LLaVA-OneVision and a long video")
    demo.add_argument("--frames", type=int, default=256)
    demo.add_argument("--new-tokens", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
