"""Rewrite placeholder runs so every per-token tensor of a call stays consistent after pooling.

Pure tensor code (no transformers import). A caller's row keeps its text and padding; each placeholder run is
right-aligned to its old end (it keeps its *last* positions when it shrinks, gains positions in front when it
grows), so the token before the first text token after a video is still the last visual token, and logits of
kept positions map back to the caller's layout one to one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from longctx_adapter.errors import AdapterError


@dataclass(frozen=True)
class Run:
    row: int
    start: int
    length: int


@dataclass
class Rewritten:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    caller_to_new: torch.Tensor  # (B, L_caller) index into the new layout, -1 where a position was dropped
    new_to_caller: torch.Tensor  # (B, L_new) index into the caller layout, or PADDED / INSERTED
    extra: dict = field(default_factory=dict)  # other per-token tensors, rewritten alike


def find_runs(input_ids: torch.Tensor, token_id: int) -> list[Run]:
    """Maximal runs of `token_id`, row-major: the order in which the stock model scatters features."""
    is_tok = (input_ids == token_id).to(torch.int8)
    padded = torch.nn.functional.pad(is_tok, (1, 1))
    edges = padded[:, 1:] - padded[:, :-1]
    starts = (edges == 1).nonzero().tolist()
    ends = (edges == -1).nonzero().tolist()
    return [Run(r, s, e - s) for (r, s), (_, e) in zip(starts, ends)]


def padding_side(attention_mask: torch.Tensor | None) -> str:
    if attention_mask is None:
        return "left"
    if bool((attention_mask[:, -1] == 0).any()) and not bool((attention_mask[:, 0] == 0).any()):
        return "right"
    return "left"


PADDED, INSERTED = -1, -2  # new_to_caller markers: padding added by the rewrite, placeholders added by it


def resize_runs(
    input_ids: torch.Tensor,
    runs: list[Run],
    new_lengths: list[int],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    pad_token_id: int = 0,
    extra: dict | None = None,
    drop: list[tuple[int, int, int]] | tuple = (),
) -> Rewritten:
    """Give each placeholder run its new length and re-pad rows to one length.

    extra: name -> (tensor (B, L), padding value, value at inserted placeholders) for other per-token tensors.
    drop: (row, start, stop) caller spans to delete outright (Qwen3-VL: the blocks of frames pooled into an
    earlier frame, timestamp text included). A run inside a span must get length 0; every other run at least 1.

    A shorter run keeps its last positions; a longer one (pooling at finer than stock resolution, e.g. stride 1
    on LLaVA-OneVision) gets extra placeholders in front. Every other position keeps its token, mask and label.
    """
    if len(runs) != len(new_lengths):
        raise AdapterError(f"internal: {len(runs)} placeholder runs but {len(new_lengths)} pooled lengths")
    batch, length = input_ids.shape
    device = input_ids.device
    spans = _check_drop_spans(drop, batch, length)
    items: list[list[tuple]] = [[(start, stop, None) for start, stop in row_spans] for row_spans in spans]
    token_of_run = {}
    for run, new in zip(runs, new_lengths):
        inside = any(start <= run.start and run.start + run.length <= stop for start, stop in spans[run.row])
        if inside:
            if new != 0:
                raise AdapterError(f"internal: a run inside a deleted span was given {new} tokens")
            continue
        if any(start < run.start + run.length and run.start < stop for start, stop in spans[run.row]):
            raise AdapterError(f"internal: a deleted span cuts the placeholder run at row {run.row}, {run.start}")
        if new < 1:
            raise AdapterError(f"pooling left {new} tokens for a video; every video must keep at least one token")
        items[run.row].append((run.start, run.start + run.length, new))
        token_of_run[run.row] = int(input_ids[run.row, run.start])
    per_row: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    cursor = [0] * batch
    for b in range(batch):
        for start, stop, new in sorted(items[b], key=lambda item: item[0]):
            per_row[b].append(torch.arange(cursor[b], start, device=device))
            if new is not None:  # a run: keep its last positions, insert placeholders in front when it grows
                old = stop - start
                if new > old:
                    per_row[b].append(torch.full((new - old,), INSERTED, device=device))
                per_row[b].append(torch.arange(start + max(0, old - new), stop, device=device))
            cursor[b] = stop
    side = padding_side(attention_mask)
    rows = []
    for b in range(batch):
        per_row[b].append(torch.arange(cursor[b], length, device=device))
        rows.append(torch.cat(per_row[b]))
    new_len = max(len(r) for r in rows)
    new_to_caller = torch.full((batch, new_len), PADDED, dtype=torch.long, device=device)
    for b, idx in enumerate(rows):
        if side == "left":
            new_to_caller[b, new_len - len(idx) :] = idx
        else:
            new_to_caller[b, : len(idx)] = idx
    if attention_mask is not None:
        # Columns that are padding in every row carry nothing: drop them (keeps the layout minimal).
        live = (_gather(attention_mask, new_to_caller, 0, 1) != 0).any(dim=0)
        if not bool(live.all()):
            cols = live.nonzero().squeeze(1)
            new_to_caller = new_to_caller[:, int(cols.min()) : int(cols.max()) + 1]

    caller_to_new = torch.full((batch, length), PADDED, dtype=torch.long, device=device)
    rows_idx, cols = (new_to_caller >= 0).nonzero(as_tuple=True)
    caller_to_new[rows_idx, new_to_caller[rows_idx, cols]] = cols

    placeholder = torch.tensor([token_of_run.get(b, pad_token_id) for b in range(batch)], device=device)[:, None]
    if attention_mask is not None:
        new_mask = _gather(attention_mask, new_to_caller, 0, 1)
    elif bool((new_to_caller == PADDED).any()):
        new_mask = (new_to_caller != PADDED).to(torch.long)  # rows now differ in length: the model needs a mask
    else:
        new_mask = None
    return Rewritten(
        input_ids=_gather(input_ids, new_to_caller, pad_token_id, placeholder),
        attention_mask=new_mask,
        labels=None if labels is None else _gather(labels, new_to_caller, -100, -100),
        caller_to_new=caller_to_new,
        new_to_caller=new_to_caller,
        extra={name: _gather(t, new_to_caller, pad, ins) for name, (t, pad, ins) in (extra or {}).items()},
    )


def merged_frame_blocks(
    runs: list[Run], sources: list[tuple[int, ...]], counts: list[int], blocks: list[tuple[int | None, int]]
) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Layout of a one-block-per-frame video (Qwen3-VL) after pooling merged or dropped frames.

    runs: the video's placeholder run of each input frame; sources: the input frames each pooled frame draws on;
    counts: tokens per pooled frame; blocks: the caller span (start, stop) of each input frame's block, timestamp
    text and markers included; start None where it cannot be told (see patches/qwen_vl.py).
    A pooled frame takes the block of its FIRST source frame (that frame's timestamp, markers and ids); the
    blocks of frames that are nobody's first source are deleted. Returns (new length per run, deleted spans).
    """
    firsts = [min(src) if src else None for src in sources]
    if None in firsts or any(a >= b for a, b in zip(firsts, firsts[1:])):
        raise AdapterError(
            f"pooled frames draw on input frames {[list(s) for s in sources]}; on a model with one block per frame "
            "each pooled frame takes the block of its first input frame, so those must be distinct and ascending"
        )
    kept = dict(zip(firsts, counts))
    lengths, drop = [], []
    for frame, run in enumerate(runs):
        lengths.append(kept.get(frame, 0))
        if frame in kept:
            continue
        start, stop = blocks[frame]
        if start is None:
            raise AdapterError(
                f"pooling drops frame {frame} of a video whose block text start cannot be found (the timestamp text "
                "before the first <|vision_start|> runs into the prompt); keep the first frame (e.g. select_frames "
                "with more segments, or temporal/adaptive pooling, which always start at frame 0), or pass input_ids "
                "as the processor writes them (an outer <|vision_start|> ... <|vision_end|> around the blocks)"
            )
        drop.append((run.row, start, stop))
    return lengths, drop


