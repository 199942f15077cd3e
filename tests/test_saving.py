"""Saving adapted models: stock weights plus `longctx_adapter.json`; loading them back with and without the adapter."""

from __future__ import annotations

import json
import os

import pytest
import torch
from helpers import logits_of
from safetensors import safe_open
from transformers import AutoModelForImageTextToText

import longctx_adapter
from longctx_adapter import (
    AdapterConfig,
    AdapterError,
    apply_adapter,
    get_adapter,
    patch_transformers,
    unpatch_transformers,
)
from longctx_adapter.saving import ADAPTER_CONFIG_NAME, read_adapter_config
from longctx_adapter.testing.tiny import TINY_MODEL_TYPES, hand_inputs, tiny_model

POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}
ROPE = {"type": "yarn", "visual_window": 16}
CONFIG = AdapterConfig(pooling=POOLING, rope=ROPE)


def _tensors(folder) -> tuple[dict, dict]:
    """Every tensor of every safetensors file in a folder, plus each file's metadata."""
    tensors, metadata = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with safe_open(os.path.join(folder, name), framework="pt") as f:
                metadata[name] = f.metadata()
                for key in f.keys():
                    tensors[key] = f.get_tensor(key)
    return tensors, metadata


def _json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def saved(request, tmp_path_factory):
    """One stock save and one adapted save (after an adapted call, so hooks and caches have run) per class."""
    model_type = request.param
    root = tmp_path_factory.mktemp(f"save_{model_type}")
    stock = tiny_model(model_type, seed=0)
    stock.save_pretrained(root / "stock")
    model = tiny_model(model_type, seed=0)
    inputs = hand_inputs(model_type, 2, seed=1)
    stock_logits = logits_of(stock, inputs)
    handle = apply_adapter(model, CONFIG)
    adapted_logits = logits_of(model, inputs)
    assert not torch.equal(adapted_logits, stock_logits)
    model.save_pretrained(root / "adapted")
    return {
        "type": model_type,
        "stock": root / "stock",
        "adapted": root / "adapted",
        "model": model,
        "handle": handle,
        "inputs": inputs,
        "stock_logits": stock_logits,
        "adapted_logits": adapted_logits,
    }


def test_adapted_save_writes_stock_weights_and_adapter_json(saved):
    stock_dir, adapted_dir = saved["stock"], saved["adapted"]
    assert sorted(os.listdir(adapted_dir)) == sorted([*os.listdir(stock_dir), ADAPTER_CONFIG_NAME])
    stock_tensors, stock_meta = _tensors(stock_dir)
    adapted_tensors, adapted_meta = _tensors(adapted_dir)
    assert stock_tensors and sorted(adapted_tensors) == sorted(stock_tensors)  # no adapter state, no hook buffers
    for key, value in stock_tensors.items():
        assert adapted_tensors[key].dtype == value.dtype and torch.equal(adapted_tensors[key], value), key
    assert adapted_meta == stock_meta
    for name in os.listdir(stock_dir):
        if name.endswith(".json"):
            assert _json(adapted_dir / name) == _json(stock_dir / name), name  # config.json etc. stay stock
    # the in-memory state dict has no adapter entries either
    assert sorted(saved["model"].state_dict()) == sorted(tiny_model(saved["type"], seed=0).state_dict())
    # the JSON is the handle's resolved config, readable by AdapterConfig
    assert _json(adapted_dir / ADAPTER_CONFIG_NAME) == saved["handle"].config.to_dict()
    assert read_adapter_config(adapted_dir / ADAPTER_CONFIG_NAME) == saved["handle"].config


def test_plain_transformers_load_gives_the_stock_model(saved):
    model = AutoModelForImageTextToText.from_pretrained(saved["adapted"])
    assert get_adapter(model) is None and "forward" not in model.__dict__
    assert torch.equal(logits_of(model, saved["inputs"]), saved["stock_logits"])


def test_longctx_from_pretrained_uses_the_saved_config(saved):
    model = longctx_adapter.from_pretrained(saved["adapted"])
    handle = get_adapter(model)
    assert handle.config == saved["handle"].config
    assert torch.equal(logits_of(model, saved["inputs"]), saved["adapted_logits"])
    # an explicit adapter wins over the saved one
    off = longctx_adapter.from_pretrained(saved["adapted"], adapter={"pooling": None, "rope": None})
    assert get_adapter(off).config == AdapterConfig()
    assert torch.equal(logits_of(off, saved["inputs"]), saved["stock_logits"])


