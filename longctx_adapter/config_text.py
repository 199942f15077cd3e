"""The one text grammar of adapter configs, shared by every command (`run`, `ablate`, `profile`, `demo`) and the
lmms-eval plugin's `adapter=` model argument. The reference is docs/configuration.md.

    CONFIG  :=  preset | saved | none | JSON | FILE.json | TERM ("+" TERM)*
    TERM    :=  STAGE | ROPE | chunk:N | lastlogits | pool_single_images | pooling=VALUE | rope=VALUE | none
    STAGE   :=  TYPE[:ARGS]            each stage class parses its own ARGS (`progressive:2,8,4`, `temporal:2,2`)
    ROPE    :=  KIND[-SCOPE][@WINDOW] | KIND:WINDOW[:SCOPE]     KIND yarn|linear|ntk|pi|interpolate, SCOPE all|visual

`/` may stand for `,` inside a term (`progressive:2/8/4`), for places where commas separate other things (lmms-eval
model arguments, `--grid` value lists). A JSON text or file holds a full AdapterConfig dict, one stage dict, a list
of stage dicts, or null (the stock model, like `none`). Without a config, a command on a model folder uses the folder's saved
`longctx_adapter.json`, else the family preset (`default_config`).

Config layer: imports only the config and the ops (stage registry), so it parses without transformers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from longctx_adapter.config import AdapterConfig, known_visual_window
from longctx_adapter.errors import AdapterError
from longctx_adapter.ops.stages import STAGES, stage_from_dict

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "GRID_AXES",
    "ROPE_SHORTHANDS",
    "config_source",
    "default_config",
    "format_config",
    "parse_axis_value",
    "parse_config",
    "parse_grid_axis",
    "parse_pooling",
    "parse_rope",
    "resolve_window",
    "saved_config_path",
    "split_values",
]

#: the file beside a saved model's config.json that holds its AdapterConfig
ADAPTER_CONFIG_NAME = "longctx_adapter.json"
#: config fields an ablation grid can vary
GRID_AXES = ("pooling", "rope")
_ROPE_KINDS = {"yarn": "yarn", "linear": "linear", "ntk": "ntk", "pi": "interpolate", "interpolate": "interpolate"}
ROPE_SHORTHANDS = tuple(f"{t}-{s}" for t in ("yarn", "linear", "ntk", "pi") for s in ("all", "visual"))
_STOCK = ("none", "stock", "off", "null")


def _usage() -> str:
    stages = " | ".join(cls.shorthand_help or cls.type for cls in STAGES.values())
    return (
        f"use preset, saved, none, a JSON config or stage (inline or a .json file), or terms joined with '+': "
        f"{stages} | yarn-all | yarn-visual | linear-all | ntk-visual | pi-all ...[@WINDOW] | yarn:WINDOW[:all|visual] "
        "| chunk:N | lastlogits | pool_single_images"
    )


def _int(text: str, what: str) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        raise AdapterError(f"{what}: expected an integer, got {text!r}") from None


def _json(text: str, what: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{what} {text!r} is not valid JSON: {exc}") from exc


# ---------------------------------------------------------------------------------------------------------------------
# Saved configs and the default.


def saved_config_path(folder) -> str | None:
    """The `longctx_adapter.json` of a local model folder, or None when it has none (or `folder` is no folder)."""
    if folder is None or not os.path.isdir(os.fspath(folder)):
        return None
    path = os.path.join(os.fspath(folder), ADAPTER_CONFIG_NAME)
    return path if os.path.isfile(path) else None


def _read_file(path) -> AdapterConfig | None:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise AdapterError(f"cannot read config file {os.fspath(path)!r}: {exc.strerror or exc}") from None
    try:
        return _from_data(_json(text, f"config file {os.fspath(path)!r}:"))
    except AdapterError as err:
        raise AdapterError(f"{os.fspath(path)}: {err}") from None


def default_config(model_type: str | None, folder=None, visual_window: int | None = None) -> AdapterConfig | None:
    """No config given: the folder's saved `longctx_adapter.json` wins; else the family preset."""
    saved = saved_config_path(folder)
    if saved is not None:
        return resolve_window(_read_file(saved), model_type, visual_window)
    return parse_config("preset", model_type, visual_window=visual_window)


def config_source(spec, folder=None) -> str:
    """Where `parse_config(spec, folder=folder)` takes the config from, in words (for reports)."""
    if spec is None:
        return f"saved {ADAPTER_CONFIG_NAME}" if saved_config_path(folder) else "family preset"
    if isinstance(spec, str) and spec.strip().lower() == "saved":
        return f"saved {ADAPTER_CONFIG_NAME}"
    if isinstance(spec, str) and spec.strip().lower() == "preset":
        return "family preset"
    return "--config"


# ---------------------------------------------------------------------------------------------------------------------
# Whole configs.


