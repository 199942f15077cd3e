"""transformers versions and model layouts: the supported range is declared once, enforced on import and on apply,
and every family patch refuses a model that lacks an attribute it hooks (naming it) before touching anything."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
import tomllib
import torch
from helpers import own_hooks
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import longctx_adapter
from longctx_adapter import AdapterError, apply_adapter, get_adapter, patch_transformers, unpatch_transformers
from longctx_adapter.compat import SKIP_ENV, SUPPORTED_TRANSFORMERS, check_transformers_version, is_supported
from longctx_adapter.registry import family_for
from longctx_adapter.testing.tiny import TINY_MODEL_TYPES, hand_inputs, tiny_model
from longctx_adapter.testing.tiny_qwen import QWEN_TINY_TYPES, qwen_tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
POOLING = {"type": "progressive", "group": 2, "strides": [1, 2], "mode": "avg"}


def test_pyproject_declares_the_range_the_code_enforces():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = [Requirement(dep).specifier for dep in project["dependencies"] if Requirement(dep).name == "transformers"]
    assert specs == [SpecifierSet(SUPPORTED_TRANSFORMERS)]
    assert is_supported(sys.modules["transformers"].__version__), (
        "the installed transformers must be inside the declared range"
    )


@pytest.mark.parametrize(
    "version, ok",
    [
        ("4.57.1", False),
        ("5.0.0", False),
        ("5.20.0", False),  # LLaVA-NeXT-Video features were per-video splits until 5.21
        ("5.23.0", False),  # no `cache` argument until 5.24
        ("5.24.0", True),
        ("5.30.2", True),
        ("5.31.0.dev0", True),  # a source build of a future 5.x
        ("6.0.0", False),
        ("6.0.0.dev0", False),
        ("not-a-version", False),
    ],
)
def test_is_supported(version, ok):
    assert is_supported(version) is ok


@pytest.fixture
def old_transformers(monkeypatch):
    monkeypatch.delenv(SKIP_ENV, raising=False)
    # sys.modules["transformers"] is what `import transformers` gives now (importing some HF processors swaps the
    # lazy module object, so a module-level `import transformers` in this file may hold a stale one)
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.19.0")


def test_apply_adapter_refuses_unsupported_transformers(old_transformers):
    model = tiny_model("llava_next_video", seed=0)
    before = dict(model.__dict__)
    with pytest.raises(AdapterError, match=re.escape(SUPPORTED_TRANSFORMERS)) as err:
        apply_adapter(model, pooling=POOLING)
    assert "5.19.0" in str(err.value)
    assert dict(model.__dict__) == before and get_adapter(model) is None


def test_loaders_refuse_unsupported_transformers(old_transformers, tmp_path):
    with pytest.raises(AdapterError, match=re.escape(SUPPORTED_TRANSFORMERS)):
        longctx_adapter.from_pretrained(tmp_path)  # refused before anything is read
    unpatch_transformers()
    with pytest.raises(AdapterError, match=re.escape(SUPPORTED_TRANSFORMERS)):
        patch_transformers()
    unpatch_transformers()


def test_skip_env_allows_an_untested_release(old_transformers, monkeypatch):
    monkeypatch.setenv(SKIP_ENV, "1")
    check_transformers_version()
    model = tiny_model("llava_next_video", seed=0)
    with apply_adapter(model, pooling=POOLING) as handle:
        model(**hand_inputs("llava_next_video", 2))
        assert handle.last_stats


def test_import_refuses_unsupported_transformers():
    """A fresh interpreter: importing the public API under an unsupported transformers raises, naming the range;
    the pure ops layer and the config still import there (a serving engine may pin another release)."""
    script = f"""
import os, sys
import transformers
transformers.__version__ = "6.1.0"
import longctx_adapter.ops.pooling, longctx_adapter.config
print("ops imported")
try:
    from longctx_adapter import apply_adapter
except Exception as err:
    print(type(err).__name__, "|", err)
else:
    print("imported")
os.environ[{SKIP_ENV!r}] = "1"
for name in [m for m in sys.modules if m.startswith("longctx_adapter")]:
    del sys.modules[name]
from longctx_adapter import apply_adapter
print("imported with skip")
"""
    env = {k: v for k, v in os.environ.items() if k != SKIP_ENV}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    ops, first, second = result.stdout.strip().splitlines()[-3:]
    assert ops == "ops imported"
    assert first.startswith("AdapterError |") and SUPPORTED_TRANSFORMERS in first and "6.1.0" in first
    assert second == "imported with skip"


# --- attributes every family patch hooks --------------------------------------------------------------------


def _hooks(model) -> list:
    return [
        (
            name,
            own_hooks(m._forward_hooks),
            own_hooks(m._forward_pre_hooks),
            sorted(k for k in m.__dict__ if not k.startswith("_")),
        )
        for name, m in model.named_modules()
    ]


class _Missing:
    """Make `parent.name` disappear for this instance only: a submodule is deleted, a method is masked by a
    property of a throwaway subclass that raises AttributeError (so hasattr is False)."""

    def __init__(self, parent, name):
        self.parent, self.name = parent, name

    def __enter__(self):
        parent, name = self.parent, self.name
        if isinstance(parent, torch.nn.Module) and name in parent._modules:
            self.restore = list(parent._modules.items())  # put back in place: named_modules() order matters
            delattr(parent, name)
        else:
            self.restore = None
            self.cls = type(parent)

            def missing(self_):
                raise AttributeError(name)

            parent.__class__ = type(self.cls.__name__, (self.cls,), {name: property(missing)})
        assert not hasattr(parent, name)

    def __exit__(self, *exc):
        if self.restore is not None:
            self.parent._modules.clear()
            self.parent._modules.update(self.restore)
        else:
            self.parent.__class__ = self.cls


def _required(model_type):
    return [(model_type, dotted) for dotted in family_for(model_type).required]


def _tiny(model_type):
    return qwen_tiny_model(model_type, seed=0) if model_type in QWEN_TINY_TYPES else tiny_model(model_type, seed=0)


@pytest.mark.parametrize(
    "model_type, dotted",
    [case for t in (*TINY_MODEL_TYPES, *QWEN_TINY_TYPES) for case in _required(t)],
    ids=lambda v: str(v),
)
def test_missing_required_attribute_is_named_and_model_untouched(model_type, dotted):
    model = _tiny(model_type)
    *path, name = dotted.split(".")
    parent = model
    for part in path:
        parent = getattr(parent, part)
    before = _hooks(model), dict(model.__dict__)
    with _Missing(parent, name):
        with pytest.raises(AdapterError, match=re.escape(repr(dotted))):
            apply_adapter(model, pooling=POOLING, rope={"type": "yarn", "visual_window": 16})
        assert get_adapter(model) is None
    assert (_hooks(model), dict(model.__dict__)) == before
    with apply_adapter(model, pooling=POOLING):  # the restored model adapts normally
        if model_type in TINY_MODEL_TYPES:
            model(**hand_inputs(model_type, 2))
    assert (_hooks(model), dict(model.__dict__)) == before