def _check_drop_spans(drop, batch: int, length: int) -> list[list[tuple[int, int]]]:
    spans: list[list[tuple[int, int]]] = [[] for _ in range(batch)]
    for row, start, stop in drop:
        if not (0 <= row < batch and 0 <= start < stop <= length):
            raise AdapterError(
                f"internal: deleted span {(row, start, stop)} lies outside the ({batch}, {length}) input"
            )
        spans[row].append((int(start), int(stop)))
    for row_spans in spans:
        row_spans.sort()
        if any(a[1] > b[0] for a, b in zip(row_spans, row_spans[1:])):
            raise AdapterError(f"internal: deleted spans {row_spans} overlap")
    return spans


def _gather(values: torch.Tensor, index: torch.Tensor, pad_fill, inserted_fill) -> torch.Tensor:
    out = values.gather(1, index.clamp(min=0))
    out = out.masked_fill(index == PADDED, pad_fill)
    if isinstance(inserted_fill, torch.Tensor):
        return torch.where(index == INSERTED, inserted_fill.to(out.dtype), out)
    return out.masked_fill(index == INSERTED, inserted_fill)


def to_caller_layout(values: torch.Tensor, caller_to_new: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Place per-position values (B, L_new_tail, ...) back at the caller's positions; dropped positions get 0.

    `offset` is the new-layout index of values[:, 0] (non-zero when only the last positions were computed).
    """
    batch, length = caller_to_new.shape
    out = values.new_zeros((batch, length, *values.shape[2:]))
    rel = caller_to_new - offset
    valid = (caller_to_new >= 0) & (rel >= 0) & (rel < values.shape[1])
    rows, cols = valid.nonzero(as_tuple=True)
    out[rows, cols] = values[rows, rel[rows, cols]]
    return out
