"""The KV-quantization accuracy script (`eval/measure_kv.py`) on a handful of items: its prefill split really makes
the answer read the quantized cache, and its statistics match a by-hand count."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from longctx_adapter.eval import measure_kv as mk
from longctx_adapter.eval.stats import wilson_interval
from longctx_adapter.eval.synthetic_qa import TASKS, batch_inputs, make_item

pytestmark = pytest.mark.skipif(importlib.util.find_spec("hqq") is None, reason="hqq not installed (extra [kv])")


@pytest.fixture(scope="module")
def loaded():
    return mk.load_models(mk.DEFAULT_MODEL, [torch.float32])


@pytest.fixture(scope="module")
def inputs(loaded):
    items = [make_item(t, mk.TRAIN_FRAMES, mk.MEASURE_STREAM, 0) for t in TASKS]
    return batch_inputs(items, loaded["tokenizer"])


def test_the_video_split_ends_at_the_videos_last_placeholder(loaded, inputs):
    ids = inputs["input_ids"]
    split = mk.prefill_chunk("video", ids.shape[1])
    video = loaded["models"][torch.float32].config.video_token_id
    assert (ids[:, split - 1] == video).all() and (ids[:, split:] != video).all()
    assert mk.prefill_chunk(mk.CHUNK, ids.shape[1]) == mk.CHUNK


def test_only_a_split_prefill_reads_the_quantized_cache(loaded, inputs):
    """One pass: the quantized cache hands attention its own full-precision keys, so 2-bit logits equal the
    full-precision ones bit for bit. Split: the question reads de-quantized video keys, so they differ; the
    full-precision split run agrees with one plain forward (measure_tiny's definition of the answer)."""
    model = loaded["models"][torch.float32]
    with torch.inference_mode():
        forward = model(**inputs, logits_to_keep=1).logits[:, -1]
    full_once = mk.answer_logits(model, inputs, None, None)
    full_split = mk.answer_logits(model, inputs, None, "video")
    int2_once = mk.answer_logits(model, inputs, 2, None)
    int2_split = mk.answer_logits(model, inputs, 2, "video")
    assert torch.equal(int2_once, full_once)
    assert not torch.allclose(int2_split, full_split, rtol=0, atol=1e-3)
    torch.testing.assert_close(full_split, forward, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(full_once, forward, rtol=1e-4, atol=1e-4)


def test_summary_statistics_match_a_count_by_hand():
    ref = {"color": [1, 1, 0, 1], "order": [1, 0, 0, 1], "count": [0, 1, 1, 1]}
    row = {"color": [1, 0, 1, 1], "order": [0, 0, 0, 1], "count": [0, 1, 1, 0]}
    results = [{"row": name, "multiple": 8, "frames": 64, "tasks": {t: {"correct": v[t]} for t in TASKS}}
               for name, v in (("bf16", ref), ("int2", row))]  # fmt: skip
    summary = {s["row"]: s["cells"] for s in mk.summarize(results)}
    assert "vs_reference" not in summary["bf16"]["all"]
    flat_ref = [c for t in TASKS for c in ref[t]]
    flat_row = [c for t in TASKS for c in row[t]]
    only_ref = sum(1 for a, b in zip(flat_ref, flat_row) if a == 1 and b == 0)  # 3 items
    only_row = sum(1 for a, b in zip(flat_ref, flat_row) if a == 0 and b == 1)  # 1 item
    cell = summary["int2"]["all"]
    assert (only_ref, only_row) == (3, 1)
    assert cell["vs_reference"]["only_reference"] == 3 and cell["vs_reference"]["only_this"] == 1
    assert cell["vs_reference"]["p"] == pytest.approx(2 * (1 + 4) / 16)  # two-sided binomial, 1 of 4
    assert cell["n"] == 12 and cell["accuracy"] == pytest.approx(6 / 12)
    assert cell["ci95"] == list(wilson_interval(6, 12))
    assert summary["int2"]["color"]["vs_reference"] == {"only_reference": 1, "only_this": 1, "p": 1.0}


def test_the_script_writes_every_row_on_the_same_items(tmp_path):
    out_json, out_md = tmp_path / "kv.json", tmp_path / "kv.md"
    args = ["--items", "1", "--multiples", "1", "--rows", "bf16", "int2_chunked", "--json", str(out_json),
            "--md", str(out_md)]  # fmt: skip
    assert mk.main(args) == 0
    data = json.loads(out_json.read_text())
    assert [(r["row"], r["multiple"]) for r in data["results"]] == [("bf16", 1), ("int2_chunked", 1)]
    assert all(len(r["tasks"][t]["correct"]) == 1 for r in data["results"] for t in TASKS)
    assert data["rows"]["int2_chunked"]["cache"]["cache_config"]["nbits"] == 2
    assert "int2_chunked" in out_md.read_text()
    with pytest.raises(SystemExit):
        mk.main(["--rows", "int2"])  # no reference row to test against
