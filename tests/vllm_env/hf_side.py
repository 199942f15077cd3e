"""The Hugging Face side of the vLLM tests, run with the MAIN venv's python (transformers >= 5.24, the HF path).

    python tests/vllm_env/hf_side.py OUT_DIR

Builds the tiny checkpoints the vLLM engines load, the videos, and the adapted HF path's greedy tokens and
per-step log-probabilities for every case, into OUT_DIR/cases.json. The vLLM venv (transformers < 5.20) cannot run
the HF path, so the two sides meet only through these files.

Checkpoints (random weights, fixed seeds, float32; head_dim 32 because vLLM's CPU attention supports head sizes
32 and up, while the shared tiny factory uses 16):
- `ov`: LLaVA-OneVision (SigLIP 28 px / patch 4 = 7x7 grid, Qwen2 decoder with 2 heads of 32). Its SigLIP weights
  are renamed from transformers 5.x's `vision_tower.{embeddings,encoder,post_layernorm}.*` to the released
  checkpoints' `vision_tower.vision_model.*` layout (transformers reloads it to equal weights, checked here), the
  only one stock vLLM 0.32 loads (`ov_saved` keeps the 5.x one).
- `ov_saved`: the same weights saved by an adapted model's `save_pretrained` (transformers 5.x names for a model
  built from its config: `vision_tower.embeddings.*`, which stock vLLM 0.32 cannot load and the plugin maps; plus
  longctx_adapter.json): what a user serves with `vllm serve <folder>`.
- `nv`: LLaVA-NeXT-Video (CLIP 32 px / patch 4 = 8x8 grid, the model's 2x average pooler -> 4x4 per frame, Llama
  decoder with 2 heads of 32), CLIP weights in the `vision_tower.vision_model.*` layout of the released checkpoints
  (stock vLLM 0.32 loads only that one for this class).
- `nv_saved`: the same for LLaVA-NeXT-Video (its CLIP tower as `vision_tower.{embeddings,encoder,...}.*`).
- `qwen`: Qwen2-VL (patch 4, merge 2: 32x32 frames -> 4x4 merged tokens per temporal patch; M-RoPE sections
  [4, 6, 6] for head_dim 32).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from shared import (  # noqa: E402 - this folder is on sys.path when run as a script
    NV_FRAMES,
    NV_POOLED,
    NV_PROMPT,
    NV_SIDE,
    OV_CONV,
    OV_FRAMES,
    OV_POOLED,
    OV_PROMPT,
    OV_SIDE,
    QWEN_FRAMES,
    QWEN_HALF,
    QWEN_PROMPT,
    QWEN_SIDE,
    QWEN_TEMPLATE,
    QWEN_WHOLE,
    STEPS,
)

from longctx_adapter import AdapterConfig, apply_adapter
from longctx_adapter.ops.pooling import count_tokens
from longctx_adapter.testing.tiny import synthetic_video, tiny_model, tiny_processor, tiny_tokenizer
from longctx_adapter.testing.tiny_qwen import qwen_tiny_model


def _vision_model_layout(model, out: Path, processor) -> torch.nn.Module:
    """Save `model` with its vision tower under the older `vision_tower.vision_model.*` names; reload and check."""
    model.save_pretrained(out)
    processor.save_pretrained(out)
    weights = load_file(out / "model.safetensors")
    vllm_layout = {
        ("vision_tower.vision_model." + k[len("vision_tower.") :] if k.startswith("vision_tower.") else k): v
        for k, v in weights.items()
    }
    save_file(vllm_layout, out / "model.safetensors", metadata={"format": "pt"})
    reloaded = type(model).from_pretrained(out).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), f"{name} changed when reloading the vLLM-layout checkpoint"
    return reloaded


def _ov_checkpoint(out: Path) -> torch.nn.Module:
    model = tiny_model("llava_onevision", num_attention_heads=2, num_key_value_heads=2)
    return _vision_model_layout(model, out, tiny_processor("llava_onevision"))


def _nv_checkpoint(out: Path) -> torch.nn.Module:
    model = tiny_model("llava_next_video", num_attention_heads=2, num_key_value_heads=2)
    return _vision_model_layout(model, out, tiny_processor("llava_next_video"))


def _save_adapted(model_type: str, reference: torch.nn.Module, config: dict, out: Path) -> None:
    """What `save_pretrained` of an adapted model built by transformers 5.x writes: its own weight names (the
    vision tower without the `vision_model.` level; a model loaded from a checkpoint would be saved back in that
    checkpoint's layout) plus longctx_adapter.json. Same seed, so the same weights as `reference`."""
    model = tiny_model(model_type, num_attention_heads=2, num_key_value_heads=2)
    for (name, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), f"{name} differs from the reference checkpoint"
    with apply_adapter(model, AdapterConfig.from_dict(config)):
        model.save_pretrained(out)
    tiny_processor(model_type).save_pretrained(out)
    assert (out / "longctx_adapter.json").is_file()
    assert any(k.startswith("vision_tower.embeddings.") for k in load_file(out / "model.safetensors"))


def _qwen_processor():
    import transformers

    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|vision_start|>", "<|vision_end|>"]})
    kw = dict(patch_size=4, merge_size=2, temporal_patch_size=2)
    size = {"shortest_edge": 32 * 32, "longest_edge": 32 * 32}
    return transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(**kw, size=size),
        tokenizer=tok,
        video_processor=transformers.Qwen2VLVideoProcessor(**kw, size=size),
        chat_template=QWEN_TEMPLATE,
    )