def test_patch_transformers_uses_the_saved_config(saved):
    unpatch_transformers()
    patch_transformers()
    try:
        model = AutoModelForImageTextToText.from_pretrained(saved["adapted"])
    finally:
        unpatch_transformers()
    assert get_adapter(model).config == saved["handle"].config


def test_without_saved_json_the_preset_is_used(saved):
    if saved["type"] == "llava_onevision":
        with pytest.raises(AdapterError, match="7x7"):  # the preset's stride 8 does not fit the tiny grid
            longctx_adapter.from_pretrained(saved["stock"])
        return
    model = longctx_adapter.from_pretrained(saved["stock"])
    assert get_adapter(model).config == AdapterConfig.preset(saved["type"])


def test_remove_restores_stock_save_pretrained(tmp_path):
    model = tiny_model("llava_next_video", seed=0)
    handle = apply_adapter(model, CONFIG)
    assert "save_pretrained" in model.__dict__
    handle.remove()
    assert "save_pretrained" not in model.__dict__
    model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out" / ADAPTER_CONFIG_NAME).exists()


def test_save_options_pass_through(tmp_path):
    model = tiny_model("llava_next_video", seed=0)
    with apply_adapter(model, CONFIG):
        model.save_pretrained(tmp_path / "worker", is_main_process=False)  # non-main ranks write no adapter file
        model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="200KB")  # positional/str path and kwargs
    assert not (tmp_path / "worker" / ADAPTER_CONFIG_NAME).exists()
    files = os.listdir(tmp_path / "sharded")
    assert ADAPTER_CONFIG_NAME in files and "model.safetensors.index.json" in files
    loaded = longctx_adapter.from_pretrained(tmp_path / "sharded")
    assert get_adapter(loaded).config == CONFIG


def test_save_pretrained_push_to_hub_uploads_the_json(tmp_path, monkeypatch):
    """push_to_hub=True uploads the files HF saw change during the save: the adapter JSON must be among them."""
    import transformers.modeling_utils as modeling_utils

    class Repo:
        repo_id = "user/tiny"

    class Api:
        def create_repo(self, repo_id, **kwargs):
            return Repo()

    uploaded = {}

    def fake_upload(self, working_dir, repo_id, files_timestamps, **kwargs):
        uploaded["files"] = sorted(
            f
            for f in os.listdir(working_dir)
            if f not in files_timestamps or os.path.getmtime(os.path.join(working_dir, f)) > files_timestamps[f]
        )

    if not hasattr(modeling_utils, "hf_api") or not hasattr(modeling_utils, "create_and_tag_model_card"):
        pytest.skip("this transformers release saves to the Hub through other helpers")
    monkeypatch.setattr(modeling_utils, "hf_api", Api)

    class Card:
        def save(self, path):
            pass

    monkeypatch.setattr(modeling_utils, "create_and_tag_model_card", lambda *a, **k: Card())
    model = tiny_model("llava_next_video", seed=0)
    monkeypatch.setattr(type(model), "_upload_modified_files", fake_upload)
    with apply_adapter(model, CONFIG):
        model.save_pretrained(tmp_path / "tiny", push_to_hub=True)
    assert ADAPTER_CONFIG_NAME in uploaded["files"] and "model.safetensors" in uploaded["files"]


def test_bad_saved_json_names_file_and_key(tmp_path):
    folder = tmp_path / "bad"
    model = tiny_model("llava_next_video", seed=0)
    with apply_adapter(model, CONFIG):
        model.save_pretrained(folder)
    data = _json(folder / ADAPTER_CONFIG_NAME)
    data["pooling"][0]["strdes"] = [1, 2]
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match=r"longctx_adapter\.json.*strdes"):
        longctx_adapter.from_pretrained(folder)
    data = _json(folder / ADAPTER_CONFIG_NAME)
    del data["pooling"][0]["strdes"]
    data["rope"]["visual_windw"] = 3
    (folder / ADAPTER_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(AdapterError, match="visual_windw"):
        longctx_adapter.from_pretrained(folder)
    (folder / ADAPTER_CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterError, match="JSON"):
        longctx_adapter.from_pretrained(folder)
