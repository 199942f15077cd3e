"""Argument checks shared by the command-line tools: argparse types (a bad value is argparse's usage error, status 2,
before anything runs) and up-front checks that name the fix (a model folder of a supported type, matplotlib)."""

from __future__ import annotations

import argparse
import importlib
import json
import os

from longctx_adapter.errors import AdapterError

__all__ = [
    "check_model_folder",
    "device_name",
    "dtype_choice",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "parse_frames",
    "require_matplotlib",
]

#: the extra that installs matplotlib (the plotting commands' one optional dependency)
PLOT_EXTRA = "pip install 'longctx-adapter[plot]' (or pip install matplotlib)"


def _int(text: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (1 or more), got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def dtype_choice(*extra: str):
    """An argparse type accepting the dtype names of profiling.dtypes (and ``extra`` words such as ``auto``)."""
    from longctx_adapter.profiling.dtypes import dtype_name

    def parse(text: str) -> str:
        if text in extra:
            return text
        try:
            dtype_name(text)
        except AdapterError as exc:
            words = f"{', '.join(extra)} or " if extra else ""
            raise argparse.ArgumentTypeError(f"{words}{str(exc).replace('unknown dtype', 'not a dtype:')}") from None
        return text

    return parse


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N, checked against the GPUs this process can see (a missing GPU is a usage error)."""
    import torch

    if text in ("auto", "cpu"):
        return text
    try:
        device = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: no CUDA GPU is visible to this process; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: only {count} CUDA GPU(s) are visible (cuda:0..{count - 1})")
        return text
    if device.type == "mps" and torch.backends.mps.is_available():
        return text
    raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use auto, cpu, cuda or cuda:N")


def check_model_folder(path) -> str:
    """The model type of a local checkpoint folder, or an AdapterError naming what is wrong and what to pass.

    Read from config.json alone (no weights, no transformers auto classes), so a text-only or unknown model is
    refused in one line before anything loads."""
    from longctx_adapter.registry import supported_models

    path = os.fspath(path)
    if not os.path.exists(path):
        raise AdapterError(f"model folder not found: {path} (pass a local checkpoint folder)")
    if not os.path.isdir(path):
        raise AdapterError(f"--model must be a checkpoint folder, got a file: {path}")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise AdapterError(f"{path} has no config.json: pass a checkpoint folder written by save_pretrained")
    try:
        with open(config_path, encoding="utf-8") as fh:
            model_type = json.load(fh).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise AdapterError(f"cannot read {config_path}: {type(exc).__name__}: {exc}") from None
    supported = supported_models()
    if model_type not in supported:
        raise AdapterError(
            f"{path} holds a {model_type!r} model, which longctx-adapter does not adapt (text-only or an unsupported "
            f"family); supported model types: {', '.join(supported)}"
        )
    return model_type


def require_matplotlib(command: str) -> None:
    """Refuse a plotting command before it works when matplotlib is missing, naming the extra to install."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise AdapterError(f"{command} draws plots and needs matplotlib: {PLOT_EXTRA}") from None


def parse_frames(text) -> list[int]:
    """A frame-count list ('8,16,32' or a list) -> sorted distinct positive counts."""
    if isinstance(text, (list, tuple)):
        values = [int(v) for v in text]
    else:
        try:
            values = [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise AdapterError(f"--frames expects integers separated by ',', got {text!r}") from None
    if not values or min(values) < 1:
        raise AdapterError(f"--frames needs positive frame counts, got {text!r}")
    return sorted(dict.fromkeys(values))
