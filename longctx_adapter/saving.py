"""Saving an adapted model: stock weights plus the adapter config as JSON beside them.

The adapter owns no parameters or buffers (it pools features and rewrites cos/sin in hooks), so HF's own
`save_pretrained` already writes the stock weights. The handle wraps `save_pretrained` on the instance (restored by
`remove()`) so that it also writes `longctx_adapter.json`, the resolved AdapterConfig, next to `config.json`.

- `longctx_adapter.from_pretrained(folder)` (adapter=None) applies that saved config; without the file, the preset.
- Plain `transformers` loading ignores the file and gives the stock model.
- `model.push_to_hub(...)` saves through the wrapped method, so the JSON is uploaded too; so does
  `save_pretrained(..., push_to_hub=True)` (the JSON is written before HF uploads the modified files).
"""

from __future__ import annotations

import functools
import inspect
import os

from longctx_adapter.config import AdapterConfig
from longctx_adapter.config_text import ADAPTER_CONFIG_NAME
from longctx_adapter.errors import AdapterError
from longctx_adapter.shadow import shadowed

_HUB_KEYS = ("revision", "cache_dir", "local_files_only", "token", "subfolder")


def write_adapter_config(save_directory, config: AdapterConfig) -> str:
    """Write `config` as JSON into `save_directory`; returns the file path."""
    os.makedirs(save_directory, exist_ok=True)
    path = os.path.join(os.fspath(save_directory), ADAPTER_CONFIG_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.write(config.to_json(indent=2, sort_keys=True) + "\n")
    return path


def read_adapter_config(path) -> AdapterConfig:
    """Load an AdapterConfig saved by an adapted model's save_pretrained; errors name the file and the bad key."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return AdapterConfig.from_json(text)
    except AdapterError as err:
        raise AdapterError(f"{path}: {err}") from None


def find_saved_config(name_or_path, **hub_kwargs) -> str | None:
    """The path of a saved `longctx_adapter.json` for a local folder or a Hub repo, or None when there is none."""
    hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in _HUB_KEYS and v is not None}
    if os.path.isdir(os.fspath(name_or_path)):
        local = os.path.join(os.fspath(name_or_path), hub_kwargs.get("subfolder", ""), ADAPTER_CONFIG_NAME)
        return local if os.path.isfile(local) else None
    try:
        from transformers.utils import cached_file

        return cached_file(
            name_or_path,
            ADAPTER_CONFIG_NAME,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **hub_kwargs,
        )
    except Exception:  # no such repo, offline, gated: there is no saved adapter config to use
        return None


def wrap_save_pretrained(handle, original):
    """save_pretrained that also writes the handle's config (on the main process only)."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def save_pretrained(*args, **kwargs):
        bound = signature.bind_partial(*args, **kwargs).arguments
        directory = bound.get("save_directory")
        if directory is None or os.path.isfile(os.fspath(directory)):
            return original(*args, **kwargs)  # let HF report the bad path its own way
        if not bound.get("is_main_process", True):
            return original(*args, **kwargs)
        if not bound.get("push_to_hub", False) or "_upload_modified_files" not in dir(handle.model):
            result = original(*args, **kwargs)
            write_adapter_config(directory, handle.config)
            return result
        # push_to_hub=True: HF snapshots file times, saves, then uploads what changed; write the JSON in between.
        upload = handle.model._upload_modified_files

        def write_then_upload(*a, **kw):
            write_adapter_config(directory, handle.config)
            return upload(*a, **kw)

        with shadowed(handle.model, "_upload_modified_files", write_then_upload):
            result = original(*args, **kwargs)
        write_adapter_config(directory, handle.config)
        return result

    return save_pretrained
