"""Devices, dtypes and attention backends for adapted models (LLaVA family).

- fp32 / bf16 / fp16: adapted forward and generate run, pooled features and RoPE cos/sin keep the model's dtype and
  device, and the pooled logits match the stock model fed the same pooled features by hand (tests/reference.py).
- accelerate: a checkpoint loaded with `device_map="auto"` and `max_memory` limits that split it between "cpu" and
  "disk" (offload_folder) runs adapted and equals the adapted non-offloaded model; `remove()` gives back
  accelerate's own forward.
- pooling never moves features: every stage type on "meta" tensors stays on "meta" (any hidden `.to(device)` or
  CPU-made index tensor would fail or land elsewhere), in every float dtype.
- flash-attention: importing the package and running an adapted model never imports `flash_attn`, and no library
  code asks for `attn_implementation="flash_attention_2"`. The flash-attention run itself needs a GPU: it is the
  last test here, skipped without CUDA and flash_attn.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
from helpers import cast_inputs
from reference import reference_forward
from transformers import AutoModelForImageTextToText

import longctx_adapter
from longctx_adapter import apply_adapter, get_adapter
from longctx_adapter.ops.pooling import count_tokens, normalize_pooling, pool_video
from longctx_adapter.testing.tiny import TINY_MODEL_TYPES, frames_as_images, hand_inputs, tiny_model

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
ROPE = {"type": "yarn", "visual_window": 16}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# bf16 keeps 8 bits of mantissa, fp16 11: the adapted path and the hand-built reference may round differently.
TOLERANCE = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (5e-2, 5e-2), torch.float16: (5e-3, 5e-3)}
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _features_spy(model):
    """Record what reaches the inner model: the pooled features handed over in mm_encoder_outputs."""
    seen = []

    def hook(module, args, kwargs):
        for output in (kwargs.get("mm_encoder_outputs") or {}).values():
            pooled = output.pooler_output
            seen.extend(pooled if isinstance(pooled, (list, tuple)) else [pooled])

    return seen, model.model.register_forward_pre_hook(hook, with_kwargs=True)


def _rotary_spy(model):
    """Record cos/sin after the adapter's rotary hook (hooks run in registration order: apply the adapter first)."""
    seen = []

    def hook(module, args, output):
        seen.append(output)

    return seen, model.model.language_model.rotary_emb.register_forward_hook(hook)


# --- dtypes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_adapted_model_in_dtype(model_type, dtype):
    model = tiny_model(model_type, seed=0, dtype=dtype)
    inputs = cast_inputs(hand_inputs(model_type, 2, seed=1), dtype)
    stages = normalize_pooling(POOLING)
    with torch.no_grad():
        stock = model(**inputs).logits

    # pooling + visual YaRN: runs, keeps dtype/device everywhere, finite logits in the caller's layout
    with apply_adapter(model, pooling=POOLING, rope=ROPE) as handle:
        features, f_hook = _features_spy(model)
        rotary, r_hook = _rotary_spy(model)
        try:
            with torch.no_grad():
                logits = model(**inputs).logits
            stats = handle.last_stats
            out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        finally:
            f_hook.remove()
            r_hook.remove()
    assert logits.shape == stock.shape and logits.device == stock.device
    assert torch.isfinite(logits).all()
    assert features and all(f.dtype == dtype and f.device.type == "cpu" for f in features)
    assert rotary and all(c.dtype == dtype and s.dtype == dtype for c, s in rotary)
    assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
    extra = model_type == "llava_onevision"  # its one image_newline per video
    assert [s["tokens_after"] for s in stats] == [count_tokens(*s["grid"], stages) + extra for s in stats]
    assert all(s["rope_factor"] > 1 for s in stats)  # the visual window of 16 tokens really was exceeded

    # pooling only: equals the stock model of the same dtype fed the pooled features by hand
    frame_counts = [2]
    ref_logits, maps = reference_forward(model, model_type, inputs, POOLING, frame_counts)
    with apply_adapter(model, pooling=POOLING), torch.no_grad():
        pooled = model(**inputs).logits
    caller, ref = zip(*maps[0])
    rtol, atol = TOLERANCE[dtype]
    torch.testing.assert_close(pooled[0, list(caller)], ref_logits[0, list(ref)], rtol=rtol, atol=atol)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, stock)  # removed: the stock model again


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "stages",
    [
        {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "bilinear"},
        {"type": "progressive", "group": 3, "strides": [2, 3], "mode": "avg"},
        {"type": "progressive", "group": 2, "strides": [3], "mode": "max"},
        [{"type": "temporal", "kernel": 3, "stride": 2}, {"type": "adaptive3d", "output": [2, 3, 3]}],
        {"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 2, 2]},
        {"type": "conv3d", "output": [2, 3, 4]},
    ],
    ids=["bilinear", "avg", "max", "temporal+adaptive3d", "conv3d", "conv3d-output"],
)
@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_pooling_keeps_device_and_dtype(device, stages, dtype):
    """On "meta" every op must stay on the features' device: a tensor made on (or moved to) the CPU would fail."""
    grid = torch.empty(5, 7, 6, 8, dtype=dtype, device=device)
    if device == "cpu":
        grid.normal_()
    out = pool_video(grid, stages).flatten()
    assert out.device == grid.device and out.dtype == dtype
    assert out.shape == (count_tokens(5, 7, 6, stages), 8)


