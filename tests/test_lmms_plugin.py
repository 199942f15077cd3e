"""The lmms-eval plugin model without lmms-eval (its base class is stubbed by the `plugin` fixture): every model
argument is checked when the model is built and before weights load, `pretrained` takes hub ids through the
Hugging Face cache, Qwen pixel bounds reach the processor, and loglikelihood answers what lmms-eval expects.
End to end through lmms-eval itself: tests/test_eval_lmms.py (`make test-lmms`)."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from longctx_adapter.eval import runner
from longctx_adapter.eval.synthetic_qa import answer_words, make_item
from longctx_adapter.eval.video import FrameCountWarning, load_video, write_video

from longctx_adapter import AdapterConfig, AdapterError
from longctx_adapter.config_text import ADAPTER_CONFIG_NAME
from longctx_adapter.demo.trained import MODEL_DIR as _MODEL_DIR

MODEL_DIR = Path(_MODEL_DIR)
TRAINED = str(MODEL_DIR)
SAVED = AdapterConfig.from_json((MODEL_DIR / ADAPTER_CONFIG_NAME).read_text())


class _Log:
    def __init__(self):
        self.warnings: list[str] = []

    def warning(self, text):
        self.warnings.append(text)

    def info(self, text):
        pass

    debug = info


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load weights fails the test: refusals must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the bad argument was refused")

    monkeypatch.setattr(runner, "load_model", refuse)


BAD_ARGS = [
    ({"max_frame_num": 8}, r"unknown longctx_adapter model argument 'max_frame_num' \(did you mean max_frames_num\?\)"),
    ({"adpater": "none"}, r"'adpater' \(did you mean adapter\?\)"),
    ({"max_frames_num": "abc"}, r"max_frames_num='abc': expected a positive integer, e.g. max_frames_num=32"),
    ({"max_frames_num": 0}, r"max_frames_num=0: expected a positive integer"),
    ({"max_frames_num": -3.0}, r"max_frames_num=-3.0: expected a positive integer"),
    ({"max_frames_num": 2.5}, r"max_frames_num=2.5: expected a positive integer"),
    ({"max_frames_num": True}, r"max_frames_num=True"),
    ({"fps": "fast"}, r"fps='fast': expected a positive number"),
    ({"fps": 0}, r"fps=0: expected a positive number"),
    ({"visual_window": -1.0}, r"visual_window=-1.0: expected a positive integer"),
    ({"max_new_tokens": "many"}, r"max_new_tokens='many'"),
    ({"video_backend": "ffmpeg"}, r"video_backend='ffmpeg': longctx_adapter decodes with pyav, decord, torchcodec"),
    ({"frame_sampling": "nearest"}, r"frame_sampling='nearest': use one of lmms, round"),
    ({"force_include_last_frame": "maybe"}, r"force_include_last_frame='maybe': expected true or false"),
    ({"force_include_last_frame": True, "frame_sampling": "round"}, r"belongs to frame_sampling=lmms"),
    ({"batch_size": "auto"}, r"batch_size='auto': the longctx_adapter model runs batch_size=1"),
    ({"batch_size": 4}, r"batch_size=4"),
    ({"dtype": "int8"}, r"dtype='int8': unknown dtype 'int8'; use one of bf16/bfloat16"),
    ({"dtype": "fp8"}, r"dtype='fp8': unknown dtype"),
    ({"processor": "hf"}, r"unknown longctx_adapter model argument 'processor'"),
    ({"device": "gpu"}, r"device='gpu': not a device"),
    ({"min_pixels": 5000, "max_pixels": 100}, r"min_pixels=5000 > max_pixels=100"),
    ({"max_pixels": 0}, r"max_pixels=0: expected a positive integer"),
    ({"max_pixels": 602112}, r"max_pixels apply to Qwen-VL models, not 'llava_onevision'"),
    ({"adapter": "warp:2"}, r"unknown config term 'warp:2'"),
    ({"pretrained": ""}, r"pretrained= is required"),
]


@pytest.mark.parametrize("extra,message", BAD_ARGS, ids=[str(sorted(e)) for e, _ in BAD_ARGS])
def test_bad_model_arguments_are_refused_before_loading(plugin, no_loading, extra, message):
    args = {"pretrained": TRAINED, "device": "cpu", **extra}
    with pytest.raises(AdapterError, match=message):
        plugin.LongctxAdapter(**args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is available here")
def test_cuda_without_a_gpu_is_refused(plugin, no_loading):
    with pytest.raises(AdapterError, match="device='cuda': no CUDA device is available here; use cpu or auto"):
        plugin.LongctxAdapter(pretrained=TRAINED, device="cuda")


def test_pretrained_that_is_neither_folder_nor_hub_id(plugin, no_loading, tmp_path):
    with pytest.raises(AdapterError, match="pretrained='./no/such/model': no such folder"):
        plugin.LongctxAdapter(pretrained="./no/such/model")
    with pytest.raises(AdapterError, match="is a file; give the model's folder"):
        plugin.LongctxAdapter(pretrained=str(MODEL_DIR / "config.json"))
    with pytest.raises(AdapterError, match="revision='v1' applies to hub ids"):
        plugin.LongctxAdapter(pretrained=TRAINED, revision="v1")


def test_video_backend_comes_from_the_argument_else_lmms_eval_environment(plugin, no_loading, monkeypatch):
    validate = plugin.validate_model_args
    monkeypatch.delenv(plugin.BACKEND_ENV, raising=False)
    assert validate({"pretrained": "x"})["video_backend"] == "pyav"
    monkeypatch.setenv(plugin.BACKEND_ENV, "decord")
    pytest.importorskip("decord")
    assert validate({"pretrained": "x"})["video_backend"] == "decord"
    assert validate({"pretrained": "x", "video_backend": "pyav"})["video_backend"] == "pyav"
    monkeypatch.setenv(plugin.BACKEND_ENV, "dali")
    with pytest.raises(AdapterError, match="LMMS_VIDEO_DECODE_BACKEND=dali: longctx_adapter decodes with pyav"):
        validate({"pretrained": "x"})
    monkeypatch.setattr(plugin, "_BACKEND_MODULES", {**plugin._BACKEND_MODULES, "torchcodec": "no_such_module_xyz"})
    with pytest.raises(AdapterError, match="video_backend='torchcodec': torchcodec cannot be used here .*use pyav"):
        validate({"pretrained": "x", "video_backend": "torchcodec"})


def test_lmms_eval_value_types_are_accepted(plugin):
    """lmms-eval's arg parser turns "8" into 8, "8.0" into 8.0 and "true" into True; the CLI passes batch_size "1"."""
    args = plugin.validate_model_args({"pretrained": "x", "max_frames_num": 8.0, "fps": 1, "batch_size": "1",
                                       "force_include_last_frame": "true", "max_batch_size": 4})
    assert args["max_frames_num"] == 8 and isinstance(args["max_frames_num"], int)
    assert args["fps"] == 1.0 and args["batch_size"] == 1 and args["force_include_last_frame"] is True
    assert args["frame_sampling"] == "lmms" and args["max_new_tokens"] == 256 and args["adapter"] is None


