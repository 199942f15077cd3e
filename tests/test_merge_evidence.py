"""The merge evidence and picture scripts: the McNemar test against a brute-force enumeration, equal budgets for
every method at every length, the picture's token bookkeeping, and one tiny end-to-end measurement."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from helpers import make_grid
from longctx_adapter.eval import measure_merging, merge_picture

from longctx_adapter.ops.pooling import count_tokens


def brute_force_p(only_a: int, only_b: int) -> float:
    """Two-sided exact p: the probability, under fair coins for the discordant items, of a split at least as
    uneven as the one seen, by enumerating every split."""
    n = only_a + only_b
    seen = abs(only_a - only_b)
    outcomes = list(itertools.product((0, 1), repeat=n))
    return sum(1 for o in outcomes if abs(2 * sum(o) - n) >= seen) / len(outcomes) if n else 1.0


@pytest.mark.parametrize(("only_a", "only_b", "ties"), [(0, 0, 5), (3, 0, 2), (0, 4, 0), (5, 2, 3), (6, 6, 1)])
def test_mcnemar_equals_the_enumeration(only_a, only_b, ties):
    a = [1] * only_a + [0] * only_b + [1] * ties + [0] * ties
    b = [0] * only_a + [1] * only_b + [1] * ties + [0] * ties
    test = measure_merging.mcnemar(a, b)
    assert (test["only_a"], test["only_b"]) == (only_a, only_b)
    assert test["p"] == pytest.approx(brute_force_p(only_a, only_b), rel=1e-12)


@pytest.mark.parametrize("multiple", measure_merging.MULTIPLES)
def test_every_method_gets_the_same_number_of_tokens(multiple):
    frames = measure_merging.TRAIN_FRAMES * multiple
    rope = {"type": "yarn", "visual_window": 129}
    configs = measure_merging.configs(frames, rope)
    grid = measure_merging.GRID
    for budget in measure_merging.BUDGETS:
        counts = {
            count_tokens(frames, grid, grid, configs[f"{method}@{budget}{suffix}"]["pooling"])
            for method in measure_merging.METHODS
            for suffix in ("", "+yarn")
        }
        assert counts == {measure_merging.budget_tokens(budget, frames)}
    assert configs["full"] is None and configs["full+yarn"]["rope"] == rope


def test_picture_bookkeeping_covers_every_input_token():
    grid = make_grid(16, 7, 7, 6, seed=3)
    grid[2:6] = grid[1:2]
    for name, stages in merge_picture.methods(16).items():
        per_frame = merge_picture.kept_tokens(grid, stages)
        assert len(per_frame) == 16
        if name.startswith(("merge", "segment")):
            assert sum(count for frame in per_frame for _, _, count in frame) == 16 * 16, name
        assert all(0 <= r < 7 and 0 <= c < 7 for frame in per_frame for r, c, _ in frame)


def test_one_tiny_measurement_end_to_end(tmp_path):
    out_json, out_md = tmp_path / "e.json", tmp_path / "e.md"
    torch.manual_seed(0)
    assert measure_merging.main(["--items", "1", "--multiples", "2", "--json", str(out_json), "--md", str(out_md)]) == 0
    data = json.loads(out_json.read_text())
    tokens = {r["config"]: r["visual_tokens"] for r in data["rows"]}
    assert tokens["merge_temporal@10%"] == tokens["progressive@10%"] == tokens["segment_density@10%"] == 29
    assert len(data["comparisons"]) == 2 * 2 * 2  # budgets x RoPE settings x merge methods
    assert "| merge_temporal@25% |" in out_md.read_text()
    with pytest.raises(SystemExit):
        measure_merging.main(["--multiples", "1"])
