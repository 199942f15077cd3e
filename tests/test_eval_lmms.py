"""lmms-eval integration: the `longctx_adapter` plugin model is found and runs a tiny local task end to end.

Needs lmms-eval (heavy): `make test-lmms` builds .venv-eval with the `[eval]` extra and runs this file; the default
suite skips it when lmms_eval is not importable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

from longctx_adapter.eval.video import write_video  # noqa: E402

from longctx_adapter.testing.tiny import synthetic_video, tiny_model, tiny_processor  # noqa: E402

pytestmark = pytest.mark.lmms
ROOT = Path(__file__).resolve().parents[1]
MODEL_TYPE = "llava_onevision"

UTILS = '''
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    lines = [doc["question"]] + [f"{'ABCD'[i]}. {o}" for i, o in enumerate(doc["options"])]
    return "\\n".join(lines)


def doc_to_choice(doc):
    return ["A", "B", "C", "D"][: len(doc["options"])]


def process_results(doc, results):
    return {"accuracy": float(results[0].strip()[:1] == doc["answer"])}
'''

GEN_TASK = """
task: longctx_tiny_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

MC_TASK = """
task: longctx_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer_index
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    ckpt = root / "ckpt"
    tiny_model(MODEL_TYPE).save_pretrained(ckpt)
    tiny_processor(MODEL_TYPE).save_pretrained(ckpt)
    video = write_video(root / "clip.mp4", synthetic_video(12, 32, 32, seed=4), fps=4)
    data = root / "data.jsonl"
    with open(data, "w") as fh:
        for i in range(2):
            fh.write(json.dumps({"video": video, "question": "what color is the square ?", "options": ["red", "blue"],
                                 "answer": "AB"[i], "answer_index": i}) + "\n")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "tiny_gen.yaml").write_text(textwrap.dedent(GEN_TASK).format(data=data))
    (tasks / "tiny_mc.yaml").write_text(textwrap.dedent(MC_TASK).format(data=data))
    return root, ckpt, tasks


def _env() -> dict:
    return {**os.environ, "LMMS_EVAL_PLUGINS": "longctx_adapter.eval", "CUDA_VISIBLE_DEVICES": "",
            "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_plugin_is_registered():
    code = ("from lmms_eval.models import get_model, AVAILABLE_MODELS; "
            "cls = get_model('longctx_adapter'); print(cls.__module__ + '.' + cls.__name__); "
            "print('longctx_adapter' in AVAILABLE_MODELS)")
    done = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "longctx_adapter.eval.models.longctx_adapter.LongctxAdapter" in done.stdout
    assert done.stdout.strip().endswith("True")


def test_end_to_end_on_a_tiny_local_task(setup):
    root, ckpt, tasks = setup
    out = root / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "longctx_adapter", "--model_args",
           f"pretrained={ckpt},adapter=progressive:2/4/4+yarn-visual@32,max_frames_num=4",
           "--tasks", "longctx_tiny_gen,longctx_tiny_mc", "--include_path", str(tasks), "--batch_size", "1",
           "--output_path", str(out), "--log_samples"]
    done = subprocess.run(cmd, cwd=root, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    files = list(out.rglob("*_results.json"))
    assert files, (done.stdout + done.stderr)[-3000:]
    results = json.loads(files[0].read_text())["results"]
    assert 0.0 <= results["longctx_tiny_gen"]["accuracy,none"] <= 1.0
    assert 0.0 <= results["longctx_tiny_mc"]["acc,none"] <= 1.0
    samples = [json.loads(line) for f in out.rglob("*longctx_tiny_mc*.jsonl") for line in f.read_text().splitlines()]
    if samples:  # per-choice responses are (logprob, is_greedy) pairs (the sample log writes them as text)
        resp = samples[0]["filtered_resps"][0]
        assert len(resp) == 2 and float(resp[0]) < 0 and str(resp[1]) in ("True", "False")