# ---------------------------------------------------------------------------------------------------------------------
# pretrained: a hub id read from the Hugging Face cache, with the snapshot's saved config as the default.


def _hub_cache(root, repo_id, source) -> str:
    """A Hugging Face cache holding `source`'s files as the `main` snapshot of `repo_id` (the cache layout)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return str(repo / "snapshots" / commit)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_pretrained_takes_a_hub_id_from_the_cache(plugin, offline_hub):
    snapshot = _hub_cache(offline_hub, "someone/tiny-video-lm", MODEL_DIR)
    model = plugin.LongctxAdapter(pretrained="someone/tiny-video-lm", device="cpu")
    try:
        assert model.pretrained_folder == snapshot
        assert model.adapter_config == SAVED  # the snapshot's saved longctx_adapter.json is the default
        assert model.model.config.model_type == "llava_onevision"
    finally:
        model.handle.remove()
    with pytest.raises(AdapterError, match="'someone/other': not a local folder, not in the Hugging Face cache"):
        plugin.LongctxAdapter(pretrained="someone/other", device="cpu")


def test_adapter_preset_is_the_family_preset_and_says_the_saved_config_is_not_used(plugin, monkeypatch):
    import longctx_adapter

    log, applied = _Log(), []
    monkeypatch.setattr(plugin, "logger", log)
    # the preset's strides do not fit the tiny 7x7 grid: record what would be applied instead of applying it
    monkeypatch.setattr(longctx_adapter, "apply_adapter", lambda model, config: applied.append(config))
    plugin.LongctxAdapter(pretrained=TRAINED, device="cpu", adapter="preset")
    assert applied == [AdapterConfig.preset("llava_onevision")] and applied[0] != SAVED
    assert any("adapter=preset takes the llava_onevision family preset, not the folder's saved" in w for w in log.warnings)
    log.warnings.clear()
    plugin.LongctxAdapter(pretrained=TRAINED, device="cpu", adapter="saved")
    plugin.LongctxAdapter(pretrained=TRAINED, device="cpu")
    assert applied[1:] == [SAVED, SAVED] and not log.warnings


# ---------------------------------------------------------------------------------------------------------------------
# Qwen-VL pixel bounds, as lmms-eval's Qwen models pass them.


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory):
    import transformers

    from longctx_adapter.testing.tiny import tiny_tokenizer
    from longctx_adapter.testing.tiny_qwen import qwen_tiny_model

    folder = tmp_path_factory.mktemp("qwen2_vl")
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>"]})
    kw = dict(patch_size=4, merge_size=2, temporal_patch_size=2, size={"shortest_edge": 16 * 16, "longest_edge": 64 * 64})
    template = ("{% for message in messages %}{{ message['role'] }} {% for part in message['content'] %}"
                "{% if part['type'] == 'video' %}<|vision_start|><video><|vision_end|>"
                "{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %} assistant{% endif %}")
    transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**kw), tokenizer=tok,
        video_processor=transformers.Qwen2VLVideoProcessor(**kw), chat_template=template,
    ).save_pretrained(folder)
    qwen_tiny_model("qwen2_vl").save_pretrained(folder)
    return folder


def test_qwen_max_and_min_pixels_reach_the_processor(plugin, qwen_folder, tmp_path):
    from longctx_adapter.testing.tiny import synthetic_video

    video = write_video(tmp_path / "clip.mp4", synthetic_video(4, 48, 48, seed=2), fps=2)
    grids = {}
    for pixels in ({}, {"max_pixels": 16 * 16, "min_pixels": 8 * 8}):
        model = plugin.LongctxAdapter(pretrained=str(qwen_folder), device="cpu", adapter="none", max_frames_num=4,
                                      **pixels)
        for sub in (model.processor.image_processor, model.processor.video_processor):
            assert sub.size["longest_edge"] == pixels.get("max_pixels", 64 * 64)
            assert sub.size["shortest_edge"] == pixels.get("min_pixels", 16 * 16)
        grids[bool(pixels)] = model._inputs("what color ?", [video])["video_grid_thw"][0].tolist()
    # 48x48 frames on an 8-px grid (patch 4 x merge 2): within 64x64 they stay 48x48; capped at 16x16 pixels
    assert grids[False] == [2, 12, 12] and grids[True] == [2, 4, 4]


# ---------------------------------------------------------------------------------------------------------------------
# loglikelihood: lmms-eval takes the choice of smallest value (its models return the continuation's loss).


class _Request:
    def __init__(self, *args):
        self.args = args


def test_loglikelihood_is_the_hf_loss_of_the_continuation_and_the_answer_has_the_smallest(plugin, tmp_path):
    from transformers import AutoProcessor

    item = make_item("color", 8, 7, 0)
    video = write_video(tmp_path / "item.mp4", item.frames, fps=4)
    docs = {"test": [{"video": video}]}
    model = plugin.LongctxAdapter(pretrained=TRAINED, device="cpu", adapter="none", max_frames_num=8)
    model.task_dict = {"tiny": docs}
    options = answer_words("color")
    requests = [_Request(item.question, f" {o}", lambda doc: [doc["video"]], 0, "tiny", "test") for o in options]
    answers = [getattr(r, "text", r) for r in model.loglikelihood(requests)]  # lmms-eval 0.7.3 wraps the pairs
    assert all(isinstance(greedy, bool) for _, greedy in answers)
    losses = [float(loss) for loss, _ in answers]
    # reference: the model's own loss (labels on the continuation only), inputs built by the HF processor
    processor = AutoProcessor.from_pretrained(TRAINED)
    frames = load_video(video, 8).frames
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": item.question}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_len = processor(text=[prompt], videos=[frames], return_tensors="pt")["input_ids"].shape[1]
    for option, loss in zip(options, losses):
        inputs = processor(text=[f"{prompt} {option}"], videos=[frames], return_tensors="pt")
        labels = inputs["input_ids"].clone()
        labels[:, :prompt_len] = -100
        with torch.inference_mode():
            reference = model.model(**inputs, labels=labels).loss
        assert loss == pytest.approx(float(reference), rel=1e-4, abs=1e-5), option
    assert options[int(np.argmin(losses))] == item.answer  # lmms-eval's pred = argmin
    assert [greedy for _, greedy in answers] == [option == item.answer for option in options]  # one-token options
    assert min(losses) >= 0


# ---------------------------------------------------------------------------------------------------------------------
# Frames: lmms-eval's rule (tests/test_eval_lmms.py checks it index for index against lmms-eval's own reader).


def test_lmms_sampling_rule_by_hand():
    from longctx_adapter.eval.video import lmms_sample_indices, sample_indices

    assert lmms_sample_indices(10, 6).tolist() == [0, 1, 3, 5, 7, 9]  # linspace 0, 1.8, 3.6, ... truncated
    assert sample_indices(10, 6).tolist() == [0, 2, 4, 5, 7, 9]  # the package's own rule rounds
    assert lmms_sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4]  # a short video: every frame once
    with pytest.warns(FrameCountWarning, match="asked for 8 frames but the video has 5"):
        assert sample_indices(5, 8).tolist() == [0, 1, 2, 3, 4]  # the package's rule too, with a warning
    # fps: at most int(100 frames / 10 fps * 0.5) = 5 frames, then the same spread
    assert lmms_sample_indices(100, 32, fps=0.5, source_fps=10).tolist() == [0, 24, 49, 74, 99]
    assert lmms_sample_indices(100, 3, fps=0.5, source_fps=10).tolist() == [0, 49, 99]
    assert lmms_sample_indices(100, 4, fps=0.01, source_fps=10).tolist() == [0]  # never fewer than one
    assert lmms_sample_indices(10, 1).tolist() == [0]
    assert lmms_sample_indices(10, 1, force_include_last_frame=True).tolist() == [9]
    assert lmms_sample_indices(10, 6, force_include_last_frame=True).tolist() == [0, 1, 3, 5, 7, 9]
    with pytest.raises(AdapterError, match="num_frames must be a positive integer"):
        lmms_sample_indices(10, 0)


def test_load_video_lmms_mode_leaves_the_default_rule_alone(tmp_path):
    from longctx_adapter.testing.tiny import synthetic_video

    video = write_video(tmp_path / "five.mp4", synthetic_video(5, 32, 32, seed=3), fps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # lmms-eval's rule caps without a word, as lmms-eval does
        lmms = load_video(video, 8, sampling="lmms")
    assert lmms.indices.tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(lmms.frames, load_video(video, 5).frames)
    with pytest.warns(FrameCountWarning):
        assert load_video(video, 8).indices.tolist() == [0, 1, 2, 3, 4]  # the default rule caps with a warning
    ten = write_video(tmp_path / "ten.mp4", synthetic_video(10, 32, 32, seed=3), fps=4)
    assert load_video(ten, 6, sampling="lmms").indices.tolist() == [0, 1, 3, 5, 7, 9]  # truncated
    assert load_video(ten, 6).indices.tolist() == [0, 2, 4, 5, 7, 9]  # the default rule (rounded) is unchanged
    for kwargs, message in (({"sampling": "nearest"}, "unknown sampling 'nearest'"),
                            ({"sampling": "lmms", "max_frames": 4}, "takes num_frames"),
                            ({"force_include_last_frame": True}, "part of sampling='lmms'")):
        with pytest.raises(AdapterError, match=message):
            load_video(video, 8, **kwargs)


def test_plugin_samples_by_lmms_evals_rule_unless_asked(plugin, tmp_path):
    from longctx_adapter.testing.tiny import synthetic_video

    video = write_video(tmp_path / "ten.mp4", synthetic_video(10, 28, 28, seed=3), fps=4)
    for sampling, indices in ((None, [0, 1, 3, 5, 7, 9]), ("round", [0, 2, 4, 5, 7, 9])):
        extra = {} if sampling is None else {"frame_sampling": sampling}
        model = plugin.LongctxAdapter(pretrained=TRAINED, device="cpu", adapter="none", max_frames_num=6, **extra)
        model._inputs("what color is the square ?", [video])
        assert model.last_clip.indices.tolist() == indices