# --- accelerate: device_map split between CPU and disk --------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint):
    return {model_type: tiny_checkpoint(model_type) for model_type in ("llava_onevision", "llava_next")}


def _nbytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.mark.parametrize("model_type", ["llava_onevision", "llava_next"])
def test_cpu_disk_offload_matches_in_memory_model(checkpoints, tmp_path, model_type):
    path = checkpoints[model_type]
    reference = tiny_model(model_type, seed=0)
    budget = {"cpu": _nbytes(reference) // 2, "disk": 100 * _nbytes(reference)}
    config = {"pooling": POOLING, "rope": ROPE}
    inputs = hand_inputs(model_type, 2, batch=2, seed=3, frame_counts=[2, 3] if frames_as_images(model_type) else None)

    with torch.no_grad():
        stock = reference(**inputs).logits
    with apply_adapter(reference, config) as handle:
        with torch.no_grad():
            expected = reference(**inputs).logits
        expected_stats = handle.last_stats
        expected_gen = reference.generate(**inputs, max_new_tokens=3, do_sample=False)

    # the adapter's own loader, passing accelerate's kwargs through
    model = longctx_adapter.from_pretrained(
        path, adapter=config, device_map="auto", max_memory=budget, offload_folder=str(tmp_path / "offload")
    )
    assert set(model.hf_device_map.values()) == {"cpu", "disk"}, model.hf_device_map
    assert any(p.device.type == "meta" for p in model.parameters())  # really offloaded, loaded per forward
    handle = get_adapter(model)
    # accelerate puts its own dispatching forward on the instance; the adapter wraps it and must give it back
    (accelerate_forward,) = [s.previous for s in handle._shadows if s.obj is model and s.name == "forward"]
    assert accelerate_forward is not None
    with torch.no_grad():
        got = model(**inputs).logits
    assert got.device == expected.device
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert handle.last_stats == expected_stats
    assert torch.equal(model.generate(**inputs, max_new_tokens=3, do_sample=False), expected_gen)

    handle.remove()
    assert model.__dict__.get("forward") is accelerate_forward  # accelerate's dispatch hook is back, not ours
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, stock, rtol=1e-5, atol=1e-5)


def test_apply_adapter_on_stock_offloaded_model(checkpoints, tmp_path):
    """apply_adapter after a plain transformers load with a CPU/disk device map (rotary on CPU, layers on disk)."""
    path = checkpoints["llava_onevision"]
    device_map = {
        "model.vision_tower": "cpu",
        "model.multi_modal_projector": "cpu",
        "model.image_newline": "cpu",
        "model.language_model.embed_tokens": "cpu",
        "model.language_model.layers.0": "cpu",
        "model.language_model.layers.1": "disk",
        "model.language_model.norm": "disk",
        "model.language_model.rotary_emb": "cpu",
        "lm_head": "disk",
    }
    model = AutoModelForImageTextToText.from_pretrained(
        path, device_map=device_map, offload_folder=str(tmp_path / "offload")
    )
    reference = tiny_model("llava_onevision", seed=0)
    inputs = hand_inputs("llava_onevision", 3, seed=4)
    with apply_adapter(reference, pooling=POOLING, rope=ROPE), torch.no_grad():
        expected = reference(**inputs).logits
    with apply_adapter(model, pooling=POOLING, rope=ROPE), torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-5, atol=1e-5)