def _from_data(data) -> AdapterConfig | None:
    """JSON data: a full config dict, one stage dict, a list of stages, or null (the stock model)."""
    if data is None:
        return None
    if isinstance(data, list) or (isinstance(data, Mapping) and "type" in data):
        return AdapterConfig(pooling=data)
    if isinstance(data, Mapping):
        return AdapterConfig.from_dict(data)
    raise AdapterError(f"a config must be a JSON object, a list of stages or null, got {type(data).__name__}")


def _is_file_spec(text: str) -> bool:
    return text.lower().endswith(".json") or os.path.isfile(text)


def parse_config(
    spec, model_type: str | None = None, *, folder=None, visual_window: int | None = None
) -> AdapterConfig | None:
    """Any config form of the grammar -> an AdapterConfig, or None for the stock model (no adapter).

    spec: None (the default: `default_config`), text (the grammar above), an AdapterConfig, a dict or a list of
    stages. model_type: for `preset` and to fill a rope's visual window from the preset (else `apply_adapter` does
    it); folder: the model folder `saved` (and the default) read from; visual_window: fills a rope without one.
    """
    if spec is None:
        return default_config(model_type, folder, visual_window)
    if isinstance(spec, AdapterConfig):
        return resolve_window(spec, model_type, visual_window)
    if isinstance(spec, (Mapping, list, tuple)):
        return resolve_window(_from_data(spec), model_type, visual_window)
    text = str(spec).strip()
    word = text.lower()
    if not text:
        raise AdapterError(f"empty config; {_usage()}")
    if word in _STOCK:
        return None
    if word == "preset":
        if model_type is None:
            raise AdapterError("'preset' needs the model type; give a model (folder) or another config")
        return resolve_window(AdapterConfig.preset(model_type), model_type, visual_window)
    if word == "saved":
        path = saved_config_path(folder)
        if path is None:
            where = "no model folder was given" if folder is None else f"{os.fspath(folder)!r} has none"
            raise AdapterError(f"'saved' reads the model folder's {ADAPTER_CONFIG_NAME}, but {where}; use preset")
        return resolve_window(_read_file(path), model_type, visual_window)
    if text[:1] in "{[":
        return resolve_window(_from_data(_json(text, "config")), model_type, visual_window)
    if _is_file_spec(text):
        if not os.path.isfile(text):
            raise AdapterError(f"config file {text!r} does not exist; give an existing .json file or a shorthand")
        return resolve_window(_read_file(text), model_type, visual_window)
    return resolve_window(_parse_terms(text), model_type, visual_window)


def _parse_terms(text: str) -> AdapterConfig | None:
    pooling: list | None = None
    fields: dict = {}
    for term in text.split("+"):
        term = term.strip()
        key, sep, value = term.partition("=")
        if sep and key.strip().lower() in GRID_AXES:
            axis, term = key.strip().lower(), value.strip()
        else:
            axis = _term_axis(term)
        if axis == "rope":
            fields["rope"] = parse_rope(term)
        elif axis == "pooling":
            pooling = (pooling or []) + (parse_pooling(term) or [])
        elif axis == "chunk":
            fields["vision_chunk_frames"] = _int(term.partition(":")[2], "chunk:N")
        else:
            fields[axis] = True
    if pooling is None and not fields:
        return None
    return AdapterConfig(pooling=pooling or None, **fields)


def _term_axis(term: str) -> str:
    name, _, args = term.partition(":")
    name = name.strip().lower()
    head = name.split("-")[0].split("@")[0]
    if head in _ROPE_KINDS:
        return "rope"
    if name == "chunk" and args:
        return "chunk"
    if name == "lastlogits" and not args:
        return "last_logits_only"
    if name == "pool_single_images" and not args:
        return "pool_single_images"
    if name in STAGES or name in _STOCK or term[:1] in "{[":
        return "pooling"
    raise AdapterError(f"unknown config term {term!r}; {_usage()}")


# ---------------------------------------------------------------------------------------------------------------------
# Pooling and RoPE values (also the values of an ablation grid's axes).


def parse_pooling(value) -> list[dict] | None:
    """A pooling value -> a list of stage dicts, or None for `none`: `TYPE[:ARGS]` (each stage's own shorthand),
    several joined with '+', or JSON (a stage or a list of stages)."""
    text = str(value).strip()
    if text.lower() in _STOCK:
        return None
    if text[:1] in "{[":
        data = _json(text, "pooling")
        return [data] if isinstance(data, Mapping) else data
    stages: list[dict] = []
    for term in text.split("+"):
        name, sep, args = term.strip().partition(":")
        cls = STAGES.get(name.strip().lower())
        if cls is None:
            raise AdapterError(
                f"unknown pooling value {term.strip()!r}; use none, JSON, or one of "
                + ", ".join(c.shorthand_help or c.type for c in STAGES.values())
            )
        data = cls.parse_shorthand(args) if sep else {"type": cls.type}
        stages.append(stage_from_dict(data).to_dict())
    return stages


