"""Real-size model geometries without weights: published architecture numbers, random weights, nothing downloaded.

Each preset holds the numbers of one published checkpoint (hidden sizes, depths, heads, vocabulary, vision tower)
so that memory and time can be measured or estimated at true size on any machine. `real_model(name, layers=2)`
builds the model with its decoder and vision tower truncated to a few layers (everything else full size: embedding,
lm_head, projector, one layer's activations at the true width); `profiler.py` extrapolates the missing layers.

Where each number comes from is written next to it. "transformers default" means the default of that config class
in transformers 5.24, which its docstring ties to the named checkpoint; "config.json" means the checkpoint's
published config.json (quoted in public code we read); "unverified" means recalled from the model card / family and
not checked against the checkpoint: memory figures that depend on it carry that uncertainty.

Weights are random (a 64K-value normal block tiled over every parameter, so pages are really touched and RSS counts
them); models are built with transformers' `no_init_weights` so no time goes into HF's initialisers.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from longctx_adapter.errors import AdapterError
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for

__all__ = [
    "PRESETS",
    "RealPreset",
    "fill_random_",
    "preset",
    "real_config",
    "real_model",
    "stock_visual_tokens",
    "video_inputs",
]


@dataclass(frozen=True)
class RealPreset:
    """One published checkpoint's geometry. `text`/`vision`/`top` are kwargs of the HF config classes."""

    name: str
    model_type: str
    hf_id: str
    text: dict
    vision: dict
    top: dict
    frame_size: tuple[int, int]  # (height, width) in pixels of each frame fed to the model
    notes: str = ""
    unverified: tuple[str, ...] = ()
    sources: dict = field(default_factory=dict)

    @property
    def text_layers(self) -> int:
        return int(self.text["num_hidden_layers"])

    @property
    def vision_layers(self) -> int:
        return int(self.vision.get("num_hidden_layers", self.vision.get("depth")))

    @property
    def vision_layers_key(self) -> str:
        return "num_hidden_layers" if "num_hidden_layers" in self.vision else "depth"


_QWEN2_7B_TEXT = dict(
    # Qwen2-7B (the LLM of LLaVA-OneVision-7B, Qwen2-VL-7B and Qwen2.5-VL-7B): Qwen2-7B config.json / the Qwen2
    # technical report table: hidden 3584, 28 layers, 28 query heads, 4 KV heads (head_dim 128), FFN 18944,
    # vocabulary 152064, rope_theta 1e6.
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)

