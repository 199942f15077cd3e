"""Fixtures several test files share. A test file that needs other values defines a fixture of the same name,
which takes precedence over these (test_adapter_qwen.py does so for `model_type` and `model`)."""

from __future__ import annotations

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
