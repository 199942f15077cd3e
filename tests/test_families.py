"""Model families as declarations: what each family declares agrees with the stock models and processors, and the
handle that carries an adapter keeps its declared shape (one shadow mechanism, one per-thread call state)."""

from __future__ import annotations

import threading

import pytest
import torch

from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.family import VisualFamily
from longctx_adapter.profiling.sizes import stock_visual_tokens, video_inputs
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for, supported_models
from longctx_adapter.shadow import shadow, shadowed
from longctx_adapter.testing.tiny import hand_inputs, processor_inputs, stock_video_tokens, tiny_config, tiny_model
from longctx_adapter.testing.tiny_qwen import PATCH, PATCH_GRID, qwen_hand_inputs, qwen_tiny_config, qwen_tiny_model

VIDEO_TYPES = ("llava_next_video", "llava_onevision")
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
QWEN_FRAME = (PATCH * PATCH_GRID, PATCH * PATCH_GRID)  # pixels per side of a tiny Qwen frame
POOLING = {"type": "progressive", "group": 2, "strides": [1, 2]}
ROPE = {"type": "yarn", "visual_window": 8, "scope": "all"}


@pytest.mark.parametrize("model_type", supported_models())
def test_registry_finds_one_declaration_per_type(model_type):
    family = family_for(model_type)
    assert isinstance(family, VisualFamily) and model_type in family.model_types
    assert family.modality in ("image", "video") and family.input_norm and family.scorer_frames is not None
    assert family.prompt_placeholder
    with pytest.raises(TypeError):
        family.preset["pooling"] = None  # read-only: a caller cannot change the preset everyone gets
    assert AdapterConfig.preset(model_type) == AdapterConfig.from_dict(family.preset)
    # what a family can do is declared together: chunking needs the frame layout, memory needs sizes
    if family.cost is not None:
        assert family.stock_tokens is not None and family.video_grid is not None
    if family.blocks_per_frame:
        assert family.frame_blocks is not None


def test_patch_modules_declare_only_registered_types():
    modules = set(MODEL_TYPE_TO_PATCH.values())
    declared = []
    for name in modules:
        module = __import__(name, fromlist=["FAMILIES"])
        declared += [t for family in module.FAMILIES for t in family.model_types]
    assert sorted(declared) == supported_models()  # each type declared once, nothing unregistered


@pytest.mark.parametrize("model_type", VIDEO_TYPES)
def test_llava_video_sizes_match_the_processor_and_the_encoder(model_type):
    """stock_tokens equals the real processor's placeholder count; video_grid and tail_tokens equal the segment the
    family's encode cuts from the stock encoder; hand-built inputs run through the stock forward (which checks the
    placeholder count against the features)."""
    family = family_for(model_type)
    config = tiny_config(model_type)
    frames = 3
    ids = processor_inputs(model_type, frames)["input_ids"]
    placeholders = int((ids == family.token_id(config)).sum())
    assert family.stock_tokens(config, frames, None) == placeholders == stock_video_tokens(model_type, frames)
    assert stock_visual_tokens(config, frames) == placeholders
    model = tiny_model(model_type)
    inputs = hand_inputs(model_type, frames)
    with torch.inference_mode():
        (seg,), _ = family.encode(model, {"pixel_values_videos": inputs["pixel_values_videos"]}, [placeholders],
                                  AdapterConfig())  # fmt: skip
        assert tuple(seg.grid.shape[:3]) == family.video_grid(config, frames, None)
        assert (0 if seg.tail is None else seg.tail.shape[0]) == family.tail_tokens
        made = video_inputs(config, frames, dtype=torch.float32, text_before=2, text_after=3)
        assert made["input_ids"].shape[1] == 2 + 3 + placeholders + family.marker_tokens(frames)
        model(**made)


@pytest.mark.parametrize("model_type", QWEN_TYPES)
def test_qwen_sizes_match_hand_inputs_and_the_encoder(model_type):
    family = family_for(model_type)
    config = qwen_tiny_config(model_type)
    frames = 4
    reference = qwen_hand_inputs(model_type, frames, text_before=2, text_after=3)
    placeholders = int((reference["input_ids"] == family.token_id(config)).sum())
    assert family.stock_tokens(config, frames, QWEN_FRAME) == placeholders
    blocks = frames // config.vision_config.temporal_patch_size
    if not family.blocks_per_frame:  # (the tiny Qwen3-VL inputs write 2 timestamp tokens per block, real ones more)
        assert reference["input_ids"].shape[1] - 2 - 3 - placeholders == family.marker_tokens(blocks)
    model = qwen_tiny_model(model_type)
    kwargs = {k: reference[k] for k in ("pixel_values_videos", "video_grid_thw")}
    with torch.inference_mode():
        (seg,), _ = family.encode(model, kwargs, [placeholders], AdapterConfig())
        assert tuple(seg.grid.shape[:3]) == family.video_grid(config, frames, QWEN_FRAME)
        assert seg.runs == (blocks if family.blocks_per_frame else 1)
        made = video_inputs(config, frames, QWEN_FRAME, dtype=torch.float32, text_before=2, text_after=3)
        assert made["input_ids"].shape[1] == 2 + 3 + placeholders + family.marker_tokens(blocks)
        model(**made)  # the stock forward checks placeholders against features
        # the positions option scoring continues a prompt with are the stock get_rope_index's
        stock, _ = model.model.get_rope_index(
            made["input_ids"], **{k: made[k] for k in made if k in ("mm_token_type_ids", "video_grid_thw",
                                                                    "attention_mask", "second_per_grid_ts")}
        )  # fmt: skip
        assert torch.equal(family.rope_positions(model, made), stock)