PRESETS: dict[str, RealPreset] = {
    "llava-onevision-7b": RealPreset(
        name="llava-onevision-7b",
        model_type="llava_onevision",
        hf_id="llava-hf/llava-onevision-qwen2-7b-ov-hf",
        text={**_QWEN2_7B_TEXT, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        # SigLIP-so400m-patch14-384 (transformers' LlavaOnevisionConfig vision default, whose docstring names this
        # checkpoint): width 1152, MLP 4304, 16 heads, 384 px, patch 14 -> 27x27 tokens. The HF checkpoint keeps 26
        # of SigLIP's 27 layers (features come from the penultimate layer, vision_feature_layer=-1 on 26 layers).
        vision=dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=26,
            num_attention_heads=16,
            image_size=384,
            patch_size=14,
            vision_use_head=False,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        ),
        # transformers defaults of LlavaOnevisionConfig (token ids, projector, feature layer/strategy)
        top=dict(
            image_token_index=151646,
            video_token_index=151647,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            projector_hidden_act="gelu",
            tie_word_embeddings=False,
        ),
        frame_size=(384, 384),
        notes="video: 27x27 SigLIP grid per frame, bilinear 2x to 14x14 = 196 tokens/frame, + 1 newline per video",
        unverified=("text.vocab_size (152064 is Qwen2-7B's; the llava-hf conversion may pad it by a few rows)",),
        sources={
            "text": "Qwen2-7B config.json (hidden 3584, 28 layers, 28 heads, 4 kv, ffn 18944, vocab 152064, theta 1e6)",
            "vision": "transformers 5.24 LlavaOnevisionConfig vision default (SigLIP-so400m-384, 26 layers kept)",
        },
    ),
    "llava-next-video-7b": RealPreset(
        name="llava-next-video-7b",
        model_type="llava_next_video",
        hf_id="llava-hf/LLaVA-NeXT-Video-7B-hf",
        # Vicuna-7B / Llama-7B geometry: hidden 4096, 32 layers, 32 heads (MHA), FFN 11008 (transformers' LlamaConfig
        # and LlavaNextVideoConfig text defaults); vocabulary 32064 (32000 + added image/video/pad tokens).
        text=dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32064,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        # CLIP ViT-L/14-336 (transformers' LlavaNextVideoConfig vision default): width 1024, MLP 4096, 24 layers,
        # 16 heads, 336 px, patch 14 -> 24x24 tokens; features from layer -2.
        vision=dict(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        top=dict(
            image_token_index=32001,
            video_token_index=32000,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            spatial_pool_mode="average",
            spatial_pool_stride=2,
            projector_hidden_act="gelu",
            tie_word_embeddings=False,
        ),
        frame_size=(336, 336),
        notes="video: 24x24 CLIP grid, 2x average pool before the projector -> 12x12 = 144 tokens/frame",
        unverified=("text.vocab_size 32064 (from the brief / model card; transformers' default is 32000)",),
        sources={
            "text": "transformers 5.24 LlavaNextVideoConfig/LlamaConfig defaults (Llama/Vicuna-7B)",
            "vision": "transformers 5.24 LlavaNextVideoConfig vision default (CLIP ViT-L/14-336)",
        },
    ),
    "qwen2-vl-7b": RealPreset(
        name="qwen2-vl-7b",
        model_type="qwen2_vl",
        hf_id="Qwen/Qwen2-VL-7B-Instruct",
        text={
            **_QWEN2_7B_TEXT,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        },
        # transformers 5.24 Qwen2VLVisionConfig defaults are the 7B tower: depth 32, embed_dim 1280, MLP ratio 4,
        # 16 heads, patch 14, 2x2 merge, temporal patch 2, merger output 3584. (Its *text* defaults are 72B-sized.)
        vision=dict(
            depth=32,
            embed_dim=1280,
            hidden_size=3584,
            mlp_ratio=4,
            num_heads=16,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        top=dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
        frame_size=(448, 448),
        notes="video: frames in pairs, 448x448 px -> 32x32 patches -> 16x16 = 256 tokens per 2 frames (frame size "
        "is a choice: Qwen's processor picks it from min/max pixels)",
        unverified=("text (taken as Qwen2-7B, which Qwen2-VL-7B is built on; not checked against its config.json)",),
        sources={
            "text": "Qwen2-7B numbers (see llava-onevision-7b) with mrope_section [16, 24, 24]",
            "vision": "transformers 5.24 Qwen2VLVisionConfig defaults",
        },
    ),
    "qwen2.5-vl-7b": RealPreset(
        name="qwen2.5-vl-7b",
        model_type="qwen2_5_vl",
        hf_id="Qwen/Qwen2.5-VL-7B-Instruct",
        text={
            **_QWEN2_7B_TEXT,
            "max_position_embeddings": 128000,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        },
        # Qwen2.5-VL-7B-Instruct config.json: depth 32, hidden 1280, MLP 3420 (SwiGLU), 16 heads, out 3584,
        # window 112 px, full-attention blocks 7/15/23/31, tokens_per_second 2.
        vision=dict(
            depth=32,
            hidden_size=1280,
            intermediate_size=3420,
            num_heads=16,
            out_hidden_size=3584,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31],
            tokens_per_second=2,
            hidden_act="silu",
        ),
        top=dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
        frame_size=(448, 448),
        notes="video: as Qwen2-VL (256 tokens per 2 frames at 448x448); windowed vision attention",
        sources={"text": "Qwen2.5-VL-7B-Instruct config.json", "vision": "Qwen2.5-VL-7B-Instruct config.json"},
    ),
    "qwen3-vl-8b": RealPreset(
        name="qwen3-vl-8b",
        model_type="qwen3_vl",
        hf_id="Qwen/Qwen3-VL-8B-Instruct",
        # Qwen3-VL-8B config.json (quoted in public code): hidden 4096, 36 layers, 32 heads, 8 KV heads, head_dim 128,
        # vocabulary 151936, rope_theta 5e6, interleaved M-RoPE [24, 20, 20]. FFN 12288 is Qwen3-8B's: unverified.
        text=dict(
            hidden_size=4096,
            intermediate_size=12288,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=151936,
            max_position_embeddings=262144,
            rms_norm_eps=1e-6,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 5000000.0,
                "mrope_section": [24, 20, 20],
                "mrope_interleaved": True,
            },
        ),
        # Qwen3-VL-8B config.json (and transformers 5.24 Qwen3VLVisionConfig defaults): depth 27, hidden 1152,
        # MLP 4304, 16 heads, patch 16, out 4096, 2304 position embeddings, deepstack layers 8/16/24.
        vision=dict(
            depth=27,
            hidden_size=1152,
            intermediate_size=4304,
            num_heads=16,
            out_hidden_size=4096,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[8, 16, 24],
            hidden_act="gelu_pytorch_tanh",
        ),
        top=dict(
            image_token_id=151655,
            video_token_id=151656,
            vision_start_token_id=151652,
            vision_end_token_id=151653,
            tie_word_embeddings=False,
        ),
        frame_size=(448, 448),
        notes="video: frames in pairs, 448x448 px, patch 16 -> 28x28 -> 14x14 = 196 tokens per 2 frames, each pair "
        "in its own vision block with a timestamp between blocks",
        unverified=("text.intermediate_size (12288, Qwen3-8B's FFN)",),
        sources={"text": "Qwen3-VL-8B config.json", "vision": "Qwen3-VL-8B config.json"},
    ),
}