# --- attention backends ---------------------------------------------------------------------------------------


_FLASH_PROBE = """
import json, sys

def snapshot():
    flash = sorted(m for m in sys.modules if m.split(".")[0] in ("flash_attn", "flash_attn_2_cuda"))
    return {"modules": flash, "used": sorted(getattr(sys.modules.get("flash_attn"), "USED", ()))}

import longctx_adapter
from longctx_adapter import apply_adapter, supported_models
from longctx_adapter.registry import family_for
for model_type in supported_models():
    family_for(model_type)  # imports every family patch
report = {"import": snapshot()}
from longctx_adapter.testing.tiny import TINY_MODEL_TYPES, hand_inputs, tiny_model
runs = [(t, "sdpa") for t in TINY_MODEL_TYPES] + [(t, "eager") for t in ("llava", "llava_onevision")]
models = {run: tiny_model(run[0], attn_implementation=run[1]) for run in runs}
for mode in ("stock", "adapted"):
    for (model_type, attn), model in models.items():
        inputs = hand_inputs(model_type, 2)
        handle = apply_adapter(model, pooling=POOLING, rope=ROPE) if mode == "adapted" else None
        model(**inputs)
        model.generate(**inputs, max_new_tokens=2)
        if handle is not None:
            handle.remove()
    report[mode] = snapshot()
print(json.dumps(report))
"""


def test_flash_attn_never_imported(tmp_path):
    """A fresh interpreter whose path has a fake `flash_attn` recording any attribute use: importing the package
    and every family patch imports no flash_attn, and adapted sdpa/eager runs import or touch nothing of it beyond
    what the same stock runs did before them (transformers itself probes the package when it loads model code)."""
    trap = tmp_path / "site" / "flash_attn"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text(
        "USED = set()\n\ndef __getattr__(name):\n    USED.add(name)\n    raise AttributeError(name)\n"
    )
    script = _FLASH_PROBE.replace("POOLING", repr(POOLING)).replace("ROPE", repr(ROPE))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(trap.parent), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import"] == {"modules": [], "used": []}
    assert report["adapted"] == report["stock"]


def test_no_library_code_requires_flash_attention():
    """Nothing in the package imports flash_attn or hard-codes attn_implementation='flash_attention_2'."""
    offenders = []
    for folder in ("longctx_adapter", "patches"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            for needle in ("import flash_attn", "from flash_attn", '"flash_attention_2"', "'flash_attention_2'"):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert not offenders, offenders


def _flash_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _flash_available(), reason="flash-attention 2 needs a CUDA GPU and the flash_attn package")
@pytest.mark.parametrize("model_type", TINY_MODEL_TYPES)
def test_flash_attention_2_identity_and_pooled_on_gpu(model_type):
    """GPU only: with flash_attention_2 the identity is bit-exact and pooling equals sdpa (both in bf16 on CUDA)."""
    inputs = {k: v.cuda() for k, v in cast_inputs(hand_inputs(model_type, 2, batch=2, seed=1), torch.bfloat16).items()}
    flash = tiny_model(model_type, seed=0, dtype=torch.bfloat16, attn_implementation="flash_attention_2").cuda()
    sdpa = tiny_model(model_type, seed=0, dtype=torch.bfloat16, attn_implementation="sdpa").cuda()
    with torch.no_grad():
        stock = flash(**inputs).logits
        with apply_adapter(flash, pooling=None):
            assert torch.equal(flash(**inputs).logits, stock)
        with apply_adapter(flash, pooling=POOLING, rope=ROPE), apply_adapter(sdpa, pooling=POOLING, rope=ROPE):
            got, want = flash(**inputs).logits, sdpa(**inputs).logits
            live = inputs["attention_mask"].bool()
            torch.testing.assert_close(got[live].float(), want[live].float(), rtol=5e-2, atol=5e-2)
            out = flash.generate(**inputs, max_new_tokens=3, do_sample=False)
            assert torch.equal(out[:, : inputs["input_ids"].shape[1]], inputs["input_ids"])