def _qwen_checkpoint(out: Path) -> torch.nn.Module:
    rope = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [4, 6, 6]}
    model = qwen_tiny_model("qwen2_vl", num_attention_heads=2, num_key_value_heads=2, head_dim=32, rope_parameters=rope)
    model.save_pretrained(out)
    _qwen_processor().save_pretrained(out)
    return type(model).from_pretrained(out).eval()


def _greedy(model, inputs, config) -> dict:
    """Greedy tokens and full per-step log-probabilities, stock (config None) or adapted."""
    with torch.inference_mode():
        if config is None:
            out = model.generate(
                **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
            )
            stats = None
        else:
            with apply_adapter(model, AdapterConfig.from_dict(config)) as handle:
                out = model.generate(
                    **inputs, max_new_tokens=STEPS, do_sample=False, output_logits=True, return_dict_in_generate=True
                )
                stats = handle.last_stats
    tokens = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    logprobs = [torch.log_softmax(step[0].float(), dim=-1).tolist() for step in out.logits]
    return {"tokens": tokens, "logprobs": logprobs, "stats": stats}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cases = []

    ov = _ov_checkpoint(out / "ov")
    ov_video = synthetic_video(OV_FRAMES, OV_SIDE, OV_SIDE, seed=3)
    np.save(out / "ov_video.npy", ov_video)
    ov_inputs = tiny_processor("llava_onevision")(text=OV_PROMPT, videos=[ov_video], return_tensors="pt")
    np.save(out / "ov_pixels.npy", ov_inputs["pixel_values_videos"].numpy())
    side = 28 // 4
    for name, config in (("ov_stock", None), ("ov_pooled", OV_POOLED), ("ov_conv", OV_CONV)):
        stock_tokens = OV_FRAMES * 16 + 1
        video_tokens = stock_tokens if config is None else count_tokens(OV_FRAMES, side, side, config["pooling"]) + 1
        cases.append(
            {
                "name": name,
                "model": "ov",
                "adapter": config,
                "video": "ov_video.npy",
                "prompt": OV_PROMPT,
                "video_token_id": int(ov.config.video_token_id),
                "video_tokens": video_tokens,
                "prompt_tokens": int(ov_inputs["input_ids"].shape[1]) - stock_tokens + video_tokens,
                "hf": _greedy(ov, ov_inputs, config),
            }
        )
    _save_adapted("llava_onevision", ov, OV_POOLED, out / "ov_saved")

    nv = _nv_checkpoint(out / "nv")
    nv_video = synthetic_video(NV_FRAMES, NV_SIDE, NV_SIDE, seed=5)
    np.save(out / "nv_video.npy", nv_video)
    nv_inputs = tiny_processor("llava_next_video")(text=NV_PROMPT, videos=[nv_video], return_tensors="pt")
    np.save(out / "nv_pixels.npy", nv_inputs["pixel_values_videos"].numpy())
    side = 32 // 4 // nv.config.spatial_pool_stride  # the grid after the model's own average pooler
    for name, config in (("nv_stock", None), ("nv_pooled", NV_POOLED)):
        stock_tokens = NV_FRAMES * side * side
        video_tokens = stock_tokens if config is None else count_tokens(NV_FRAMES, side, side, config["pooling"])
        cases.append(
            {
                "name": name,
                "model": "nv",
                "adapter": config,
                "video": "nv_video.npy",
                "prompt": NV_PROMPT,
                "video_token_id": int(nv.config.video_token_id),
                "video_tokens": video_tokens,
                "prompt_tokens": int(nv_inputs["input_ids"].shape[1]) - stock_tokens + video_tokens,
                "hf": _greedy(nv, nv_inputs, config),
            }
        )
    _save_adapted("llava_next_video", nv, NV_POOLED, out / "nv_saved")

    qwen = _qwen_checkpoint(out / "qwen")
    qwen_video = synthetic_video(QWEN_FRAMES, QWEN_SIDE, QWEN_SIDE, seed=4)
    np.save(out / "qwen_video.npy", qwen_video)
    qwen_inputs = _qwen_processor()(text=QWEN_PROMPT, videos=[qwen_video], return_tensors="pt")
    np.save(out / "qwen_pixels.npy", qwen_inputs["pixel_values_videos"].numpy())
    t, h, w = qwen_inputs["video_grid_thw"][0].tolist()
    for name, config in (("qwen_stock", None), ("qwen_whole", QWEN_WHOLE), ("qwen_half", QWEN_HALF)):
        stock_tokens = t * h * w // 4
        video_tokens = stock_tokens if config is None else count_tokens(t, h // 2, w // 2, config["pooling"])
        cases.append(
            {
                "name": name,
                "model": "qwen",
                "adapter": config,
                "video": "qwen_video.npy",
                "prompt": QWEN_PROMPT,
                "video_token_id": int(qwen.config.video_token_id),
                "video_tokens": video_tokens,
                "prompt_tokens": int(qwen_inputs["input_ids"].shape[1]) - stock_tokens + video_tokens,
                "grid_thw": [t, h, w],
                "hf": _greedy(qwen, qwen_inputs, config),
            }
        )
    (out / "cases.json").write_text(json.dumps({"steps": STEPS, "cases": cases}, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