_ALIASES = {
    "onevision-7b": "llava-onevision-7b",
    "llava-onevision-qwen2-7b": "llava-onevision-7b",
    "llava-next-video": "llava-next-video-7b",
    "qwen2-vl": "qwen2-vl-7b",
    "qwen2.5-vl": "qwen2.5-vl-7b",
    "qwen2_5-vl-7b": "qwen2.5-vl-7b",
    "qwen3-vl": "qwen3-vl-8b",
}


def preset(name: str) -> RealPreset:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in PRESETS:
        raise AdapterError(f"no real-size preset {name!r}; presets are {sorted(PRESETS)}")
    return PRESETS[key]


def _check_depth(value, full: int, what: str) -> int:
    if value is None:
        return full
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AdapterError(f"{what} must be a positive int (or None for full depth), got {value!r}")
    return min(int(value), full)


def real_config(name: str, layers: int | None = None, vision_layers: int | None = None):
    """The HF config of a preset, with the decoder cut to `layers` and the vision tower to `vision_layers`.

    `vision_layers=None` follows `layers` (capped at the tower's depth); pass it explicitly to cut only one side.
    Qwen2.5-VL full-attention blocks and Qwen3-VL deepstack layers beyond the cut are dropped.
    """
    import transformers

    spec = preset(name)
    text = copy.deepcopy(spec.text)
    vision = copy.deepcopy(spec.vision)
    text["num_hidden_layers"] = _check_depth(layers, spec.text_layers, "layers")
    depth = _check_depth(vision_layers if vision_layers is not None else layers, spec.vision_layers, "vision_layers")
    vision[spec.vision_layers_key] = depth
    for key in ("fullatt_block_indexes", "deepstack_visual_indexes"):
        if key in vision:
            vision[key] = [i for i in vision[key] if i < depth]
    top = copy.deepcopy(spec.top)
    # Each top config's default text / vision classes are the checkpoints' (OneVision: Qwen2 + SigLIP; NeXT-Video:
    # Llama + CLIP; Qwen-VL: its own), so the sub-config dicts need no model_type of their own.
    return transformers.AutoConfig.for_model(spec.model_type, text_config=text, vision_config=vision, **top)