def parse_rope(value, visual_window: int | None = None) -> dict | None:
    """A RoPE value -> a rope dict (window from `@N` / `yarn:N` or `visual_window` when given), or None."""
    text = str(value).strip()
    if text.lower() in _STOCK:
        return None
    if text.startswith("{"):
        data = _json(text, "rope")
        if visual_window is not None and data.get("visual_window") is None:
            data = {**data, "visual_window": int(visual_window)}
        return data
    body, _, window = text.partition("@")
    if window:
        visual_window = _int(window, "rope @WINDOW")
    if ":" in body:  # KIND:WINDOW[:SCOPE]
        kind, _, rest = body.partition(":")
        win, _, scope = rest.partition(":")
        if win:
            visual_window = _int(win, f"{kind}:WINDOW")
        body = f"{kind}-{scope or 'all'}"
    kind, _, scope = body.lower().partition("-")
    scope = scope or "all"
    if kind not in _ROPE_KINDS or scope not in ("all", "visual"):
        raise AdapterError(
            f"unknown rope value {text!r}; use none, {', '.join(ROPE_SHORTHANDS)} (optionally @WINDOW), "
            "KIND:WINDOW[:SCOPE] or JSON"
        )
    rope = {"type": _ROPE_KINDS[kind], "scope": scope}
    if visual_window is not None:
        rope["visual_window"] = int(visual_window)
    return rope


def resolve_window(config: AdapterConfig | None, model_type: str | None, visual_window: int | None = None):
    """Fill the rope window from `visual_window` or the model's preset; refuse now (not mid-run) when unknown.

    Without a model type and a window the config is returned as is (apply_adapter fills or refuses it)."""
    if config is None or config.rope is None or config.rope.get("visual_window") is not None:
        return config
    window = visual_window if visual_window is not None else known_visual_window(model_type or "")
    if window is None:
        if model_type is None:
            return config
        rope = config.rope
        if rope.get("factor") is not None and rope["type"] in ("linear", "ntk"):
            return config  # a fixed factor needs no window
        raise AdapterError(
            f"rope {rope['type']}-{rope['scope']} needs the model's visual training window and the {model_type!r} "
            "preset does not know it; pass --visual-window N (tokens: frames seen in training x tokens per frame) "
            "or write the value as yarn-visual@N"
        )
    return config.replace(rope={**dict(config.rope), "visual_window": int(window)})


# ---------------------------------------------------------------------------------------------------------------------
# Writing configs back, and lists of values.


def format_config(config: AdapterConfig | None) -> str:
    """The shortest text that `parse_config` turns back into `config`: shorthand terms where every part has one,
    else JSON."""
    if config is None:
        return "none"
    data = config.to_dict()
    terms = []
    for stage in config.pooling or ():
        text = stage_from_dict(stage).shorthand()
        if text is None:
            return json.dumps(data, sort_keys=True)
        terms.append(text)
    if config.rope is not None:
        rope = dict(config.rope)
        kind = {"interpolate": "pi"}.get(rope["type"], rope["type"])
        plain = {"type", "scope", "visual_window", "mrope_axes", "factor", "alpha", "beta", "attention_factor"}
        defaults = {"factor": None, "mrope_axes": ["t"], "alpha": 1.0, "beta": 32.0, "attention_factor": 1.0}
        if set(rope) - plain or any(k in rope and rope[k] != v for k, v in defaults.items()):
            return json.dumps(data, sort_keys=True)
        window = f"@{rope['visual_window']}" if rope.get("visual_window") is not None else ""
        terms.append(f"{kind}-{rope['scope']}{window}")
    if config.vision_chunk_frames is not None:
        terms.append(f"chunk:{config.vision_chunk_frames}")
    if config.last_logits_only:
        terms.append("lastlogits")
    if config.pool_single_images:
        terms.append("pool_single_images")
    return "+".join(terms) if terms else "{}"


def split_values(text: str) -> list[str]:
    """``none,progressive:2,8,4,yarn-all`` -> ``['none', 'progressive:2,8,4', 'yarn-all']``: a bare integer
    continues the value before it; JSON values (``{...}``) are kept whole."""
    values: list[str] = []
    depth, current = 0, ""
    for char in text:
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    out: list[str] = []
    for value in (v.strip() for v in values):
        if not value:
            continue
        if out and value.lstrip("-").isdigit():
            out[-1] = f"{out[-1]},{value}"
        else:
            out.append(value)
    return out


def parse_grid_axis(text: str) -> tuple[str, list[str]]:
    """``pooling=none,progressive:2,8,4`` -> ``('pooling', ['none', 'progressive:2,8,4'])``."""
    axis, sep, values = str(text).partition("=")
    axis = axis.strip().lower()
    if not sep or axis not in GRID_AXES:
        raise AdapterError(f"--grid {text!r}: expected AXIS=V1,V2,... with AXIS one of {list(GRID_AXES)}")
    parsed = split_values(values)
    if not parsed:
        raise AdapterError(f"--grid {text!r} lists no values")
    return axis, parsed


def parse_axis_value(axis: str, value: str, visual_window: int | None = None):
    """One value of a grid axis, parsed with the grammar of that config field."""
    if axis == "pooling":
        return parse_pooling(value)
    if axis == "rope":
        return parse_rope(value, visual_window)
    raise AdapterError(f"unknown grid axis {axis!r}; use {list(GRID_AXES)}")
