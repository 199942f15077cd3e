"""lmms-eval integration, through lmms-eval itself: the `longctx_adapter` plugin model is found, answers a small local
task built from the synthetic QA with the shipped trained model (given as a hub id read from an offline Hugging Face
cache) at the exact accuracy, and samples the very frames of lmms-eval's own video reader.

Needs lmms-eval (heavy): `make test-lmms` builds .venv-eval with the `[eval]` extra and runs this file; the default
suite skips it when lmms_eval is not importable (tests/test_lmms_plugin.py covers the plugin there).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lmms_eval")

import torch  # noqa: E402
from lmms_eval.models.model_utils import load_video as lmms_video  # noqa: E402
from longctx_adapter.eval.synthetic_qa import answer_words, make_item  # noqa: E402
from longctx_adapter.eval.video import lmms_sample_indices, load_video, sample_indices, write_video  # noqa: E402

from longctx_adapter.demo.trained import MODEL_DIR  # noqa: E402
from longctx_adapter.testing.tiny import synthetic_video  # noqa: E402

pytestmark = pytest.mark.lmms
HUB_ID = "longctx-test/tiny-video-lm"
FRAMES = 8  # the trained model's training range is 4-8 frames; every frame is sampled

UTILS = '''
def doc_to_visual(doc):
    return [doc["video"]]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return doc["options"]


def process_results(doc, results):
    words = results[0].strip().split()
    return {"accuracy": float(bool(words) and words[0] == doc["answer"])}
'''

TASK_HEAD = """
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
"""

GEN_TASK = """
task: longctx_qa_gen
output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 1
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

MC_TASK = """
task: longctx_qa_mc
output_type: multiple_choice
doc_to_choice: !function utils.doc_to_choice
doc_to_target: answer_index
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""

# (task, item index) of the synthetic QA, seed 123 at 8 frames: every question type, every count answer
ITEMS = [("color", 0), ("color", 1), ("order", 0), ("order", 1), ("count", 0), ("count", 4), ("count", 7)]


def _hub_cache(root: Path) -> Path:
    """A Hugging Face cache holding the shipped trained model as the `main` snapshot of HUB_ID."""
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = root / f"models--{HUB_ID.replace('/', '--')}"
    shutil.copytree(MODEL_DIR, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    root = tmp_path_factory.mktemp("lmms")
    docs = []
    for task, index in ITEMS:
        item = make_item(task, FRAMES, 123, index)
        video = write_video(root / f"{task}{index}.mp4", item.frames, fps=4)
        options = list(answer_words(task))
        docs.append({"video": video, "question": item.question, "options": options, "answer": item.answer,
                     "answer_index": options.index(item.answer)})
    assert {d["answer"] for d in docs if d["question"].startswith("how many")} == {"one", "two", "three"}
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    head = textwrap.dedent(TASK_HEAD).format(data=data)
    (tasks / "qa_gen.yaml").write_text(textwrap.dedent(GEN_TASK) + head)
    (tasks / "qa_mc.yaml").write_text(textwrap.dedent(MC_TASK) + head)
    return root, tasks, docs, _hub_cache(root / "hub")


def _env(hub: Path | None = None, plugins_variable: bool = False) -> dict:
    """lmms-eval finds the model through the package's entry point; the LMMS_EVAL_PLUGINS variable is the older way."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LMMS_VIDEO_DECODE_BACKEND", None)
    env.pop("LMMS_EVAL_PLUGINS", None)
    if plugins_variable:
        env["LMMS_EVAL_PLUGINS"] = "longctx_adapter.eval"
    if hub is not None:
        env["HF_HUB_CACHE"] = str(hub)
    return env


@pytest.mark.parametrize("plugins_variable", [False, True])
def test_plugin_is_registered(plugins_variable):
    code = ("from lmms_eval.models import get_model, AVAILABLE_MODELS; "
            "cls = get_model('longctx_adapter'); print(cls.__module__ + '.' + cls.__name__); "
            "print('longctx_adapter' in AVAILABLE_MODELS)")
    env = _env(plugins_variable=plugins_variable)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "longctx_adapter.eval.models.longctx_adapter.LongctxAdapter" in done.stdout
    assert done.stdout.strip().endswith("True")


def _reference_losses(doc, processor, model) -> list[float]:
    """lmms-eval's own way (llava_hf): frames from lmms-eval's read_video, the HF processor on prompt + continuation,
    the model's loss with the prompt masked out."""
    frames = lmms_video.read_video(doc["video"], num_frm=FRAMES)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": doc["question"]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_len = processor(text=[prompt], videos=[frames], return_tensors="pt")["input_ids"].shape[1]
    losses = []
    for option in doc["options"]:
        inputs = processor(text=[f"{prompt} {option}"], videos=[frames], return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_len] = -100
        with torch.inference_mode():
            losses.append(float(model(**inputs, labels=labels).loss))
    return losses