@pytest.mark.parametrize("model_type", ("llava", "llava_next"))
def test_image_families_do_not_chunk_or_estimate(model_type):
    family = family_for(model_type)
    assert family.modality == "image" and family.split_video is None and family.cost is None
    assert family.rope_positions is None


# --- the handle ----------------------------------------------------------------------------------------------------

DECLARED = {"model", "family", "config", "guidance", "rope", "family_state", "calls", "continuations", "_shadows",
            "_removed"}  # fmt: skip


@pytest.mark.parametrize("model_type", ["llava_onevision", "qwen3_vl"])
def test_handle_state_is_declared_and_nothing_is_added_by_calls(model_type):
    model = qwen_tiny_model(model_type) if model_type in QWEN_TYPES else tiny_model(model_type)
    inputs = qwen_hand_inputs(model_type, 4) if model_type in QWEN_TYPES else hand_inputs(model_type, 4)
    before = set(model.__dict__)
    with apply_adapter(model, pooling=POOLING, rope=ROPE) as handle:
        assert set(vars(handle)) == DECLARED
        assert set(model.__dict__) - before == {"forward", "generate", "save_pretrained"}
        with torch.inference_mode():
            model(**inputs)
            model.generate(**inputs, max_new_tokens=2, do_sample=False)
        assert set(vars(handle)) == DECLARED
        assert handle.calls.family is None and handle.rope.active is None and not handle.inside_call
        if model_type in QWEN_TYPES:
            assert handle.family_state.stock_rope_index is not None
            assert "get_rope_index" in model.model.__dict__
        else:
            assert handle.family_state is None
    assert set(model.__dict__) == before and "get_rope_index" not in model.model.__dict__


def test_last_stats_schema_is_one_for_pooled_and_rope_only_calls():
    model = tiny_model("llava_onevision")
    inputs = hand_inputs("llava_onevision", 4)
    with torch.inference_mode():
        with apply_adapter(model, pooling=POOLING, rope=ROPE) as handle:
            model(**inputs)
            pooled = handle.last_stats
        with apply_adapter(model, pooling=None, rope={**ROPE, "visual_window": 4}) as handle:
            model(**inputs)
            rope_only = handle.last_stats
    assert pooled and rope_only
    assert [list(s) for s in pooled] == [list(s) for s in rope_only]
    assert rope_only[0]["pooled"] is False and rope_only[0]["tokens_before"] == rope_only[0]["tokens_after"]
    assert rope_only[0]["rope_factor"] > 1 and pooled[0]["pooled"] is True


def test_call_scope_is_per_thread_and_restores_on_error():
    model = tiny_model("llava_onevision")
    with apply_adapter(model, pooling=POOLING, rope=ROPE) as handle:
        seen = {}
        with handle.call_scope("plan-a", "family-a"):
            assert handle.inside_call and handle.rope.active == "plan-a" and handle.calls.family == "family-a"

            def other_thread():
                seen["plan"], seen["inside"] = handle.rope.active, handle.inside_call

            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
            with pytest.raises(RuntimeError):
                with handle.call_scope("plan-b"):
                    assert handle.rope.active == "plan-b" and handle.calls.family is None
                    raise RuntimeError("inside the nested call")
            assert handle.rope.active == "plan-a" and handle.calls.family == "family-a"
        assert seen == {"plan": None, "inside": False}
        assert not handle.inside_call and handle.rope.active is None and handle.calls.family is None


# --- the one shadow mechanism --------------------------------------------------------------------------------------


class _Thing:
    def method(self):
        return "class"


def test_shadow_restores_class_and_own_attributes():
    thing = _Thing()
    record = shadow(thing, "method", lambda: "own")
    assert thing.method() == "own"
    record.restore()
    assert "method" not in thing.__dict__ and thing.method() == "class"
    thing.value = 1
    record = shadow(thing, "value", 2)
    assert thing.value == 2
    record.restore()
    assert thing.__dict__["value"] == 1


def test_shadowed_restores_when_the_block_raises():
    thing = _Thing()
    with pytest.raises(ValueError):
        with shadowed(thing, "method", lambda: "own"):
            assert thing.method() == "own"
            raise ValueError("stock call failed")
    assert "method" not in thing.__dict__ and thing.method() == "class"
