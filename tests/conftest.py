"""Fixtures several test files share. A test file that needs other values defines a fixture of the same name,
which takes precedence over these (test_adapter_qwen.py does so for `model_type` and `model`)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import pytest

from longctx_adapter.testing.tiny import TINY_MODEL_TYPES, tiny_model, tiny_processor


@pytest.fixture(scope="module", params=TINY_MODEL_TYPES)
def model_type(request):
    """Every tiny LLaVA-family class in turn."""
    return request.param


@pytest.fixture(scope="module")
def model(model_type):
    """The tiny random model of `model_type` (seed 0), shared by the tests of one module."""
    return tiny_model(model_type, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """`tiny_checkpoint(model_type, processor=False)`: a folder holding the saved tiny model (seed 0), and its
    processor when asked; written once per session (per xdist worker). Tests only read these folders."""
    saved = {}

    def get(model_type: str, processor: bool = False):
        key = (model_type, processor)
        if key not in saved:
            path = tmp_path_factory.mktemp(f"ckpt_{model_type}{'_proc' if processor else ''}")
            tiny_model(model_type, seed=0).save_pretrained(path)
            if processor:
                tiny_processor(model_type).save_pretrained(path)
            saved[key] = path
        return saved[key]

    return get


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """A saved tiny LLaVA-OneVision with its processor: what the eval commands load with `--model`."""
    return tiny_checkpoint("llava_onevision", processor=True)


class _StubLmms:
    """The part of lmms-eval's ``lmms`` base class the plugin uses, where lmms-eval is not installed."""

    def __init__(self) -> None:
        self._rank, self._world_size, self.task_dict = 0, 1, {}
        self.cache_hook = types.SimpleNamespace(add_partial=lambda *args: None)

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size


@pytest.fixture
def plugin(monkeypatch):
    """The lmms-eval plugin module, with lmms-eval's base class and loguru stubbed where they are not installed."""
    if importlib.util.find_spec("lmms_eval") is None:
        api = types.ModuleType("lmms_eval.api.model")
        api.lmms = _StubLmms
        for name in ("lmms_eval", "lmms_eval.api"):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
        monkeypatch.setitem(sys.modules, "lmms_eval.api.model", api)
    if importlib.util.find_spec("loguru") is None:
        loguru = types.ModuleType("loguru")
        loguru.logger = types.SimpleNamespace(info=print, warning=print, debug=print)
        monkeypatch.setitem(sys.modules, "loguru", loguru)
    name = "longctx_adapter.eval.models.longctx_adapter"
    sys.modules.pop(name, None)
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