def fill_random_(model, seed: int = 0, std: float = 0.02) -> None:
    """Overwrite every parameter with a tiled block of N(0, std) values: deterministic, fast, every page touched.

    Norm weights get 1 + noise so activations keep a sane scale through the (random) layers.
    """
    gen = torch.Generator().manual_seed(seed)
    block = torch.randn(1 << 16, generator=gen) * std
    with torch.no_grad():
        for name, param in model.named_parameters():
            src = block.to(param.device, param.dtype)
            if "norm" in name.lower() and name.endswith("weight"):
                src = src + 1
            flat = param.view(-1)
            n = src.numel()
            full = flat.numel() // n
            if full:
                flat[: full * n].view(full, n).copy_(src.expand(full, n))
            rest = flat.numel() - full * n
            if rest:
                flat[full * n :].copy_(src[:rest])


def real_model(
    name: str,
    layers: int | None = None,
    vision_layers: int | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    attn_implementation: str = "sdpa",
    seed: int = 0,
):
    """A randomly initialised model of a preset's geometry (optionally truncated), in eval mode. Nothing is downloaded."""
    import transformers
    from transformers import initialization as hf_init

    config = real_config(name, layers, vision_layers)
    cls = transformers.AutoModelForImageTextToText._model_mapping[type(config)]
    with hf_init.no_init_weights(), torch.device(device):
        model = cls._from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    if torch.device(device).type != "meta":
        fill_random_(model, seed=seed)
    return model.eval()


# ----------------------------------------------------------------------------------------------- inputs


def _family(config, what: str):
    family = family_for(config.model_type) if config.model_type in MODEL_TYPE_TO_PATCH else None
    if family is None or getattr(family, what) is None:
        raise AdapterError(f"no video input layout for model_type {config.model_type!r}")
    return family


def stock_visual_tokens(config, frames: int, frame_size: tuple[int, int] | None = None) -> int:
    """Visual placeholder tokens the stock processor puts in for one video of `frames` frames (the family's
    `stock_tokens`; Qwen-VL needs the frame size)."""
    return _family(config, "stock_tokens").stock_tokens(config, frames, frame_size)


def video_inputs(
    config,
    frames: int,
    frame_size: Sequence[int] | None = None,
    text_before: int = 14,
    text_after: int = 20,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """Hand-built inputs for one video, in the layout the stock processor produces (stock placeholder counts).

    Pixels are standard-normal in `dtype` (HF examples move processor outputs to the model dtype); text tokens are
    random non-special ids below 1000. The layout is the family's (`video_inputs` in its patch module; e.g.
    Qwen3-VL gets one vision block per frame pair with its `<t seconds>` tokens before each, at one frame a second).
    """
    if isinstance(config, Mapping):
        raise AdapterError("video_inputs needs an HF config (or a model's .config)")
    config = getattr(config, "config", config)
    gen = torch.Generator().manual_seed(seed)
    family = _family(config, "video_inputs")

    special = {getattr(config, k, None) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                  "vision_end_token_id", "pad_token_id", "eos_token_id")}
    vocab = config.text_config.vocab_size
    candidates = torch.tensor([i for i in range(min(10, vocab // 2), min(1000, vocab)) if i not in special])

    def words(n):
        return candidates[torch.randint(len(candidates), (n,), generator=gen)]

    out = family.video_inputs(config, frames, frame_size, words, text_before, text_after, gen, dtype)
    return {k: v.to(device) for k, v in out.items()}
