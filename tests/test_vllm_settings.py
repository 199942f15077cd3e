"""The vLLM plugin's pure parts, in the main venv (no vLLM needed): which config an engine serves, what it refuses,
the integer M-RoPE rule, and the fixed RoPE table against the HF path's own rotary output.

The engine-level tests (vLLM against the adapted HF path on the same weights) are tests/test_vllm_plugin.py
(`make test-vllm`).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from longctx_adapter import AdapterConfig, AdapterError, apply_adapter
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.ops.positions import mrope_positions
from longctx_adapter.ops.rope import default_inv_freq
from longctx_adapter.vllm_plugin import settings
from longctx_adapter.vllm_plugin.layout import (
    fixed_rope_frequencies,
    integer_positions,
    pooled_mrope_ids,
    pooled_video_tokens,
    rope_cache,
)

SERVABLE = {
    "pooling": {"type": "progressive", "group": 2, "strides": [2, 4]},
    "rope": {"type": "yarn", "visual_window": 48, "factor": 2.0},
}


def _config_with(**attrs):
    return SimpleNamespace(**attrs)


# --- where the config comes from -----------------------------------------------------------------------------


def test_config_file_name_is_the_one_save_pretrained_writes():
    from longctx_adapter.saving import ADAPTER_CONFIG_NAME

    assert settings.ADAPTER_CONFIG_NAME == ADAPTER_CONFIG_NAME


def test_no_config_anywhere_serves_the_stock_model(tmp_path):
    assert settings.serving_adapter(_config_with(), str(tmp_path)) is None
    assert settings.serving_adapter(_config_with(), None) is None


def test_folder_config_written_by_an_adapted_model_is_served(tmp_path):
    from longctx_adapter.testing.tiny import tiny_model

    model = tiny_model("llava_onevision")
    with apply_adapter(model, AdapterConfig.from_dict(SERVABLE)) as handle:
        model.save_pretrained(tmp_path)
        expected = handle.config
    served = settings.serving_adapter(_config_with(), str(tmp_path))
    assert served.config == expected and served.source.endswith(settings.ADAPTER_CONFIG_NAME)


def test_hf_overrides_win_over_the_folder_and_none_means_stock(tmp_path):
    (tmp_path / settings.ADAPTER_CONFIG_NAME).write_text(json.dumps(SERVABLE))
    other = {"pooling": {"type": "temporal", "kernel": 2}}
    served = settings.serving_adapter(_config_with(longctx_adapter=other), str(tmp_path))
    assert served.config == AdapterConfig.from_dict(other) and "hf_overrides" in served.source
    assert settings.serving_adapter(_config_with(longctx_adapter=None), str(tmp_path)) is None
    assert settings.serving_adapter(_config_with(), str(tmp_path)).config == AdapterConfig.from_dict(SERVABLE)


def test_every_feature_off_is_the_stock_model():
    assert settings.parse_adapter({"pooling": None, "rope": None}, "test") is None


def test_invalid_configs_fail_like_the_hf_path_and_name_their_source(tmp_path):
    with pytest.raises(AdapterError, match=r"hf_overrides.*unknown adapter config key"):
        settings.serving_adapter(_config_with(longctx_adapter={"pooling": None, "colour": 1}), None)
    (tmp_path / settings.ADAPTER_CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterError, match=r"longctx_adapter.json.*not valid JSON"):
        settings.serving_adapter(_config_with(), str(tmp_path))
    with pytest.raises(AdapterError, match="test: .*stage"):
        settings.parse_adapter([1, 2], "test")


def test_overrides_take_every_form_of_the_config_grammar():
    """A text shorthand or a bare stage list serves like the dict it stands for (config_text.parse_config)."""
    text = settings.serving_adapter(
        _config_with(longctx_adapter="progressive:2,8,4", model_type="llava_onevision"), None
    )
    stages = settings.serving_adapter(_config_with(longctx_adapter=[{"type": "progressive"}]), None)
    full = AdapterConfig.from_dict({"pooling": {"type": "progressive", "group": 4, "strides": [2, 8]}})
    assert text.config == stages.config == full
    assert settings.serving_adapter(_config_with(longctx_adapter="none"), None) is None


def test_a_fixed_factor_without_window_takes_the_preset_window_as_on_the_hf_path():
    rope = {"type": "yarn", "factor": 4.0}
    served = settings.serving_adapter(_config_with(longctx_adapter={"rope": rope}, model_type="llava_onevision"), None)
    assert served.rope["visual_window"] == 6272 and served.rope["factor"] == 4.0


# --- what an engine refuses ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage,name",
    [
        ({"type": "prompt_guided", "kernel": [2, 3, 3]}, "prompt_guided"),
        ({"type": "select_frames", "segments": 4}, "select_frames"),
        ({"type": "progressive", "group": 4, "strides": [2, 8], "anchor": "score"}, "anchor score"),
    ],
)
def test_question_guided_stages_are_refused(stage, name):
    with pytest.raises(AdapterError, match=f"question-guided.*{name}|{name}.*question-guided"):
        settings.parse_adapter({"pooling": stage}, "test")


@pytest.mark.parametrize(
    "pooling",
    [
        {"type": "merge_temporal", "ratio": 0.1},
        [{"type": "progressive", "group": 1, "strides": [2]}, {"type": "segment_density"}],
    ],
)
def test_stages_that_choose_tokens_from_the_features_are_refused(pooling):
    kind = (pooling if isinstance(pooling, dict) else pooling[-1])["type"]
    with pytest.raises(AdapterError, match=f"\\({kind}\\) keeps tokens chosen from the video's features"):
        settings.parse_adapter({"pooling": pooling}, "test")


def test_per_call_rope_factor_is_refused_with_the_fix():
    with pytest.raises(AdapterError, match=r"no fixed 'factor'.*\"factor\": visual tokens of your longest video / 48"):
        settings.parse_adapter({"rope": {"type": "yarn", "visual_window": 48}}, "test")


@pytest.mark.parametrize(
    "rope,match",
    [
        ({"type": "interpolate", "visual_window": 48, "factor": 2.0}, "moves position ids"),
        ({"type": "yarn", "visual_window": 48, "factor": 2.0, "scope": "visual"}, "one rotary table"),
    ],
)
def test_rope_an_engine_cannot_apply_is_refused(rope, match):
    with pytest.raises(AdapterError, match=match):
        settings.parse_adapter({"rope": rope}, "test")


def test_servable_configs_pass_unchanged():
    served = settings.parse_adapter(SERVABLE, "test")
    assert served.config == AdapterConfig.from_dict(SERVABLE)
    assert served.rope["factor"] == 2.0 and tuple(served.pooling[0]["strides"]) == (2, 4)


# --- the integer M-RoPE rule ---------------------------------------------------------------------------------


def test_integer_rule_is_nearest_with_ties_toward_the_window_start():
    centres = torch.tensor([0.0, 0.5, 1.5, 2.5, 0.49, 0.51, 3.375, 5.625, 7.0])
    assert integer_positions(centres).tolist() == [0, 0, 1, 2, 0, 1, 3, 6, 7]


@pytest.mark.parametrize(
    "stages",
    [
        None,
        {"type": "progressive", "group": 2, "strides": [1, 2]},
        {"type": "progressive", "group": 4, "strides": [1, 4], "mode": "avg"},
        [{"type": "temporal", "kernel": 2, "stride": 2}, {"type": "conv3d", "kernel": [1, 3, 3]}],
        {"type": "adaptive3d", "output": [3, 3, 2]},
    ],
)
def test_pooled_mrope_ids_round_the_hf_path_centres(stages):
    t_values = torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0, 10.0])  # e.g. Qwen2.5-VL at 2 ids per temporal patch
    ours = pooled_mrope_ids(t_values, 5, 6, stages)
    hf = mrope_positions(0.0, t_values, 5, 6, stages)  # the HF path's (fractional) ids, relative to the video
    assert ours.dtype == torch.int64 and ours.shape == hf.shape == (3, count_tokens(6, 5, 6, stages))
    assert bool(((ours - hf).abs() <= 0.5).all())  # nearest integer
    ties = (hf - hf.floor()) == 0.5
    assert torch.equal(ours[ties], hf[ties].floor().long())  # ties toward the window start
    if stages is None:  # nothing pooled: the stock ids exactly
        grid = torch.stack(torch.meshgrid(t_values.long(), torch.arange(5), torch.arange(6), indexing="ij"))
        assert torch.equal(ours, grid.reshape(3, -1))


def test_pooled_video_tokens_is_the_ops_count_plus_extra():
    stages = {"type": "progressive", "group": 4, "strides": [2, 8]}
    assert pooled_video_tokens(32, 27, 27, stages, extra=1) == 8 * (196 + 3 * 16) + 1  # docs/methods.md#progressive: 244 per 4 frames


# --- the fixed RoPE table equals the HF path's rotary output ------------------------------------------------


def _captured_rotary(model, inputs, config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """cos, sin (after the adapter's hook) and the position ids of one adapted forward."""
    seen = {}

    def grab(module, args, kwargs, output):
        seen["positions"] = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        seen["cos"], seen["sin"] = output

    with torch.inference_mode(), apply_adapter(model, AdapterConfig.from_dict(config)):
        hook = model.model.language_model.rotary_emb.register_forward_hook(grab, with_kwargs=True)
        try:
            model(**inputs)
        finally:
            hook.remove()
    return seen["cos"], seen["sin"], seen["positions"]


def test_rope_table_equals_hf_rotary_rows_on_1d_rope():
    from longctx_adapter.testing.tiny import hand_inputs, tiny_model

    model = tiny_model("llava_onevision", num_attention_heads=2, num_key_value_heads=2)
    inputs = hand_inputs("llava_onevision", frames=4)
    cos, sin, positions = _captured_rotary(model, inputs, {"rope": SERVABLE["rope"]})
    text = model.config.text_config
    inv, scaling = fixed_rope_frequencies(dict(AdapterConfig.from_dict(SERVABLE).rope), 32, 1e6)
    table = rope_cache(inv, scaling, int(positions.max()) + 1, torch.float32)
    half = table.shape[1] // 2
    rows = table[positions[0]]
    assert text.rope_parameters["rope_theta"] == 1e6
    assert torch.equal(torch.cat([rows[:, :half]] * 2, -1), cos[0])
    assert torch.equal(torch.cat([rows[:, half:]] * 2, -1), sin[0])
    stock = rope_cache(default_inv_freq(32, 1e6), 1.0, table.shape[0], torch.float32)
    assert (stock - table).abs().max() > 1e-3  # the extension is really on


def test_mrope_table_extends_only_the_chosen_sections_as_on_the_hf_path():
    from longctx_adapter.testing.tiny_qwen import qwen_hand_inputs, qwen_tiny_model

    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    model = qwen_tiny_model("qwen2_vl", num_attention_heads=2, num_key_value_heads=2, head_dim=32, rope_parameters=rope)
    inputs = qwen_hand_inputs("qwen2_vl", frames=8)
    for axes in (["t"], ["t", "w"]):
        spec = {"type": "yarn", "visual_window": 3, "factor": 2.0, "mrope_axes": axes}
        cos, sin, positions = _captured_rotary(model, inputs, {"rope": spec})
        inv, scaling = fixed_rope_frequencies(
            dict(AdapterConfig.from_dict({"rope": spec}).rope), 32, 1e6, 1.0, [4, 6, 6]
        )
        table = rope_cache(inv, scaling, int(positions.max()) + 1, torch.float32)
        # vLLM's MRotaryEmbedding: frequency index i reads the table row of its section's axis (t, h, w, t, ...)
        owners = torch.cat([torch.full((n,), i % 3) for i, n in enumerate([4, 6, 6])])
        thw = positions[-3:, 0]  # (3, L): t, h, w ids (a 4-row layout puts text positions first)
        rows = table[thw]  # (3, L, 32)
        half = table.shape[1] // 2
        picked = rows[owners, :, torch.arange(half)].T  # (L, 16)
        picked_sin = rows[owners, :, half + torch.arange(half)].T
        assert torch.equal(torch.cat([picked] * 2, -1), cos[0])
        assert torch.equal(torch.cat([picked_sin] * 2, -1), sin[0])


def test_hf_path_only_options_are_named_not_applied():
    served = settings.parse_adapter({**SERVABLE, "vision_chunk_frames": 8, "last_logits_only": True}, "test")
    assert served.not_applied == ["vision_chunk_frames", "last_logits_only"]
    assert settings.parse_adapter(SERVABLE, "test").not_applied == []
    seen = []
    settings.log_not_applied(served, SimpleNamespace(warning=lambda *args: seen.append(args[0] % args[1:])))
    assert seen == ["test: vision_chunk_frames, last_logits_only only shape memory or the output layout of the HF call "
                    "path; the vLLM engine does not apply them"]  # fmt: skip
