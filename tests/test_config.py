"""AdapterConfig: frozen plain data, serialization round trips, defaults, presets, refusals that name the bad key,
and every form apply_adapter accepts a config in."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter, get_adapter, supported_models
from longctx_adapter.testing.tiny import hand_inputs, tiny_model

# --- independent expectations of what normalization does to one stage ---------------------------------------


def _triple(value):
    return [value] * 3 if isinstance(value, int) else list(value)


def expected_stage(stage: dict) -> dict:
    """The normalized stage written out by hand from the rules in docs/configuration.md (defaults filled, ints -> triples)."""
    kind = stage["type"]
    if kind == "progressive":
        return {
            "type": "progressive",
            "group": stage.get("group", 4),
            "strides": list(stage.get("strides", [2, 8])),
            "mode": stage.get("mode", "bilinear"),
        }
    if kind == "temporal":
        kernel, stride = stage.get("kernel"), stage.get("stride")
        if kernel is None and stride is None:
            kernel = stride = 2
        elif kernel is None:
            kernel = stride
        elif stride is None:
            stride = kernel
        return {"type": "temporal", "kernel": kernel, "stride": stride}
    if kind == "adaptive3d":
        return {"type": "adaptive3d", "output": _triple(stage["output"])}
    assert kind == "conv3d"
    if "output" in stage:
        out = {"type": "conv3d", "output": _triple(stage["output"])}
        for key in ("kernel", "stride"):
            if key in stage:
                out[key] = _triple(stage[key])
        return out
    kernel = _triple(stage["kernel"]) if "kernel" in stage else None
    stride = _triple(stage["stride"]) if "stride" in stage else None
    kernel = kernel or stride or [2, 3, 3]
    stride = stride or kernel
    return {"type": "conv3d", "kernel": kernel, "stride": stride}


# --- hypothesis strategies for valid stages of all four types -------------------------------------------------

small = st.integers(1, 6)
FIELDS = {f.name for f in dataclasses.fields(AdapterConfig)}


@st.composite
def progressive_stage(draw):
    stage = {"type": "progressive"}
    group = draw(st.integers(1, 6))
    if draw(st.booleans()):
        stage["group"] = group
    else:
        group = 4
    if draw(st.booleans()):
        stage["strides"] = draw(st.lists(small, min_size=1, max_size=group))
    elif group < 2:
        stage["strides"] = [2]  # the default [2, 8] needs group >= 2
    if draw(st.booleans()):
        stage["mode"] = draw(st.sampled_from(["bilinear", "avg", "max"]))
    return stage


@st.composite
def temporal_stage(draw):
    stride = draw(small)
    kernel = stride + draw(st.integers(0, 3))
    stage = {"type": "temporal"}
    choice = draw(st.sampled_from(["both", "kernel", "stride", "none"]))
    if choice in ("both", "kernel"):
        stage["kernel"] = kernel
    if choice in ("both", "stride"):
        stage["stride"] = stride
    return stage


def _int_or_triple(values):
    return st.one_of(values, st.lists(values, min_size=3, max_size=3))


@st.composite
def adaptive_stage(draw):
    return {"type": "adaptive3d", "output": draw(_int_or_triple(small))}


@st.composite
def conv3d_stage(draw):
    stage = {"type": "conv3d"}
    if draw(st.booleans()):
        stage["output"] = draw(_int_or_triple(small))
        extra = draw(st.sampled_from([None, "kernel", "stride"]))
        if extra:
            stage[extra] = draw(_int_or_triple(small))
        return stage
    strides = draw(st.lists(small, min_size=3, max_size=3))
    kernels = [s + draw(st.integers(0, 2)) for s in strides]
    choice = draw(st.sampled_from(["both", "kernel", "stride", "none"]))
    if choice in ("both", "kernel"):
        stage["kernel"] = kernels
    if choice in ("both", "stride"):
        stage["stride"] = strides
    if choice == "kernel" and len(set(kernels)) == 1 and draw(st.booleans()):
        stage["kernel"] = kernels[0]  # a single int means the same on every axis
    return stage


uniform_stage = st.one_of(temporal_stage(), adaptive_stage(), conv3d_stage())


@st.composite
def stage_lists(draw):
    stages = draw(st.lists(uniform_stage, max_size=3))
    if draw(st.booleans()):
        stages.append(draw(progressive_stage()))  # progressive may only come last
    return stages


ropes = st.one_of(
    st.none(),
    st.fixed_dictionaries(
        {"type": st.just("yarn"), "visual_window": st.integers(1, 10_000)},
        optional={"scope": st.sampled_from(["all", "visual"]), "alpha": st.sampled_from([0.5, 1.0, 2.0])},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["linear", "ntk"]), "factor": st.sampled_from([1, 1.5, 2.0, 8])},
        optional={"scope": st.sampled_from(["all", "visual"])},
    ),
)


@settings(max_examples=150, deadline=None)
@given(stages=stage_lists(), single_images=st.booleans(), rope=ropes, last=st.booleans(), chunk=st.integers(0, 8))
def test_round_trips_and_normalization(stages, single_images, rope, last, chunk):
    memory = {"last_logits_only": last, "vision_chunk_frames": chunk if stages and chunk else None}
    config = AdapterConfig(pooling=stages, pool_single_images=single_images, rope=rope, **memory)
    expected = [expected_stage(s) for s in stages]
    data = config.to_dict()
    assert set(data) == FIELDS  # to_dict covers every field, or the round trip would drop one
    assert {k: data[k] for k in memory} == memory
    assert data["pooling"] == (expected or None)
    assert data["pool_single_images"] is single_images
    if rope is None:
        assert data["rope"] is None
    else:
        assert {k: v for k, v in data["rope"].items() if k in rope} == rope  # what the user gave is kept
        assert data["rope"]["scope"] == rope.get("scope", "all")
    assert AdapterConfig.from_dict(config.to_dict()) == config
    assert AdapterConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json()) == config.to_dict()
    # normalizing normalized data changes nothing
    assert AdapterConfig(pooling=config.pooling, pool_single_images=single_images, rope=config.rope, **memory) == config
    # to_dict hands out copies: mutating them leaves the config alone
    data = config.to_dict()
    if data["pooling"]:
        data["pooling"][0]["type"] = "changed"
        assert config.pooling[0]["type"] == stages[0]["type"]


def test_single_stage_dict_is_a_one_stage_list():
    stage = {"type": "temporal", "kernel": 3}
    assert AdapterConfig(pooling=stage) == AdapterConfig(pooling=[stage])
    assert tuple(AdapterConfig(pooling=stage).to_dict()["pooling"]) == ({"type": "temporal", "kernel": 3, "stride": 3},)
    assert AdapterConfig(pooling=[]).pooling is None
    # every field defaults to plain "off" data
    assert AdapterConfig().to_dict() == {f.name: f.default for f in dataclasses.fields(AdapterConfig)}
    assert AdapterConfig().pooling is None and AdapterConfig().rope is None


def test_defaults_filled():
    config = AdapterConfig.from_dict(
        {
            "pooling": [
                {"type": "temporal"},
                {"type": "conv3d"},
                {"type": "adaptive3d", "output": 2},
                {"type": "progressive"},
            ]
        }
    )
    assert tuple(config.to_dict()["pooling"]) == (
        {"type": "temporal", "kernel": 2, "stride": 2},
        {"type": "conv3d", "kernel": [2, 3, 3], "stride": [2, 3, 3]},
        {"type": "adaptive3d", "output": [2, 2, 2]},
        {"type": "progressive", "group": 4, "strides": [2, 8], "mode": "bilinear"},
    )


def test_rope_defaults_filled():
    """The documented defaults are filled in (other keys, e.g. for M-RoPE models, may be added beside them)."""
    yarn = AdapterConfig(rope={"visual_window": 64}).rope
    expected = {
        "type": "yarn",
        "visual_window": 64,
        "scope": "all",
        "factor": None,
        "alpha": 1.0,
        "beta": 32.0,
        "attention_factor": 1.0,
    }
    assert {k: yarn.get(k, "missing") for k in expected} == expected
    linear = AdapterConfig(rope={"type": "linear", "factor": 2.0}).rope
    expected = {"type": "linear", "visual_window": None, "scope": "all", "factor": 2.0}
    assert {k: linear.get(k, "missing") for k in expected} == expected
    assert not {"alpha", "beta", "attention_factor"} & set(linear)  # YaRN-only keys stay off other types


def test_frozen():
    config = AdapterConfig(pooling={"type": "temporal"})
    for name, value in (("pooling", None), ("rope", None), ("pool_single_images", True)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, name, value)
    assert config.to_dict()["pooling"] == [{"type": "temporal", "kernel": 2, "stride": 2}]
    # the caller's dict is copied, not kept
    stage = {"type": "progressive", "strides": [2, 4]}
    config = AdapterConfig(pooling=stage)
    stage["strides"].append(8)
    assert list(config.pooling[0]["strides"]) == [2, 4]
    # nested data is read-only too: a live handle's config cannot be edited past validation
    with pytest.raises(TypeError):
        config.pooling[0]["group"] = 2
    with pytest.raises(AttributeError):
        config.pooling[0]["strides"].append(8)
    assert hash(config) == hash(AdapterConfig.from_json(config.to_json()))


def test_replace():
    base = AdapterConfig(pooling={"type": "temporal", "kernel": 2})
    changed = base.replace(pooling={"type": "adaptive3d", "output": [1, 2, 3]}, pool_single_images=True)
    assert changed.to_dict()["pooling"] == [{"type": "adaptive3d", "output": [1, 2, 3]}]
    assert changed.pool_single_images is True
    assert base.to_dict()["pooling"] == [{"type": "temporal", "kernel": 2, "stride": 2}]
    assert base.pool_single_images is False
    assert base.replace(pooling=None).pooling is None
    assert base.replace() == base
    with pytest.raises(AdapterError, match="poolnig"):
        base.replace(poolnig=None)
    with pytest.raises(AdapterError, match="median"):
        base.replace(pooling={"type": "median"})
    # another config's (frozen) values are accepted as overrides and as fields
    other = AdapterConfig.preset("llava_onevision")
    assert base.replace(pooling=other.pooling, rope=other.rope) == other.replace(pool_single_images=False)
    assert AdapterConfig(pooling=other.pooling, rope=other.rope) == other
    assert AdapterConfig.from_dict({"pooling": other.pooling, "rope": other.rope}) == other


@pytest.mark.parametrize("model_type", supported_models())
def test_preset_for_every_supported_model(model_type):
    preset = AdapterConfig.preset(model_type)
    assert isinstance(preset, AdapterConfig)
    assert preset.pooling is not None and preset.pooling[-1]["type"] == "progressive"
    assert preset.pooling[-1]["group"] == 4
    assert preset == AdapterConfig.from_json(preset.to_json())
    # a preset is read-only all the way down, and its dict form is a fresh copy
    with pytest.raises(AttributeError):
        preset.pooling[-1]["strides"].append(99)
    preset.to_dict()["pooling"][-1]["strides"].append(99)
    assert 99 not in AdapterConfig.preset(model_type).pooling[-1]["strides"]


def test_preset_strides_per_family():
    assert list(AdapterConfig.preset("llava_onevision").pooling[0]["strides"]) == [2, 8]
    # LLaVA-NeXT-Video's grid is already 2x pooled by the model: half the strides
    assert list(AdapterConfig.preset("llava_next_video").pooling[0]["strides"]) == [1, 4]


def test_preset_unknown_model_type():
    with pytest.raises(AdapterError, match="qwen9_vl") as err:
        AdapterConfig.preset("qwen9_vl")
    assert "llava_onevision" in str(err.value)


# --- refusals name the bad key --------------------------------------------------------------------------------

BAD_DICTS = [
    ({"pooling": None, "poolling": None}, "poolling"),
    ({"pooling": {"type": "progressive", "strdes": [2]}}, "strdes"),
    ({"pooling": {"type": "temporal", "window": 2}}, "window"),
    ({"pooling": {"type": "adaptive3d", "output": [1, 1, 1], "mode": "avg"}}, "mode"),
    ({"pooling": {"type": "cubic_pool"}}, "cubic_pool"),
    ({"pooling": {"group": 2}}, "type"),
    ({"pooling": {"type": "progressive", "group": 0}}, "group"),
    ({"pooling": {"type": "progressive", "group": 2, "strides": []}}, "strides"),
    ({"pooling": {"type": "progressive", "mode": "cubic"}}, "cubic"),
    ({"pooling": {"type": "progressive", "group": 2, "strides": [1, 2, 4]}}, "strides"),
    ({"pooling": {"type": "adaptive3d", "output": [2, 0, 3]}}, "output"),
    ({"pooling": {"type": "adaptive3d", "output": 0}}, "output"),
    ({"pooling": {"type": "adaptive3d"}}, "output"),
    ({"pooling": {"type": "conv3d", "kernel": [1, 3, 3], "stride": [2, 3, 3]}}, "kernel"),
    ({"pooling": {"type": "temporal", "kernel": 1, "stride": 2}}, "kernel"),
    ({"pooling": {"type": "conv3d", "output": 2, "kernel": 2, "stride": 2}}, "output"),
    ({"pooling": [{"type": "progressive"}, {"type": "temporal"}]}, "progressive"),
    ({"pooling": "progressive"}, "pooling"),
    ({"pool_single_images": "yes"}, "pool_single_images"),
    ({"rope": {"typ": "yarn"}}, "typ"),
    ({"rope": {"type": "dynamic"}}, "dynamic"),
    ({"rope": {"type": "yarn", "visual_window": 8, "scope": "global"}}, "scope"),
    ({"rope": {"type": "yarn", "visual_window": 0}}, "visual_window"),
    ({"rope": {"type": "linear", "factor": 0.5}}, "factor"),
    ({"rope": {"type": "linear", "factor": 2, "alpha": 1}}, "alpha"),
    ({"rope": {"type": "yarn", "visual_window": 8, "alpha": 40}}, "alpha"),
    ({"rope": "yarn"}, "rope"),
    ({"pooling": {"type": "temporal"}, "vision_chunk_frames": 0}, "vision_chunk_frames"),
    ({"pooling": None, "vision_chunk_frames": 2}, "vision_chunk_frames"),
    ({"last_logits_only": 1}, "last_logits_only"),
]


@pytest.mark.parametrize("data, word", BAD_DICTS, ids=[w for _, w in BAD_DICTS])
def test_bad_config_names_the_key(data, word):
    with pytest.raises(AdapterError, match=word):
        AdapterConfig.from_dict(data)
    with pytest.raises(AdapterError, match=word):
        AdapterConfig.from_json(json.dumps(data))


@pytest.mark.parametrize("data", [[{"type": "temporal"}], "pooling", 3, None])
def test_non_dict_config(data):
    with pytest.raises(AdapterError, match="mapping"):
        AdapterConfig.from_dict(data)
    with pytest.raises(AdapterError, match="mapping"):
        AdapterConfig.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["{", "{'pooling': None}", "", "pooling=None"])
def test_bad_json(text):
    with pytest.raises(AdapterError, match="JSON"):
        AdapterConfig.from_json(text)


def test_adapter_error_is_value_error():
    assert issubclass(AdapterError, ValueError)


# --- the forms apply_adapter takes ---------------------------------------------------------------------------

TEMPORAL = {"type": "temporal", "kernel": 2, "stride": 2}


@pytest.fixture(scope="module")
def nv_model():
    return tiny_model("llava_next_video", seed=0)


@pytest.fixture(scope="module")
def nv_inputs():
    return hand_inputs("llava_next_video", 2, seed=3)


def _expected():
    return AdapterConfig(pooling=TEMPORAL)


@pytest.mark.parametrize(
    "form",
    ["config", "dict", "json", "overrides", "config+overrides"],
)
def test_apply_adapter_config_forms(nv_model, nv_inputs, form):
    args, kwargs = {
        "config": ((_expected(),), {}),
        "dict": (({"pooling": TEMPORAL},), {}),
        "json": ((json.dumps({"pooling": TEMPORAL}),), {}),
        "overrides": ((), {"pooling": TEMPORAL}),
        "config+overrides": (
            (AdapterConfig(pooling={"type": "progressive", "strides": [1, 2]}),),
            {"pooling": TEMPORAL},
        ),
    }[form]
    with apply_adapter(nv_model, *args, **kwargs) as handle:
        assert get_adapter(nv_model) is handle
        assert handle.config == _expected()
        with torch.no_grad():
            nv_model(**nv_inputs)
        assert [(s["tokens_before"], s["tokens_after"]) for s in handle.last_stats] == [(32, 16)]
    assert get_adapter(nv_model) is None


def test_apply_adapter_none_is_preset_and_overrides_replace_fields(nv_model):
    with apply_adapter(nv_model) as handle:
        assert handle.config == AdapterConfig.preset("llava_next_video")
    with apply_adapter(nv_model, None, pool_single_images=True) as handle:
        assert handle.config == AdapterConfig.preset("llava_next_video").replace(pool_single_images=True)
    with apply_adapter(nv_model, pooling=None) as handle:
        assert handle.config == AdapterConfig()


def test_apply_adapter_override_avoids_refused_preset():
    """On the tiny 7x7 OneVision grid the preset's stride 8 is refused, but pooling=None replaces it first."""
    model = tiny_model("llava_onevision", seed=0)
    with pytest.raises(AdapterError, match="8"):
        apply_adapter(model)
    assert get_adapter(model) is None
    with apply_adapter(model, pooling=None) as handle:
        assert handle.config.pooling is None


@pytest.mark.parametrize(
    "config, overrides, word",
    [
        (42, {}, "int"),
        ([TEMPORAL], {}, "list"),
        ({"poolng": TEMPORAL}, {}, "poolng"),
        ("{not json", {}, "JSON"),
        (None, {"strides": [2]}, "strides"),
        (None, {"pooling": {"type": "temporal", "kernal": 2}}, "kernal"),
    ],
)
def test_apply_adapter_bad_config_forms(nv_model, config, overrides, word):
    with pytest.raises(AdapterError, match=word):
        apply_adapter(nv_model, config, **overrides)
    assert get_adapter(nv_model) is None
    assert "forward" not in nv_model.__dict__