def test_trained_model_through_lmms_eval_cli_scores_every_item(qa):
    """The shipped trained model answers every item: multiple choice (lmms-eval takes the choice of smallest
    returned value) and generation both score exactly 1.0. Each choice's value is the model's own loss on it."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    root, tasks, docs, hub = qa
    out = root / "out"
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "longctx_adapter", "--model_args",
           f"pretrained={HUB_ID},max_frames_num={FRAMES},device=cpu",
           "--tasks", "longctx_qa_mc,longctx_qa_gen", "--include_path", str(tasks), "--batch_size", "1",
           "--output_path", str(out), "--log_samples"]
    done = subprocess.run(cmd, cwd=root, env=_env(hub), capture_output=True, text=True, timeout=900)
    full = done.stdout + done.stderr
    log = full[-5000:]
    assert done.returncode == 0, log
    files = list(out.rglob("*_results.json"))
    assert files, log
    results = json.loads(files[0].read_text())["results"]
    assert results["longctx_qa_mc"]["acc,none"] == 1.0, results
    assert results["longctx_qa_gen"]["accuracy,none"] == 1.0, results
    assert f"from {hub}" in full  # the model came from the cache snapshot of the hub id
    samples = [json.loads(line) for f in out.rglob("*longctx_qa_mc*.jsonl") for line in f.read_text().splitlines()]
    assert len(samples) == len(docs)
    model = AutoModelForImageTextToText.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(MODEL_DIR)
    for sample in samples:
        doc = docs[sample["doc_id"]]
        got = [float(resp[0]) for resp in sample["filtered_resps"]]
        assert got == pytest.approx(_reference_losses(doc, processor, model), rel=1e-4, abs=1e-5)
        assert int(np.argmin(got)) == doc["answer_index"] and min(got) >= 0


# ---------------------------------------------------------------------------------------------------------------------
# Frames: index for index those of lmms-eval's read_video.


def test_lmms_sampling_indices_are_lmms_evals():
    """The pure rule against lmms-eval's own helpers (those of its read_video), over a grid of lengths and counts."""
    differ = 0
    for total in (1, 2, 3, 5, 8, 13, 31, 64, 100, 333, 1000):
        for num in (1, 2, 3, 7, 8, 16, 32, 64, 65, 256):
            for fps, rate in ((None, None), (1.0, 30.0), (0.5, 29.97), (2.0, 4.0), (3.0, 25.0)):
                for last in (False, True):
                    count = lmms_video._compute_sample_count(total, num, fps, rate)
                    theirs = lmms_video._compute_uniform_indices(total, count, force_include_last_frame=last)
                    ours = lmms_sample_indices(total, num, fps=fps, source_fps=rate, force_include_last_frame=last)
                    assert ours.tolist() == theirs.tolist(), (total, num, fps, rate, last)
        differ += any(sample_indices(total, n).tolist() != lmms_sample_indices(total, n).tolist() for n in (32, 64))
    assert differ >= 5  # the package's own rule (rounded, repeating) is a different rule


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    return {n: write_video(root / f"c{n}.mp4", synthetic_video(n, 32, 32, seed=n), fps=rate)
            for n, rate in ((1, 4), (5, 4), (13, 8), (40, 10), (100, 30))}


@pytest.mark.parametrize("last", [False, True])
def test_lmms_sampling_gives_lmms_evals_read_video_frames(clips, last):
    checked = 0
    for total, path in clips.items():
        header_frames, rate = lmms_video._probe_video_metadata(path)
        assert header_frames == total
        for num in (1, 3, 8, 16, 32, 64):
            for fps in (None, 0.5, 1.0, 3.0):
                theirs = lmms_video.read_video(path, num_frm=num, fps=fps, force_include_last_frame=last)
                if fps is not None and int(total / rate * fps) == 0:
                    # fps leaves no frame: lmms-eval's PyAV reader then decodes every frame (its torchcodec reader
                    # and the plugin take one)
                    assert len(theirs) == total
                    continue
                clip = load_video(path, num, fps=fps, sampling="lmms", force_include_last_frame=last)
                assert clip.frames.shape == theirs.shape and np.array_equal(clip.frames, theirs), (total, num, fps)
                checked += 1
    assert checked >= 80  # of 120 (clip, count, fps) cases
