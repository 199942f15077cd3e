"""Load-time adapting: longctx_adapter.from_pretrained and patch_transformers / unpatch_transformers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import logits_of
from transformers import (
    AutoModelForImageTextToText,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionForConditionalGeneration,
)

import longctx_adapter
from longctx_adapter import (
    AdapterConfig,
    AdapterError,
    apply_adapter,
    get_adapter,
    patch_transformers,
    supported_models,
    unpatch_transformers,
)
from longctx_adapter.testing.tiny import hand_inputs

OV_POOLING = {"type": "progressive", "group": 2, "strides": [2, 4], "mode": "avg"}
NV_POOLING = {"type": "temporal", "kernel": 2, "stride": 2}


@pytest.fixture(scope="module")
def saved(tiny_checkpoint, tmp_path_factory):
    paths = {model_type: tiny_checkpoint(model_type) for model_type in ("llava_onevision", "llava_next_video")}
    root = tmp_path_factory.mktemp("checkpoints")
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    )
    llama.save_pretrained(root / "llama")
    paths["llama"] = root / "llama"
    return paths


@pytest.fixture
def clean_patch():
    """Guarantee transformers is unpatched before and after a test, whatever the test does."""
    unpatch_transformers()
    yield
    unpatch_transformers()


def _inputs(model_type):
    return hand_inputs(model_type, 2, seed=5)


@pytest.mark.parametrize("model_type, pooling", [("llava_onevision", OV_POOLING), ("llava_next_video", NV_POOLING)])
def test_from_pretrained_with_adapter_equals_apply_on_stock_copy(saved, model_type, pooling):
    path = saved[model_type]
    model = longctx_adapter.from_pretrained(path, adapter={"pooling": pooling})
    handle = get_adapter(model)
    assert handle is not None and not handle._removed
    assert handle.config == AdapterConfig(pooling=pooling)
    stock = AutoModelForImageTextToText.from_pretrained(path)
    assert type(stock) is type(model)
    assert get_adapter(stock) is None
    inputs = _inputs(model_type)
    stock_logits = logits_of(stock, inputs)
    with apply_adapter(stock, {"pooling": pooling}):
        expected = logits_of(stock, inputs)
    got = logits_of(model, inputs)
    assert torch.equal(got, expected)
    assert not torch.equal(got, stock_logits)  # the loaded model really pools
    handle.remove()
    assert torch.equal(logits_of(model, inputs), stock_logits)


def test_from_pretrained_accepts_config_forms_and_hf_kwargs(saved):
    path = saved["llava_next_video"]
    cfg = AdapterConfig(pooling=NV_POOLING)
    for adapter in (cfg, cfg.to_json()):
        model = longctx_adapter.from_pretrained(
            path, adapter=adapter, dtype=torch.bfloat16, attn_implementation="eager"
        )
        assert get_adapter(model).config == cfg
        assert model.dtype == torch.bfloat16
        assert model.config._attn_implementation == "eager"


def test_from_pretrained_none_uses_preset(saved):
    model = longctx_adapter.from_pretrained(saved["llava_next_video"], adapter=None)
    assert get_adapter(model).config == AdapterConfig.preset("llava_next_video")


def test_from_pretrained_preset_refused_on_tiny_onevision_grid(saved):
    # The preset's stride 8 does not fit the tiny 7x7 grid: refused with AdapterError (not clamped, not ignored).
    with pytest.raises(AdapterError, match="7x7"):
        longctx_adapter.from_pretrained(saved["llava_onevision"])


def test_from_pretrained_bad_adapter_config_refused(saved):
    with pytest.raises(AdapterError, match="strdes"):
        longctx_adapter.from_pretrained(
            saved["llava_onevision"], adapter={"pooling": {"type": "progressive", "strdes": [2]}}
        )


def test_from_pretrained_unsupported_model(saved):
    with pytest.raises(AdapterError, match="llama") as err:
        longctx_adapter.from_pretrained(saved["llama"])
    for model_type in supported_models():
        assert model_type in str(err.value)


def test_from_pretrained_missing_folder_says_so(tmp_path):
    for missing in (tmp_path / "no" / "such", str(tmp_path / "nothing"), "/no/such/dir", "./no_such_dir", "a/b/c"):
        with pytest.raises(AdapterError, match="does not exist") as err:
            longctx_adapter.from_pretrained(missing)
        assert "repo" not in str(err.value).lower()
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(AdapterError, match="is a file; pass the checkpoint folder"):
        longctx_adapter.from_pretrained(tmp_path / "weights.bin")


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen2_vl", "qwen3_vl"])
def test_apply_adapter_on_the_wrong_object_says_what_to_pass(model_type):
    from longctx_adapter.testing.tiny import tiny_model
    from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_tiny_model

    model = qwen_tiny_model(model_type) if model_type in QWEN_TINY_TYPES else tiny_model(model_type)
    with pytest.raises(AdapterError, match=r"inner model .* pass the whole model that has generate\(\)"):
        apply_adapter(model.model)
    assert longctx_adapter.get_adapter(model.model) is None
    for hub_id in ("some/hub-id", Path("some/folder")):
        with pytest.raises(AdapterError, match=r"takes a loaded model.*from_pretrained\("):
            apply_adapter(hub_id)
    with pytest.raises(AdapterError, match="takes a loaded transformers model"):
        apply_adapter(object())


def test_two_loaded_models_are_adapted_independently(saved):
    path = saved["llava_onevision"]
    a = longctx_adapter.from_pretrained(path, adapter={"pooling": OV_POOLING})
    b = longctx_adapter.from_pretrained(path, adapter={"pooling": {"type": "temporal", "kernel": 2, "stride": 2}})
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    inputs = _inputs("llava_onevision")
    ha, hb = get_adapter(a), get_adapter(b)
    assert ha is not hb and ha.model is a and hb.model is b
    la, lb, ls = logits_of(a, inputs), logits_of(b, inputs), logits_of(stock, inputs)
    assert not torch.equal(la, lb)
    # 7x7 grid, 2 frames: stride 2 -> 4x4, stride 4 -> 2x2, plus the one newline; temporal 2 -> 1 frame of 7x7
    assert [s["tokens_after"] for s in ha.last_stats] == [16 + 4 + 1]
    assert [s["tokens_after"] for s in hb.last_stats] == [49 + 1]
    ha.remove()
    assert torch.equal(logits_of(a, inputs), ls)
    assert torch.equal(logits_of(b, inputs), lb)  # b keeps its adapter


# --- patch_transformers ------------------------------------------------------------------------------------------


def test_patch_transformers_adapts_class_and_auto_loads(saved, clean_patch):
    path = saved["llava_onevision"]
    before_cls = LlavaOnevisionForConditionalGeneration.__dict__.get("from_pretrained")
    before_nv = LlavaNextVideoForConditionalGeneration.__dict__.get("from_pretrained")
    before_func = LlavaOnevisionForConditionalGeneration.from_pretrained.__func__
    cfg = AdapterConfig(pooling=OV_POOLING)
    inputs = _inputs("llava_onevision")
    stock = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    with apply_adapter(stock, cfg):
        expected = logits_of(stock, inputs)

    patch_transformers(cfg)
    try:
        direct = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
        auto = AutoModelForImageTextToText.from_pretrained(path)
        nv = LlavaNextVideoForConditionalGeneration.from_pretrained(saved["llava_next_video"], dtype=torch.float32)
        for model in (direct, auto):
            assert isinstance(model, LlavaOnevisionForConditionalGeneration)
            assert get_adapter(model) is not None and get_adapter(model).config == cfg
            assert torch.equal(logits_of(model, inputs), expected)
        assert get_adapter(direct) is not get_adapter(auto)
        assert get_adapter(nv) is not None and get_adapter(nv).config == cfg
        # longctx_adapter.from_pretrained while patched: its own adapter wins
        own = longctx_adapter.from_pretrained(path, adapter={"pooling": None})
        assert get_adapter(own).config == AdapterConfig()
        with pytest.raises(AdapterError, match="already"):
            patch_transformers(cfg)
    finally:
        unpatch_transformers()

    assert LlavaOnevisionForConditionalGeneration.__dict__.get("from_pretrained") is before_cls
    assert LlavaNextVideoForConditionalGeneration.__dict__.get("from_pretrained") is before_nv
    assert LlavaOnevisionForConditionalGeneration.from_pretrained.__func__ is before_func
    later = LlavaOnevisionForConditionalGeneration.from_pretrained(path)
    later_auto = AutoModelForImageTextToText.from_pretrained(path)
    assert get_adapter(later) is None and get_adapter(later_auto) is None
    assert torch.equal(logits_of(later, inputs), logits_of(stock, inputs))
    # models loaded while patched keep their adapters
    assert get_adapter(direct) is not None
    unpatch_transformers()  # idempotent


def test_double_patch_refused_and_state_kept(saved, clean_patch):
    patch_transformers({"pooling": OV_POOLING})
    patched = LlavaOnevisionForConditionalGeneration.__dict__["from_pretrained"]
    with pytest.raises(AdapterError, match="unpatch_transformers"):
        patch_transformers({"pooling": NV_POOLING})
    assert LlavaOnevisionForConditionalGeneration.__dict__["from_pretrained"] is patched
    model = LlavaOnevisionForConditionalGeneration.from_pretrained(saved["llava_onevision"])
    assert get_adapter(model).config == AdapterConfig(pooling=OV_POOLING)


def test_patch_transformers_bad_config_patches_nothing(clean_patch):
    before = LlavaOnevisionForConditionalGeneration.__dict__.get("from_pretrained")
    with pytest.raises(AdapterError, match="median"):
        patch_transformers({"pooling": {"type": "median"}})
    assert LlavaOnevisionForConditionalGeneration.__dict__.get("from_pretrained") is before
    patch_transformers({"pooling": None})  # not left half-patched: a fresh patch works


def test_patch_transformers_without_config_uses_each_family_preset(saved, clean_patch):
    patch_transformers()
    nv = LlavaNextVideoForConditionalGeneration.from_pretrained(saved["llava_next_video"])
    assert get_adapter(nv).config == AdapterConfig.preset("llava_next_video")
    with pytest.raises(AdapterError, match="7x7"):  # the OneVision preset does not fit the tiny grid
        AutoModelForImageTextToText.from_pretrained(saved["llava_onevision"])


def test_load_time_adapting_takes_a_scorer(saved, clean_patch):
    """Question-guided stages at load time: from_pretrained(scorer=...) and patch_transformers(scorer=...) equal
    apply_adapter(scorer=...) on a stock load; without a scorer they are refused."""
    from longctx_adapter.hooks.scorer import Scorer
    from longctx_adapter.testing.tiny_scorer import tiny_clip, tiny_scorer_tokenizer

    scorer = Scorer(tiny_clip(seed=3), tiny_scorer_tokenizer())
    path = saved["llava_next_video"]
    pooling = {"type": "prompt_guided", "kernel": [1, 2, 2], "stride": [1, 2, 2]}
    inputs = _inputs("llava_next_video")
    stock = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    with apply_adapter(stock, pooling=pooling, scorer=scorer):
        with torch.no_grad():
            expected = stock(**inputs, question="red").logits
    loaded = longctx_adapter.from_pretrained(path, adapter={"pooling": pooling}, scorer=scorer)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs, question="red").logits, expected)
    with pytest.raises(AdapterError, match="scor"):
        longctx_adapter.from_pretrained(path, adapter={"pooling": pooling})
    patch_transformers({"pooling": pooling}, scorer=scorer)
    patched = LlavaNextVideoForConditionalGeneration.from_pretrained(path)
    unpatch_transformers()
    with torch.no_grad():
        assert torch.equal(patched(**inputs, question="red").logits, expected)
