"""Hand-written mutation testing of the ops and hook layers (`make mutate`; not part of `make test`).

Each mutant is one slip a developer could make (a wrong offset, a swapped axis, a lost per-row expansion),
applied to one module; the test files that should notice it run with `-x`, and the mutant is *killed* when they
fail. The source is restored after every mutant, also on Ctrl-C. Prints the kill rate and every survivor.

A hand-written list rather than mutmut: mutmut's generated mutants (every operator and constant of ~4,000 lines)
times this suite's model-based tests would take days on 2 cores; these mutants target the decisions the tests must
pin down, and each runs only the tests of its module (`-k` selections keep one run under a minute or two).

Usage: python benchmarks/mutants.py [--list] [--only NAME ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import pathlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    mutated: str
    tests: tuple[str, ...]  # pytest arguments (files, -k selections)
    why: str  # the slip it stands for


MUTANTS = [
    # --- ops -------------------------------------------------------------------------------------------------
    Mutant(
        "max-mode ids at the window maximum",
        "longctx_adapter/ops/stages/progressive.py",
        'if self.mode != "max":\n            return self',
        "if True:\n            return self",
        ("tests/test_adapter_qwen.py", "-k", "progressive_max"),
        "M-RoPE ids of max pooling taken from max-pooled coordinates (a window corner) instead of the centre",
    ),
    Mutant(
        "avg pooling with floor windows",
        "longctx_adapter/ops/stages/windows.py",
        "pooled = F.avg_pool3d(x, kernel, stride, ceil_mode=True, count_include_pad=False)",
        "pooled = F.avg_pool3d(x, kernel, stride, ceil_mode=False, count_include_pad=False)",
        ("tests/test_pooling.py", "tests/test_stages.py"),
        "partial tail windows dropped",
    ),
    Mutant(
        "progressive avg drops partial windows",
        "longctx_adapter/ops/stages/progressive.py",
        "pooled = F.avg_pool2d(x, stride, stride, ceil_mode=True, count_include_pad=False)",
        "pooled = F.avg_pool2d(x, stride, stride, ceil_mode=False, count_include_pad=False)",
        ("tests/test_pooling.py",),
        "frames pooled to floor(H/s) instead of ceil(H/s) tokens per side",
    ),
    Mutant(
        "prompt_guided overlapping windows shift by the global maximum",
        "longctx_adapter/ops/stages/prompt_guided.py",
        "e = torch.exp(z[source] - peak[target]).to(grid.dtype)",
        "e = torch.exp(z[source] - peak.max()).to(grid.dtype)",
        ("tests/test_prompt_guided.py", "-k", "peaked or far_below or naive or property"),
        "the precision loss of one global shift (underflow in windows far below the peak)",
    ),
    Mutant(
        "prompt_guided tiled windows without their own maximum",
        "longctx_adapter/ops/stages/prompt_guided.py",
        "e = torch.exp(z - _non_overlapping_max(z, kernel, stride)).to(compute)",
        "e = torch.exp(z).to(compute)",
        ("tests/test_prompt_guided.py", "-k", "peaked or far_below or naive or property or float32"),
        "tiled windows shifted only by the global maximum",
    ),
    Mutant(
        "coordinates with rows and columns swapped",
        "longctx_adapter/ops/positions.py",
        "grid = torch.stack([t, h, w], dim=-1)",
        "grid = torch.stack([t, w, h], dim=-1)",
        ("tests/test_positions.py", "tests/test_adapter_qwen.py", "-k", "not identity and not batch"),
        "M-RoPE h and w ids exchanged",
    ),
    Mutant(
        "interpolate moves positions by the step instead of 1 - step",
        "longctx_adapter/ops/rope.py",
        "return (1.0 - step.to(torch.float64)) * advanced",
        "return step.to(torch.float64) * advanced",
        ("tests/test_rope.py",),
        "V2PE compression formula inverted",
    ),
    Mutant(
        "yarn ramp reversed",
        "longctx_adapter/ops/rope.py",
        "extrapolation_factor = 1 - ramp.to(device=device, dtype=torch.float)  # this is gamma_i",
        "extrapolation_factor = ramp.to(device=device, dtype=torch.float)  # this is gamma_i",
        ("tests/test_rope.py",),
        "high and low frequencies exchanged in NTK-by-parts",
    ),
    Mutant(
        "a shrunken run keeps its first positions",
        "longctx_adapter/ops/tokens.py",
        "per_row[b].append(torch.arange(start + max(0, old - new), stop, device=device))",
        "per_row[b].append(torch.arange(start, stop - max(0, old - new), device=device))",
        ("tests/test_tokens.py",),
        "left-aligned instead of right-aligned placeholder runs",
    ),
    Mutant(
        "caller layout off by the offset",
        "longctx_adapter/ops/tokens.py",
        "rel = caller_to_new - offset",
        "rel = caller_to_new",
        ("tests/test_tokens.py", "tests/test_chunking.py", "-k", "caller or logits"),
        "logits_to_keep offset ignored when mapping logits back",
    ),
    Mutant(
        "yarn scale factor never below 1 lost",
        "longctx_adapter/ops/rope.py",
        "return max(1.0, visual_tokens / window)",
        "return visual_tokens / window",
        ("tests/test_rope.py", "tests/test_rope_hook.py", "-k", "bit_exact or scale or factor"),
        "short videos get compressed RoPE",
    ),
    # --- hooks -----------------------------------------------------------------------------------------------
    Mutant(
        "rotary hook ignores the cache offset",
        "longctx_adapter/hooks/rotary.py",
        "cols = torch.arange(offset, offset + length, device=position_ids.device)",
        "cols = torch.arange(0, length, device=position_ids.device)",
        ("tests/test_rope_hook.py", "-k", "chunked_prefill or interpolate_decode"),
        "chunked prefill / decode steps read the prompt's first columns",
    ),
    Mutant(
        "rotary scope visual treated as all",
        "longctx_adapter/hooks/rotary.py",
        'target = rows & (visual if plan.spec["scope"] == "visual" else torch.ones_like(visual))',
        "target = rows & torch.ones_like(visual)",
        ("tests/test_rope_hook.py", "-k", "scope_visual"),
        "text rows rotated with the extended frequencies",
    ),
    Mutant(
        "rotary plan repeated instead of interleaved for beams",
        "longctx_adapter/hooks/rotary.py",
        "return None if value is None else value.repeat_interleave(rep, dim=0)",
        "return None if value is None else value.repeat(rep, *([1] * (value.dim() - 1)))",
        ("tests/test_rope_hook.py", "-k", "expansion or rows or factor"),
        "rows of a batch expanded by generate() get another row's frequencies",
    ),
    Mutant(
        "frame-local chunks pool the main grid as DeepStack features",
        "longctx_adapter/hooks/chunking.py",
        "pooled_sides = [pool_video(g, self.stages).flatten() for g in seg.side_grids]",
        "pooled_sides = [pool_video(seg.grid, self.stages).flatten() for g in seg.side_grids]",
        ("tests/test_chunking.py", "-k", "qwen3"),
        "Qwen3-VL DeepStack levels replaced in the frame-local path",
    ),
    Mutant(
        "chunk tail not merged",
        "longctx_adapter/hooks/chunking.py",
        "if len(bounds) > 1 and (bounds[-1][1] - bounds[-1][0]) % reduction:",
        "if False:",
        ("tests/test_chunking.py", "-k", "plan_and_bounds or llava"),
        "a last chunk shorter than the temporal window pooled on its own",
    ),
    Mutant(
        "generate's caller prompt repeated instead of interleaved",
        "longctx_adapter/hooks/call_path.py",
        "caller = caller.repeat_interleave(sequences.shape[0] // caller.shape[0], dim=0)",
        "caller = caller.repeat(sequences.shape[0] // caller.shape[0], 1)",
        ("tests/test_generate_variants.py", "-k", "batch2_beams"),
        "rows of num_return_sequences get another row's prompt",
    ),
    Mutant(
        "continuation record not expanded per returned sequence",
        "longctx_adapter/hooks/call_path.py",
        "return value.repeat_interleave(per_row, dim=0) if per_row > 1 else value",
        "return value",
        ("tests/test_continuation.py", "-k", "several"),
        "generate(return_dict_in_generate=True, num_return_sequences=n) fails after generating",
    ),
    Mutant(
        "continuation record expanded by repeat",
        "longctx_adapter/hooks/call_path.py",
        "return value.repeat_interleave(per_row, dim=0) if per_row > 1 else value",
        "return value.repeat(per_row, 1) if per_row > 1 else value",
        ("tests/test_continuation.py", "-k", "several"),
        "a continued row lines up with another prompt row's cache",
    ),
    Mutant(
        "max_length not moved by the rewrite",
        "longctx_adapter/hooks/call_path.py",
        "            call[key] = call[key] + delta",
        "            call[key] = call[key]",
        ("tests/test_generate_variants.py", "-k", "max_length"),
        "max_length counts the pooled prompt",
    ),
    Mutant(
        "logits_to_keep from the latest kept position",
        "longctx_adapter/hooks/call_path.py",
        "offset = int(valid.min()) if valid.numel() else new_len - 1",
        "offset = int(valid.max()) if valid.numel() else new_len - 1",
        ("tests/test_adapter_llava.py", "tests/test_chunking.py", "-k", "logits_to_keep or last_logits"),
        "logits_to_keep=k > 1 computes too few positions",
    ),
    Mutant(
        "continuation with the caller's prefix not checked",
        "longctx_adapter/hooks/call_path.py",
        "or not torch.equal(ids[:, :prefix].to(continued.caller.device), continued.caller)",
        "or False",
        ("tests/test_continuation.py", "-k", "refused"),
        "a cache continued with other text",
    ),
]


# Mutants tried and found equivalent (kept out of the list, so the kill rate counts only mutants a test can catch):
# - progressive avg with count_include_pad=True: with padding 0 torch clips a ceil_mode window to the input before
#   counting, so the divisor is the same (checked: bit-identical on partial windows).


def run_mutant(mutant: Mutant, timeout: int) -> tuple[bool, float, str]:
    """(killed, seconds, how): applies the mutant, runs its tests, restores the file."""
    path = ROOT / mutant.path
    source = path.read_text()
    if source.count(mutant.original) != 1:
        raise SystemExit(
            f"mutant {mutant.name!r}: its original text occurs {source.count(mutant.original)} times in {mutant.path}"
        )
    start = time.monotonic()
    try:
        path.write_text(source.replace(mutant.original, mutant.mutated))
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *mutant.tests]
        try:
            result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return True, time.monotonic() - start, "timeout"
        if result.returncode == 5:
            raise SystemExit(f"mutant {mutant.name!r}: its selection collected no tests ({' '.join(mutant.tests)})")
        tail = (result.stdout.strip().splitlines() or [""])[-1]
        return result.returncode != 0, time.monotonic() - start, tail
    finally:
        path.write_text(source)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="*", default=None, help="names (substrings) of the mutants to run")
    parser.add_argument("--timeout", type=int, default=900, help="seconds per mutant (a timeout counts as killed)")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    for m in mutants:  # every mutant applies before any runs
        count = (ROOT / m.path).read_text().count(m.original)
        if count != 1:
            raise SystemExit(f"mutant {m.name!r}: its original text occurs {count} times in {m.path}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed run still restores the source (finally)
    if args.list:
        for m in mutants:
            print(f"{m.name}  [{m.path}]  {' '.join(m.tests)}")
        return 0
    survivors = []
    for n, mutant in enumerate(mutants, 1):
        killed, seconds, how = run_mutant(mutant, args.timeout)
        print(
            f"[{n}/{len(mutants)}] {'killed ' if killed else 'SURVIVED'} {seconds:6.1f}s  {mutant.name}  ({how})",
            flush=True,
        )
        if not killed:
            survivors.append(mutant)
    killed = len(mutants) - len(survivors)
    print(f"\nkill rate: {killed}/{len(mutants)} = {100 * killed / max(1, len(mutants)):.1f} %")
    for m in survivors:
        print(f"  survivor: {m.name} ({m.path}): {m.why}; tests: {' '.join(m.tests)}")
    return 0 if not survivors else 1


if __name__ == "__main__":
    sys.exit(main())
