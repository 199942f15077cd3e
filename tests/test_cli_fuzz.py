"""Fuzz every CLI command in process: hypothesis draws argument vectors (valid, out of range, wrong type, missing
files, corrupt files) and every outcome must be one of
  - status 0 with the command's outputs, holding exactly the values asked for (fewer frames only with a warning),
  - argparse's usage error (status 2, its `error:` line),
  - status 2 with one `longctx-adapter <command>: error: ...` line,
never a Python exception (a traceback), never a hang (an alarm per example), never a substituted value.
Derandomized and bounded (examples per command below; tiny models; `plan` on real-size configs, estimated). `demo` is fuzzed on its argument checks
only: a valid demo runs fresh processes for tens of seconds.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from longctx_adapter.eval.niah import write_niah
from longctx_adapter.eval.video import write_video

from longctx_adapter.cli.main import main
from longctx_adapter.testing.tiny import synthetic_video

VIDEO_FRAMES = 6
TRIED: dict[str, int] = {}  # argument vectors per command (printed by each test: pytest -s)
OUTCOMES: dict[str, int] = {}  # ok / usage error / one-line error, over all commands


def _fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def files(tmp_path_factory, checkpoint):
    """Every input the fuzzer picks from: good ones and each kind of bad one."""
    root = tmp_path_factory.mktemp("fuzz")
    from PIL import Image
    from transformers import LlamaConfig, LlamaForCausalLM

    text_only = root / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(text_only)
    corrupt_model = root / "corrupt_model"
    corrupt_model.mkdir()
    (corrupt_model / "config.json").write_text("{not json")
    (root / "empty_dir").mkdir()
    image = root / "still.png"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(image)
    (root / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
    (root / "empty.mp4").write_bytes(b"")
    video = write_video(root / "clip.mp4", synthetic_video(VIDEO_FRAMES, 32, 32, seed=1), fps=4)
    data = open(video, "rb").read()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    write_niah(root / "niah", 2, haystack_frames=8, size=32, num_options=2, depths=(0.0, 1.0), seed=1)
    (root / "corrupt.jsonl").write_text('{"id": "a", "question": \n')
    (root / "results.jsonl").write_text("".join(
        json.dumps({"item": f"i{d}", "frames": f, "config": "c", "depth": d, "correct": bool(f % 3)}) + "\n"
        for d in (0.0, 1.0) for f in (2, 4)))
    (root / "plain_results.jsonl").write_text(json.dumps({"item": "i", "frames": 2, "config": "c"}) + "\n")
    return {
        "model": {"ok": str(checkpoint), "text_only": str(text_only), "missing": str(root / "nope"),
                  "file": video, "corrupt": str(corrupt_model), "empty_dir": str(root / "empty_dir")},
        "video": {"ok": video, "image": str(image), "garbage": str(root / "garbage.mp4"),
                  "empty": str(root / "empty.mp4"), "truncated": str(root / "truncated.mp4"),
                  "missing": str(root / "none.mp4"), "dir": str(root / "empty_dir")},
        "dataset": {"ok": str(root / "niah"), "missing": str(root / "no_data"), "corrupt": str(root / "corrupt.jsonl"),
                    "empty_dir": str(root / "empty_dir")},
        "results": {"ok": str(root / "results.jsonl"), "missing": str(root / "none.jsonl"),
                    "corrupt": str(root / "corrupt.jsonl"), "no_niah": str(root / "plain_results.jsonl")},
    }


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang


def _invoke(argv: list[str]) -> tuple[int, str, str]:
    """main(argv) in this process: (status, stdout, stderr); an exception other than SystemExit fails the test."""
    out, err = io.StringIO(), io.StringIO()
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(120)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exit_:
                status = exit_.code
    except _Hang:
        pytest.fail(f"hang (> 120 s): {argv}")
    except Exception as exc:  # a traceback is the one outcome never allowed
        pytest.fail(f"{type(exc).__name__}: {exc}\nargv: {argv}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return status, out.getvalue(), err.getvalue()


def _check(argv, status, out, err) -> bool:
    """The outcome is a clean one; returns True on success (status 0)."""
    assert "Traceback" not in err and "Traceback" not in out, argv
    assert status in (0, 2), (argv, status, err)
    kind = "ok" if status == 0 else "usage" if "usage:" in err else "error"
    OUTCOMES[f"{argv[0]} {kind}"] = OUTCOMES.get(f"{argv[0]} {kind}", 0) + 1
    if status == 0:
        return True
    ours = [line for line in err.splitlines() if line.startswith("longctx-adapter")]
    errors = [line for line in ours if ": error: " in line]
    assert len(errors) == 1, (argv, err)  # argparse's usage error, or our one line
    assert len(errors[0]) > len("longctx-adapter x: error: ") + 10, errors[0]
    return False


def _warned_frames(err: str) -> bool:
    return "warning: asked for" in err


MAYBE = st.booleans()


def _vector(draw, command: list[str], spec) -> tuple[list[str], dict]:
    """An argument vector: ``spec`` is ``[(flag, good values, bad values, required)]``; about half the vectors are
    all good, the others have one bad value (out of range, wrong type, missing or corrupt file). Optional flags are
    left out at random (their defaults are then checked). Returns argv and the value given per flag (None: left
    out)."""
    bad = None if draw(MAYBE) else draw(st.sampled_from(range(len(spec))))
    argv, given_ = list(command), {}
    for index, (flag, good, wrong, required) in enumerate(spec):
        use_bad = index == bad and wrong
        if not (required or use_bad or draw(MAYBE)):
            given_[flag] = None
            continue
        value = draw(st.sampled_from(wrong if use_bad else good))
        argv += [flag, value]
        given_[flag] = value
    return argv, given_


def _ints(text) -> list[int]:
    return sorted({int(v) for v in text.split(",") if v.strip()})


BAD_INTS = ["0", "-1", "x", "1.5", "", "1e3"]
BAD_FRAME_LISTS = ["a,b", "0", "-2,4", " ", "4;8", ""]
GOOD_CONFIGS = ["none", "progressive:2,4,4", "yarn-visual@32", '{"type":"temporal","kernel":2}']
BAD_CONFIGS = ["progressive:2,8,4", "zz", '{"type":"temporal","stride":-1}', "{", "none+zz", "saved",
               '{"type":"temporal","stride":100000000}']


# ----------------------------------------------------------------------------------------------- run


def test_fuzz_run(files):
    models, videos = files["model"], files["video"]

    @_fuzz(24)
    @given(st.data())
    def check(data):
        argv, v = _vector(data.draw, ["run"], [
            ("--model", [models["ok"]], [models[k] for k in models if k != "ok"], True),
            ("--video", [videos["ok"], videos["ok"], videos["image"]], [videos[k] for k in videos if k not in
                                                                          ("ok", "image")], True),
            ("--question", ["what color is the square ?", "?" * 40], [], True),
            ("--frames", ["1", "3", "6", "9", "100000"], BAD_INTS, False),
            ("--config", GOOD_CONFIGS, BAD_CONFIGS, True),
            ("--max-new-tokens", ["1", "2"], ["0", "-3", "x"], True),
            ("--dtype", ["auto", "fp32", "float32"], ["int8", "bf16x"], False),
            ("--device", ["cpu", "auto"], ["cuda:9", "tpu", "meta"], False),
            ("--backend", ["pyav"], ["opencv"], False),
        ])
        if data.draw(MAYBE) and v["--frames"] is None:  # rate sampling instead of a count
            fps = data.draw(st.sampled_from(["0.5", "2", "100", "0", "-1", "nan", "inf", "x"]))
            argv += ["--fps", fps, "--max-frames", data.draw(st.sampled_from(["2", "4", "0"]))]
            v["--fps"] = fps
        TRIED["run"] = TRIED.get("run", 0) + 1
        status, out, err = _invoke(argv)
        if _check(argv, status, out, err):
            match = re.search(r"frames        : (\d+) of (\d+)", out)
            assert match and "adapter report:" in out, out
            got, total = int(match[1]), int(match[2])
            assert total == (1 if v["--video"] == videos["image"] else VIDEO_FRAMES)
            if v.get("--fps") is None:
                asked = int(v["--frames"] or 32)  # 32: the documented default
                assert got == min(asked, total)  # exactly what was asked, or every frame with a warning
                assert _warned_frames(err) == (asked > total)
            if v["--config"] == "none":
                assert "none (stock model)" in out and "visual tokens : " in out

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


# ----------------------------------------------------------------------------------------------- niah


def test_fuzz_niah_generate():
    @_fuzz(40)
    @given(st.data())
    def check(data):
        out_dir = tempfile.mkdtemp(prefix="niah-fuzz-")
        try:
            out = data.draw(st.sampled_from([out_dir + "/ds"] * 5 + [out_dir + "/file/ds"]))  # under a file: refused
            Path(out_dir, "file").write_text("")
            argv, v = _vector(data.draw, ["niah", "generate", "--out", out], [
                ("--items", ["1", "3", "7"], BAD_INTS, False),
                ("--depths", ["0,0.5,1", "0.3", "0,0,0", "1"], ["2", "-1,0", "a,b", "", "nan"], False),
                ("--haystack-frames", ["4", "9", "16"], BAD_INTS, False),
                ("--size", ["16", "33"], BAD_INTS + ["3"], False),
                ("--options", ["2", "4", "5"], BAD_INTS + ["1", "50"], False),
                ("--distractors", ["0", "1", "2"], ["-1", "x", "40"], False),
                ("--format", ["npy", "mp4"], ["gif"], False),
                ("--seed", ["0", "7"], ["-1", "s"], False),
            ])
            TRIED["niah generate"] = TRIED.get("niah generate", 0) + 1
            status, stdout, err = _invoke(argv)
            if _check(argv, status, stdout, err):
                assert out.endswith("/ds") and "/file/" not in out
                folder = Path(out_dir) / "ds"
                records = [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]
                depths = [float(d) for d in (v["--depths"] or "0,0.25,0.5,0.75,1").split(",")]
                assert len(records) == (int(v["--items"]) if v["--items"] else len(depths))
                written = json.loads((folder / "niah.json").read_text())
                assert written["haystack_frames"] == int(v["--haystack-frames"] or 64)
                assert written["size"] == int(v["--size"] or 64) and written["seed"] == int(v["--seed"] or 0)
                assert all(len(r["options"]) == int(v["--options"] or 4) for r in records)
                assert all(len(r["niah"].get("distractors", [])) == int(v["--distractors"] or 0) for r in records)
                assert {r["niah"]["depth"] for r in records} <= set(depths)
                assert (folder / f"haystack.{v['--format'] or 'npy'}").is_file()
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


def test_fuzz_niah_export_and_plot(files):
    datasets, results = files["dataset"], files["results"]

    @_fuzz(30)
    @given(st.data())
    def check(data):
        out_dir = tempfile.mkdtemp(prefix="niah-fuzz-")
        try:
            if data.draw(MAYBE):
                argv, v = _vector(data.draw, ["niah", "export", "--out", out_dir + "/v"], [
                    ("--dataset", [datasets["ok"]], [datasets[k] for k in datasets if k != "ok"], True),
                    ("--frames", ["2", "2,4", "5,3", "12"], BAD_FRAME_LISTS, True),
                    ("--format", ["npy", "mp4"], ["avi"], False),
                ])
                TRIED["niah export"] = TRIED.get("niah export", 0) + 1
                status, out, err = _invoke(argv)
                if _check(argv, status, out, err):
                    asked = _ints(v["--frames"])
                    lines = (Path(out_dir) / "v" / "annotations.jsonl").read_text().splitlines()
                    got = [json.loads(line)["meta"]["frames"] for line in lines]
                    assert got == [min(n, 8) for n in asked] * 2  # 2 items; the haystack has 8 frames
                    assert _warned_frames(err) == (max(asked) > 8)
                    suffix = v["--format"] or "mp4"
                    assert len(list((Path(out_dir) / "v").glob(f"*.{suffix}"))) == 2 * len(asked)
            else:
                argv, v = _vector(data.draw, ["niah", "plot", "--out", out_dir + "/h.png"], [
                    ("--results", [results["ok"]], [results[k] for k in results if k != "ok"], True),
                    ("--config", ["c"], ["other"], False),
                    ("--value", ["correct"], ["gen_correct", "x"], False),
                ])
                TRIED["niah plot"] = TRIED.get("niah plot", 0) + 1
                status, out, err = _invoke(argv)
                if _check(argv, status, out, err):
                    assert (Path(out_dir) / "h.png").read_bytes()[:4] == b"\x89PNG"
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


# ----------------------------------------------------------------------------------------------- ablate


def test_fuzz_ablate(files):
    models, datasets = files["model"], files["dataset"]

    @_fuzz(10)
    @given(st.data())
    def check(data):
        out_dir = tempfile.mkdtemp(prefix="ablate-fuzz-")
        try:
            argv, v = _vector(data.draw, ["ablate", "--out", out_dir + "/o", "--no-progress"], [
                ("--model", [models["ok"]], [models[k] for k in ("text_only", "missing", "corrupt", "file")], True),
                ("--dataset", [datasets["ok"]], [datasets[k] for k in datasets if k != "ok"], True),
                ("--limit", ["1"], ["0", "x"], True),
                ("--frames", ["2", "2,4", "12"], BAD_FRAME_LISTS, True),
                ("--grid", ["pooling=none,progressive:2,4,2", "rope=none,yarn-visual@16"],
                 ["pooling=progressive:2,8,4", "size=1", "pooling=", "pooling"], False),
                ("--config", GOOD_CONFIGS, BAD_CONFIGS, False),
                ("--mode", ["loglik", "generate"], ["x"], False),
                ("--max-new-tokens", ["1"], ["0"], False),
            ])
            TRIED["ablate"] = TRIED.get("ablate", 0) + 1
            status, out, err = _invoke(argv)
            if _check(argv, status, out, err):
                folder = Path(out_dir) / "o"
                summary = json.loads((folder / "summary.json").read_text())
                asked = _ints(v["--frames"])
                assert sorted({row["frames"] for row in summary}) == asked  # rows carry the frames asked for
                records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
                assert not any(r.get("error") for r in records), records  # refusable cells never reach the run
                assert all(r["frames_sampled"] == min(r["frames"], 8) for r in records)  # haystack: 8 frames
                assert _warned_frames(err) == (max(asked) > 8)
                assert (folder / "accuracy.png").is_file()
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


# ----------------------------------------------------------------------------------------------- profile, demo


def test_fuzz_profile(files):
    models = files["model"]

    @_fuzz(16)
    @given(st.data())
    def check(data):
        out_dir = tempfile.mkdtemp(prefix="profile-fuzz-")
        try:
            argv, v = _vector(data.draw, ["profile", "--out", out_dir + "/p", "--estimate-only"], [
                ("--model", ["llava-onevision-7b", "qwen2-vl-7b", models["ok"]],
                 ["no-such-preset", models["text_only"], models["file"], models["corrupt"], models["missing"]], True),
                ("--frames", ["8", "4,16", "64,8"], BAD_FRAME_LISTS, False),
                ("--config", GOOD_CONFIGS, BAD_CONFIGS, False),
                ("--dtype", ["bf16", "fp32"], ["int8"], False),
                ("--frame-size", ["448x448", "64x32"], ["448", "axb", "0x4"], False),
                ("--prefill-chunk-size", ["128"], ["0", "x"], False),
            ])
            TRIED["profile"] = TRIED.get("profile", 0) + 1
            status, out, err = _invoke(argv)
            if _check(argv, status, out, err):
                rows = json.loads((Path(out_dir) / "p" / "rows.json").read_text())
                assert sorted({r["frames"] for r in rows}) == _ints(v["--frames"] or "8,16,32")
                assert (Path(out_dir) / "p" / "memory.png").is_file()
        finally:
            shutil.rmtree(out_dir, ignore_errors=True)

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


def test_fuzz_plan(files):
    from longctx_adapter.profiling.planner import parse_memory

    models = files["model"]

    @_fuzz(16)
    @given(st.data())
    def check(data):
        argv, v = _vector(data.draw, ["plan", "--json"], [
            ("--model", ["llava-onevision-7b", "qwen2-vl-7b", models["ok"]],
             ["no-such-preset", models["text_only"], models["file"], models["corrupt"], models["missing"]], True),
            ("--frames", ["1", "64", "2048"], BAD_INTS, True),
            ("--memory", ["24GB", "80 GiB", "40960MB"], ["0GB", "24XB", "lots", "-8GB", ""], True),
            ("--reserve", ["0", "0.1", "0.25"], ["1", "-0.1", "x", "nan"], False),
            ("--kv-bits", ["4", "4,2", "none"], ["x", "4;2"], False),
            ("--dtype", ["bf16", "fp32"], ["int8"], False),
        ])
        TRIED["plan"] = TRIED.get("plan", 0) + 1
        status, out, err = _invoke(argv)
        if _check(argv, status, out, err):
            chosen = json.loads(out)
            reserve = float(v["--reserve"] or 0.10)  # 0.10: the documented default
            assert chosen["peak_bytes"] <= parse_memory(v["--memory"]) * (1 - reserve)  # it fits, as claimed
            assert chosen["visual_tokens"] >= 1

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")


def test_fuzz_demo_arguments():
    """Invalid demo arguments only (a valid demo runs fresh processes for tens of seconds; test_tiny_trained.py
    covers it)."""

    @_fuzz(15)
    @given(st.data())
    def check(data):
        draw = data.draw
        argv = ["demo"]
        flag = draw(st.sampled_from(["--frames", "--questions", "--new-tokens", "--seed", "--config"]))
        bad = {"--frames": ["0", "-2", "x", "2.5"], "--questions": ["0", "-1", "y"], "--new-tokens": ["0", "x"],
               "--seed": ["-1", "s"], "--config": ["zz", "{", "progressive:2,99,4"]}[flag]
        argv += [flag, draw(st.sampled_from(bad))]
        if draw(st.booleans()):
            argv.append("--random")
        if flag == "--config" and "--random" not in argv:
            argv += ["--frames", "2"]  # refused before any run starts either way
        TRIED["demo"] = TRIED.get("demo", 0) + 1
        status, out, err = _invoke(argv)
        assert not _check(argv, status, out, err), f"{argv} ran: {out[-300:]}"

    check()
    print(f"\nCLI fuzz vectors so far: {TRIED}; outcomes: {OUTCOMES}")
