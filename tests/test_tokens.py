"""tokens.py against naive per-row Python references: find_runs, resize_runs, to_caller_layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from longctx_adapter import AdapterError
from longctx_adapter.ops.tokens import INSERTED, PADDED, Run, find_runs, resize_runs, to_caller_layout

TOKEN, PAD = 7, 0

# --- find_runs ---------------------------------------------------------------------------------------------


def naive_runs(rows: list[list[int]], token: int) -> list[tuple[int, int, int]]:
    out = []
    for b, row in enumerate(rows):
        i = 0
        while i < len(row):
            if row[i] == token:
                j = i
                while j < len(row) and row[j] == token:
                    j += 1
                out.append((b, i, j - i))
                i = j
            else:
                i += 1
    return out


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(
        lambda b: st.integers(1, 12).flatmap(
            lambda n: st.lists(st.lists(st.integers(0, 1), min_size=n, max_size=n), min_size=b, max_size=b)
        )
    )
)
def test_find_runs_matches_naive_loop(rows):
    ids = torch.tensor(rows)
    assert [(r.row, r.start, r.length) for r in find_runs(ids, 1)] == naive_runs(rows, 1)
    assert [(r.row, r.start, r.length) for r in find_runs(ids, 0)] == naive_runs(rows, 0)


def test_find_runs_other_token_and_none():
    ids = torch.tensor([[3, 7, 7, 3, 7], [7, 7, 7, 7, 7]])
    assert find_runs(ids, 7) == [Run(0, 1, 2), Run(0, 4, 1), Run(1, 0, 5)]
    assert find_runs(ids, 9) == []


# --- resize_runs: a naive per-row reference ------------------------------------------------------------------


def naive_resize(ids, runs, new_lengths, mask=None, labels=None, pad_id=PAD, drop=()):
    """Row by row in Python: each run keeps its last positions (shrink) or gains inserted placeholders in front
    (grow); positions in a deleted span vanish; rows are re-padded to one length on the caller's padding side;
    all-padding columns are dropped."""
    dropped = {(b, c) for b, start, stop in drop for c in range(start, stop)}
    ids_l = ids.tolist()
    mask_l = mask.tolist() if mask is not None else None
    labels_l = labels.tolist() if labels is not None else None
    batch, length = ids.shape
    by_start = {(r.row, r.start): (r, n) for r, n in zip(runs, new_lengths)}
    rows = []  # per row: list of caller index or INSERTED
    for b in range(batch):
        row, i = [], 0
        while i < length:
            if (b, i) in dropped:
                i += 1
            elif (b, i) in by_start:
                run, new = by_start[(b, i)]
                if new > run.length:
                    row += [INSERTED] * (new - run.length)
                    row += list(range(i, i + run.length))
                else:
                    row += list(range(i + run.length - new, i + run.length))
                i += run.length
            else:
                row.append(i)
                i += 1
        rows.append(row)
    right = mask is not None and any(m[-1] == 0 for m in mask_l) and not any(m[0] == 0 for m in mask_l)
    width = max(len(r) for r in rows)
    layout = []
    for row in rows:
        fill = [PADDED] * (width - len(row))
        layout.append(row + fill if right else fill + row)

    def mask_at(b, j):
        c = layout[b][j]
        return 0 if c == PADDED else 1 if c == INSERTED else mask_l[b][c]

    if mask is not None:
        live = [j for j in range(width) if any(mask_at(b, j) for b in range(batch))]
        layout = [row[live[0] : live[-1] + 1] for row in layout]
    width = len(layout[0])

    def pick(values, b, j, pad, inserted):
        c = layout[b][j]
        return pad if c == PADDED else inserted if c == INSERTED else values[b][c]

    run_token = {r.row: ids_l[r.row][r.start] for r in runs if (r.row, r.start) not in dropped}
    new_ids = [[pick(ids_l, b, j, pad_id, run_token.get(b)) for j in range(width)] for b in range(batch)]
    if mask is not None:
        new_mask = [[mask_at(b, j) for j in range(width)] for b in range(batch)]
    elif any(c == PADDED for row in layout for c in row):
        new_mask = [[int(c != PADDED) for c in row] for row in layout]
    else:
        new_mask = None
    new_labels = None
    if labels is not None:
        new_labels = [[pick(labels_l, b, j, -100, -100) for j in range(width)] for b in range(batch)]
    caller_to_new = [[PADDED] * length for _ in range(batch)]
    for b, row in enumerate(layout):
        for j, c in enumerate(row):
            if c >= 0:
                caller_to_new[b][c] = j
    return new_ids, new_mask, new_labels, layout, caller_to_new


def _check(ids, runs, new_lengths, mask=None, labels=None, pad_id=PAD, drop=()):
    got = resize_runs(ids, runs, new_lengths, attention_mask=mask, labels=labels, pad_token_id=pad_id, drop=drop)
    new_ids, new_mask, new_labels, layout, caller_to_new = naive_resize(
        ids, runs, new_lengths, mask, labels, pad_id, drop
    )
    assert got.input_ids.tolist() == new_ids
    assert (got.attention_mask.tolist() if got.attention_mask is not None else None) == new_mask
    assert (got.labels.tolist() if got.labels is not None else None) == new_labels
    assert got.new_to_caller.tolist() == layout
    assert got.caller_to_new.tolist() == caller_to_new
    _check_inverse(got)
    if drop:
        return got
    # every run now has exactly its new length, in row-major order
    new_runs = find_runs(got.input_ids, TOKEN)
    assert [(r.row, r.length) for r in new_runs] == [(r.row, n) for r, n in zip(runs, new_lengths)]
    return got


def _check_inverse(got):
    n2c, c2n = got.new_to_caller, got.caller_to_new
    for b in range(n2c.shape[0]):
        for j, c in enumerate(n2c[b].tolist()):
            if c >= 0:
                assert int(c2n[b, c]) == j
        for c, j in enumerate(c2n[b].tolist()):
            if j >= 0:
                assert int(n2c[b, j]) == c


def _row(before: int, run: int, after: int, start_word: int = 10) -> list[int]:
    return list(range(start_word, start_word + before)) + [TOKEN] * run + list(range(50, 50 + after))


def _batch(rows, side="left"):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        if side == "left":
            ids[b, width - len(r) :], mask[b, width - len(r) :] = torch.tensor(r), 1
        else:
            ids[b, : len(r)], mask[b, : len(r)] = torch.tensor(r), 1
    return ids, mask


def test_shrink_batch1_keeps_last_positions():
    ids = torch.tensor([_row(2, 5, 3)])
    got = _check(ids, find_runs(ids, TOKEN), [2])
    assert got.input_ids.tolist() == [[10, 11, TOKEN, TOKEN, 50, 51, 52]]
    assert got.attention_mask is None
    assert got.new_to_caller.tolist() == [[0, 1, 5, 6, 7, 8, 9]]
    assert got.caller_to_new.tolist() == [[0, 1, -1, -1, -1, 2, 3, 4, 5, 6]]


def test_grow_inserts_run_token_in_front():
    ids = torch.tensor([_row(1, 2, 1)])
    labels = torch.tensor([[1, -100, -100, 2]])
    got = _check(ids, find_runs(ids, TOKEN), [4], labels=labels)
    assert got.input_ids.tolist() == [[10, TOKEN, TOKEN, TOKEN, TOKEN, 50]]
    assert got.new_to_caller.tolist() == [[0, INSERTED, INSERTED, 1, 2, 3]]
    assert got.labels.tolist() == [[1, -100, -100, -100, -100, 2]]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_padded_batch_shrink_and_grow(side, with_labels):
    ids, mask = _batch([_row(2, 6, 2), _row(3, 2, 1, start_word=20)], side)
    labels = ids.masked_fill(mask == 0, -100) if with_labels else None
    runs = find_runs(ids, TOKEN)
    got = _check(ids, runs, [2, 5], mask=mask, labels=labels)
    # row 0 shrinks 6 -> 2 (10 -> 6 live), row 1 grows 2 -> 5 (6 -> 9 live): 9 columns, row 0 padded by 3
    assert got.input_ids.shape == (2, 9)
    pad_cols = slice(0, 3) if side == "left" else slice(6, 9)
    assert got.attention_mask[0, pad_cols].tolist() == [0, 0, 0]
    assert got.input_ids[0, pad_cols].tolist() == [PAD] * 3
    assert int(got.attention_mask[1].sum()) == 9
    if with_labels:
        assert got.labels[0, pad_cols].tolist() == [-100] * 3
        assert (got.labels[1] == -100).sum() == 3  # the 3 inserted placeholders


def test_all_padding_columns_trimmed():
    # both rows carry two extra padding columns in front (over-padded, e.g. pad_to_multiple_of)
    ids, _ = _batch([[PAD, PAD] + _row(2, 4, 2), [PAD, PAD, PAD] + _row(1, 4, 2)], "left")
    mask = (ids != PAD).long()
    got = _check(ids, find_runs(ids, TOKEN), [1, 1], mask=mask)
    assert bool(got.attention_mask[:, 0].any())  # first column is live in some row
    assert got.attention_mask.tolist() == [[1] * 5, [0] + [1] * 4]
    assert int(got.caller_to_new[0, 0]) == -1 and int(got.caller_to_new[0, 1]) == -1  # trimmed columns


def test_no_mask_rows_of_different_new_length_get_a_mask():
    ids = torch.tensor([_row(2, 4, 2), _row(2, 4, 2, start_word=30)])
    got = _check(ids, find_runs(ids, TOKEN), [1, 3])
    assert got.attention_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]
    same = _check(ids, find_runs(ids, TOKEN), [2, 2])
    assert same.attention_mask is None


def test_row_without_run_and_multiple_runs_per_row():
    ids, mask = _batch([_row(1, 3, 1) + [TOKEN] * 4 + [60], [11, 12, 13, 14]], "left")
    runs = find_runs(ids, TOKEN)
    assert len(runs) == 2
    _check(ids, runs, [1, 6], mask=mask, labels=ids.clone())


def test_resize_refusals():
    ids = torch.tensor([_row(1, 3, 1)])
    runs = find_runs(ids, TOKEN)
    with pytest.raises(AdapterError, match="at least one"):
        resize_runs(ids, runs, [0])
    with pytest.raises(AdapterError, match="runs"):
        resize_runs(ids, runs, [1, 2])


@st.composite
def batches(draw):
    batch = draw(st.integers(1, 3))
    rows, runs_new = [], []
    for _ in range(batch):
        row = [draw(st.integers(10, 40)) for _ in range(draw(st.integers(0, 3)))]
        news = []
        for _ in range(draw(st.integers(0, 3))):
            row += [TOKEN] * draw(st.integers(1, 6))
            news.append(draw(st.integers(1, 8)))
            row += [draw(st.integers(10, 40)) for _ in range(draw(st.integers(1, 3)))]
        rows.append(row or [11])
        runs_new.append(news)
    side = draw(st.sampled_from(["left", "right", "none"]))
    extra = draw(st.integers(0, 2))  # all-padding columns on the padding side
    if side == "none":
        width = max(len(r) for r in rows)
        rows = [[12] * (width - len(r)) + r for r in rows]  # same length, no padding at all
    ids, mask = _batch(
        [r + [PAD] * extra if side == "right" else [PAD] * extra + r for r in rows],
        "right" if side == "right" else "left",
    )
    if side != "none" and extra:
        edge = slice(ids.shape[1] - extra, None) if side == "right" else slice(0, extra)
        mask[:, edge] = 0
    if side == "none":
        mask = None
    with_labels = draw(st.booleans())
    return ids, mask, with_labels, [n for news in runs_new for n in news]


@settings(max_examples=150, deadline=None)
@given(batches(), st.integers(0, 3))
def test_resize_runs_matches_naive_reference(data, pad_id):
    ids, mask, with_labels, new_lengths = data
    runs = find_runs(ids, TOKEN)
    assert len(runs) == len(new_lengths)
    labels = torch.where(ids == TOKEN, -100, ids * 2) if with_labels else None
    got = _check(ids, runs, new_lengths, mask=mask, labels=labels, pad_id=pad_id)
    if mask is not None:
        # every caller position that was live and is not a placeholder survives, with its token, mask and label
        for b in range(ids.shape[0]):
            for c in range(ids.shape[1]):
                if int(mask[b, c]) and int(ids[b, c]) != TOKEN:
                    j = int(got.caller_to_new[b, c])
                    assert j >= 0 and int(got.input_ids[b, j]) == int(ids[b, c])
                    assert int(got.attention_mask[b, j]) == 1
                    if labels is not None:
                        assert int(got.labels[b, j]) == int(labels[b, c])


@st.composite
def batches_with_deleted_spans(draw):
    """batches() plus deleted spans: some runs go with up to 3 text tokens on each side (a Qwen3-VL block)."""
    ids, mask, with_labels, new_lengths = draw(batches())
    runs = find_runs(ids, TOKEN)
    lengths, drop = list(new_lengths), []
    for k, run in enumerate(runs):
        if not draw(st.booleans()):
            continue
        row = ids[run.row].tolist()
        start, stop = run.start, run.start + run.length
        floor = drop[-1][2] if drop and drop[-1][0] == run.row else 0
        for _ in range(draw(st.integers(0, 3))):  # text before, never another run, a span or padding
            if start - 1 >= floor and row[start - 1] not in (TOKEN, PAD):
                start -= 1
        for _ in range(draw(st.integers(0, 3))):
            if stop < len(row) and row[stop] not in (TOKEN, PAD):
                stop += 1
        drop.append((run.row, start, stop))
        lengths[k] = 0
    deleted = sum(stop - start for _, start, stop in drop)
    assume(deleted < int((ids != PAD).sum()))  # something must stay (a kept block, the prompt)
    return ids, mask, with_labels, lengths, drop


@settings(max_examples=150, deadline=None)
@given(batches_with_deleted_spans())
def test_resize_runs_with_deleted_spans_matches_naive_reference(data):
    ids, mask, with_labels, new_lengths, drop = data
    labels = torch.where(ids == TOKEN, -100, ids * 2) if with_labels else None
    got = _check(ids, find_runs(ids, TOKEN), new_lengths, mask=mask, labels=labels, drop=drop)
    deleted = {(b, c) for b, start, stop in drop for c in range(start, stop)}
    for b, start, stop in drop:  # deleted positions map nowhere; text just outside survives
        assert (got.caller_to_new[b, start:stop] == PADDED).all()
        for edge in (start - 1, stop):
            if 0 <= edge < ids.shape[1] and (b, edge) not in deleted and int(ids[b, edge]) not in (TOKEN, PAD):
                assert int(got.caller_to_new[b, edge]) >= 0


def test_deleted_span_by_hand():
    # text 10 11 | run(3) | 12 | run(2) | 13 ; delete "12 run(2)" -> the first run shrinks to 1, the second goes
    ids = torch.tensor([[10, 11, TOKEN, TOKEN, TOKEN, 12, TOKEN, TOKEN, 13]])
    got = resize_runs(ids, find_runs(ids, TOKEN), [1, 0], drop=[(0, 5, 8)])
    assert got.input_ids.tolist() == [[10, 11, TOKEN, 13]]
    assert got.new_to_caller.tolist() == [[0, 1, 4, 8]]
    assert got.caller_to_new.tolist() == [[0, 1, -1, -1, 2, -1, -1, -1, 3]]


def test_deleted_span_refusals():
    ids = torch.tensor([[10, TOKEN, TOKEN, 12, TOKEN, 13]])
    runs = find_runs(ids, TOKEN)
    with pytest.raises(AdapterError, match="inside a deleted span"):
        resize_runs(ids, runs, [1, 1], drop=[(0, 3, 5)])
    with pytest.raises(AdapterError, match="cuts"):
        resize_runs(ids, runs, [1, 1], drop=[(0, 2, 4)])
    with pytest.raises(AdapterError, match="overlap"):
        resize_runs(ids, runs, [1, 0], drop=[(0, 3, 5), (0, 4, 6)])
    with pytest.raises(AdapterError, match="outside"):
        resize_runs(ids, runs, [1, 0], drop=[(0, 3, 9)])


# --- to_caller_layout ------------------------------------------------------------------------------------------


def naive_to_caller(values, caller_to_new, offset=0):
    batch, length = caller_to_new.shape
    out = torch.zeros((batch, length, *values.shape[2:]), dtype=values.dtype)
    for b in range(batch):
        for c in range(length):
            j = int(caller_to_new[b, c]) - offset
            if int(caller_to_new[b, c]) >= 0 and 0 <= j < values.shape[1]:
                out[b, c] = values[b, j]
    return out


@pytest.mark.parametrize("offset", [0, 2, 5])
def test_to_caller_layout(offset):
    ids, mask = _batch([_row(2, 6, 2), _row(3, 2, 1, start_word=20)], "left")
    got = resize_runs(ids, find_runs(ids, TOKEN), [2, 4], attention_mask=mask)
    new_len = got.input_ids.shape[1]
    values = torch.randn(2, new_len - offset, 3, generator=torch.Generator().manual_seed(offset)) + 10
    placed = to_caller_layout(values, got.caller_to_new, offset)
    assert placed.shape == (2, ids.shape[1], 3)
    assert torch.equal(placed, naive_to_caller(values, got.caller_to_new, offset))
    # explicit: the caller's last position (text, never dropped) holds the new layout's last value
    assert torch.equal(placed[:, -1], values[:, -1])
    # dropped placeholders are zero
    dropped = got.caller_to_new == PADDED
    assert dropped.any() and bool((placed[dropped] == 0).all())
    assert bool((placed[~dropped & (got.caller_to_new >= offset)] != 0).all())
    # positions before the offset were not computed: zero too
    assert bool((placed[(got.caller_to_new >= 0) & (got.caller_to_new < offset)] == 0).all())


def test_to_caller_layout_by_hand():
    caller_to_new = torch.tensor([[0, -1, 1, 2], [-1, 0, 1, 2]])
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert to_caller_layout(values, caller_to_new).tolist() == [[1, 0, 2, 3], [0, 4, 5, 6]]
    assert to_caller_layout(values[:, 1:], caller_to_new, offset=1).tolist() == [[0, 0, 2, 3], [0, 0, 5, 6]]
