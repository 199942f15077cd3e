"""The command line on bad input: argparse usage errors (status 2) for bad values, one line naming the fix for bad
model folders and missing optional packages, a one-line warning when fewer frames exist than asked for, and help
text that describes every command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from longctx_adapter.eval.runner import run_question
from longctx_adapter.eval.video import write_video

from longctx_adapter.cli.main import build_parser, main
from longctx_adapter.demo.trained import model_dir
from longctx_adapter.registry import supported_models
from longctx_adapter.testing.tiny import synthetic_video


@pytest.fixture(scope="module")
def text_only(tmp_path_factory):
    """A saved tiny LlamaForCausalLM: a valid checkpoint folder of a model type the adapter does not take."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llama")
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("v") / "clip.mp4", synthetic_video(6, 32, 32, seed=1), fps=4)


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    return err


def test_help_describes_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and "later" not in out
    commands = build_parser()._subparsers._group_actions[0].choices
    assert set(commands) == {"demo", "profile", "plan", "run", "niah", "ablate"}
    head = " ".join(out.split("positional arguments")[0].split())
    assert all(f"{name} (" in head for name in commands)  # the description says what each one does


RUN = ["run", "--model", "M", "--video", "V", "--question", "q"]
ABLATE = ["ablate", "--model", "M", "--dataset", "D", "--out", "O"]


@pytest.mark.parametrize(("argv", "names"), [
    ([*RUN, "--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer"),
    ([*RUN, "--max-new-tokens", "-3"], "--max-new-tokens: must be a positive integer"),
    ([*RUN, "--frames", "0"], "--frames: must be a positive integer"),
    ([*RUN, "--fps", "nan"], "--fps: must be a positive finite number"),
    ([*RUN, "--dtype", "int8"], "--dtype: auto or not a dtype: 'int8'"),
    ([*RUN, "--device", "meta"], "--device: unsupported device 'meta'"),
    ([*RUN, "--device", "tpu"], "--device: not a device: 'tpu'"),
    ([*RUN, "--device", "gpu0"], "--device: not a device: 'gpu0'"),
    (["demo", "--frames", "0"], "--frames: must be a positive integer"),
    (["demo", "--questions", "x"], "--questions: expected an integer, got 'x'"),
    (["niah", "generate", "--out", "O", "--items", "0"], "--items: must be a positive integer"),
    (["niah", "generate", "--out", "O", "--distractors", "-1"], "--distractors: must be 0 or more"),
    ([*ABLATE, "--limit", "0"], "--limit: must be a positive integer"),
    ([*ABLATE, "--max-new-tokens", "0"], "--max-new-tokens: must be a positive integer"),
    (["profile", "--model", "M", "--out", "O", "--layers", "0"], "--layers: must be a positive integer"),
    (["profile", "--model", "M", "--out", "O", "--dtype", "int4"], "--dtype: not a dtype: 'int4'"),
])
def test_bad_values_are_usage_errors(argv, names, capsys):
    err = _usage_error(argv, capsys)
    assert f"argument {names}" in err


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    err = _usage_error([*RUN, "--device", "cuda"], capsys)
    assert "argument --device: 'cuda': no CUDA GPU is visible to this process; use cpu or auto" in err


@pytest.mark.parametrize("command", ["run", "ablate", "profile"])
def test_text_only_model_folder_is_one_line_naming_the_supported_types(command, text_only, clip, tmp_path, capsys):
    argv = {"run": ["run", "--model", str(text_only), "--video", clip, "--question", "q", "--config", "none"],
            "ablate": ["ablate", "--model", str(text_only), "--dataset", str(tmp_path), "--out", str(tmp_path / "o")],
            "profile": ["profile", "--model", str(text_only), "--out", str(tmp_path / "o"), "--estimate-only"]}
    assert main(argv[command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds a 'llama' model" in err
    assert f"supported model types: {', '.join(supported_models())}" in err
    assert not (tmp_path / "o").exists()


def test_max_frames_without_fps_is_refused_not_ignored(clip, checkpoint, capsys):
    argv = ["run", "--model", str(checkpoint), "--video", clip, "--question", "q", "--frames", "4", "--max-frames", "2"]
    assert main(argv) == 2
    assert "--max-frames caps --fps sampling" in capsys.readouterr().err


def test_output_path_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["niah", "generate", "--out", str(tmp_path / "afile" / "ds")]) == 2
    err = capsys.readouterr().err
    assert err == f"longctx-adapter niah generate: error: Not a directory: {tmp_path / 'afile' / 'ds'} (check the paths given)\n"


def test_model_argument_that_is_a_file_or_missing(clip, tmp_path, capsys):
    assert main(["run", "--model", clip, "--video", clip, "--question", "q"]) == 2
    assert "--model must be a checkpoint folder, got a file" in capsys.readouterr().err
    assert main(["run", "--model", str(tmp_path / "nope"), "--video", clip, "--question", "q"]) == 2
    assert "model folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["run", "--model", str(tmp_path / "empty"), "--video", clip, "--question", "q"]) == 2
    assert "has no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["ablate", "--model", "{ckpt}", "--dataset", "{tmp}", "--out", "{tmp}/o"],
    ["profile", "--model", "{ckpt}", "--out", "{tmp}/o", "--estimate-only"],
    ["niah", "plot", "--results", "{tmp}/r.jsonl", "--out", "{tmp}/o/x.png"],
])
def test_plot_commands_check_matplotlib_before_working(argv, checkpoint, tmp_path, monkeypatch, capsys):
    (tmp_path / "r.jsonl").write_text(json.dumps({"item": "a", "frames": 2, "config": "c", "depth": 0.0}) + "\n")
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib raises ImportError
    argv = [a.format(ckpt=checkpoint, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs matplotlib: pip install 'longctx-adapter[plot]'" in err
    assert not (tmp_path / "o").exists()


def test_more_frames_than_the_video_has_is_one_warning_line(checkpoint, tmp_path, capsys):
    from PIL import Image

    image = tmp_path / "still.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    argv = ["run", "--model", str(checkpoint), "--video", str(image), "--question", "q", "--frames", "8",
            "--config", "none", "--max-new-tokens", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    ours = [line for line in captured.err.splitlines() if line.startswith("longctx-adapter")]
    assert ours == ["longctx-adapter run: warning: asked for 8 frames but the video has 1; sampling all 1 (no frame "
                    "repeated)"]
    assert "frames        : 1 of 1 " in captured.out and "of 8" not in captured.out


def test_run_stops_at_the_checkpoints_answer_length(clip, capsys):
    """The shipped tiny model has no end token; its generation config declares one-word answers, which run keeps
    unless --max-new-tokens says otherwise."""
    report = run_question(model_dir(), clip, "what color is the square ?", frames=4, config="none")
    assert len(report["answer"].split()) == 1
    longer = run_question(model_dir(), clip, "what color is the square ?", frames=4, config="none", max_new_tokens=3)
    assert len(longer["answer"].split()) == 3
    capsys.readouterr()
