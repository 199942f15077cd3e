"""Tiny random models of every supported class, built from configs: the ONE shared factory.

Tests, benchmarks and the demo all build their models, tokenizer, processors and inputs here, so that
grids and placeholder counts are the same everywhere. Nothing is downloaded: the tokenizer is a
WordLevel vocabulary built in memory and every model comes from a config with a fixed seed.

Per-frame token grids and the exact stock placeholder count for one video of T frames
(see :func:`tokens_per_frame` and :func:`stock_video_tokens`):

- ``llava``: CLIP 32 px / patch 4 = 8x8 grid, CLS dropped -> ``T * 64`` ``<image>`` (one image per frame).
- ``llava_next``: CLIP 8x8 base grid plus anyres tiles (pinpoints 32x64, 64x32, 64x64) -> per frame
  ``64 + unpadded + newlines``; 64x64 frames: ``64 + 16*16 + 16 = 336``, so ``T * 336`` ``<image>``.
- ``llava_next_video``: CLIP 8x8, 2x2 average pool before the projector -> 4x4 -> ``T * 16`` ``<video>``.
- ``llava_onevision``: SigLIP 28 px / patch 4 = 7x7 (odd, like the real 27x27), bilinear 2x after the
  projector -> ceil(7/2) = 4x4 -> ``T * 16 + 1`` ``<video>`` (one ``image_newline`` per video).

The classes that take no videos (``llava``, ``llava_next``) get a video as a list of images with one
``<image>`` per frame, consecutive and without separator. Add a model family by adding a
:class:`TinySpec` to ``_SPECS`` and a branch to the few ``model_type`` dispatches below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    BatchFeature,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessor,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaNextVideoProcessor,
    LlavaNextVideoVideoProcessor,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    SiglipVisionConfig,
)
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

__all__ = [
    "TINY_MODEL_TYPES",
    "TinySpec",
    "tiny_spec",
    "tiny_config",
    "tiny_model",
    "tiny_tokenizer",
    "tiny_processor",
    "synthetic_video",
    "processor_inputs",
    "hand_inputs",
    "frames_as_images",
    "video_modality",
    "placeholder_token_id",
    "tokens_per_frame",
    "stock_video_tokens",
    "TINY_FRAME_SIZE",
    "MAX_FRAMES",
    "TINY_VOCAB_SIZE",
    "TEXT_TOKEN_IDS",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "IMAGE_TOKEN_ID",
    "VIDEO_TOKEN_ID",
    "CHAT_TEMPLATE",
]

TINY_MODEL_TYPES = ("llava", "llava_next", "llava_next_video", "llava_onevision")

#: default height and width of :func:`synthetic_video` frames (before the processors resize them)
TINY_FRAME_SIZE = 64
#: frames a tiny model must hold after stock placeholder expansion (sizes max_position_embeddings)
MAX_FRAMES = 256

# ----------------------------------------------------------------------------------------------- tokenizer

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
IMAGE_TOKEN, VIDEO_TOKEN = "<image>", "<video>"
VISION_START, VISION_END = "<|vision_start|>", "<|vision_end|>"  # Qwen-VL block markers
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END)

_WORDS = """
user assistant system question answer option options choose pick best correct letter please
what which where when who whom whose why how many much is are was were be been being do does did
the a an this that these those it its there here of in on at to from into onto over under above below
by with without for and or but not no yes if then than so as all any each every some most more less
frame frames video videos clip image images picture scene shot second seconds minute minutes time
first last next previous before after during between while until start end beginning middle center
left right top bottom up down front back near far inside outside around across through along
color colour colors shape shapes size object objects thing things background foreground edge corner
red green blue yellow orange purple pink brown black white gray grey cyan magenta gold silver
square circle triangle rectangle line lines stripe stripes dot dots grid ring star cross box ball
small large big tiny huge long short wide narrow thin thick bright dark light heavy fast slow
moving moves move moved static still appears appear appeared disappears visible hidden shown shows
count number describe find see look looks happen happens happened event events action actions
person people man woman child dog cat car bird tree house road water sky table door window hand
needle haystack word words say said tell name named called same different other another only also
one two three four five six seven eight nine ten hundred thousand once twice again
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 20 24 25 30 32 50 64 100 128 256
a b c d e f g h i j k l m n o p q r s t u v w x y z A B C D E F
? . , : ; ! ( ) - ' " /
"""


def _vocab_list() -> list[str]:
    seen: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for word in _WORDS.split():
        seen.setdefault(word, None)
    return list(seen)


_VOCAB = _vocab_list()

#: rendering of a chat in the tiny models' own format: ``user <video> question assistant``
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %} {% endif %}{{ message['role'] }} "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'video' %}<video>"
    "{% elif part['type'] == 'text' %}{% if not loop.first %} {% endif %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}{% if add_generation_prompt %} assistant{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh WordLevel tokenizer (Whitespace pre-tokenizer) over a few hundred plain words.

    Special tokens ``<pad>`` (0), ``<unk>`` (1), ``<s>`` (2), ``</s>`` (3), ``<image>`` (4), ``<video>`` (5);
    ``<image>``/``<video>`` are added tokens, so ``"<image><image>"`` splits into two ids. No special tokens are
    added on encode (like Qwen2). ``padding_side="left"``. Saveable with ``save_pretrained`` and picklable.
    """
    vocab = {tok: i for i, tok in enumerate(_VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
    )


def _token_id(token: str) -> int:
    return _VOCAB.index(token)


TINY_VOCAB_SIZE = len(_VOCAB)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = (_token_id(t) for t in (PAD, UNK, BOS, EOS))
IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = _token_id(IMAGE_TOKEN), _token_id(VIDEO_TOKEN)
#: ids that are plain words (never special): what random text is drawn from
TEXT_TOKEN_IDS = tuple(range(len(SPECIAL_TOKENS), TINY_VOCAB_SIZE))

# ----------------------------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class TinySpec:
    """What the factory needs to know about one model class."""

    model_type: str
    model_class: type
    processor_class: type
    text_model_type: str  # "llama" | "qwen2" (| "qwen2_vl"... later)
    vision_model_type: str  # "clip_vision_model" | "siglip_vision_model"
    image_size: int  # vision tower input size (pixels)
    patch_size: int
    takes_videos: bool  # False: a video is a list of frames passed as images, one <image> per frame
    vision_feature_select_strategy: str  # "default" drops CLIP's CLS token, "full" keeps all (SigLIP has none)
    vision_feature_layer: int
    image_grid_pinpoints: tuple[tuple[int, int], ...] | None = None

    @property
    def grid(self) -> int:
        """Vision tower tokens per side of one frame (before any stock pooling)."""
        return self.image_size // self.patch_size


# LLaVA-NeXT style pinpoints scaled from 336 to 32: [[336,672],[672,336],[672,672]] (square frames -> 2x2 tiles)
_NEXT_PINPOINTS = ((32, 64), (64, 32), (64, 64))
# OneVision style pinpoints scaled from 384 to 28: every (i*28, j*28), i, j in 1..6
_OV_PINPOINTS = tuple((28 * i, 28 * j) for i in range(1, 7) for j in range(1, 7))

_SPECS: dict[str, TinySpec] = {
    "llava": TinySpec(
        "llava", LlavaForConditionalGeneration, LlavaProcessor, "llama", "clip_vision_model",
        32, 4, False, "default", -2,
    ),
    "llava_next": TinySpec(
        "llava_next", LlavaNextForConditionalGeneration, LlavaNextProcessor, "llama", "clip_vision_model",
        32, 4, False, "default", -2, _NEXT_PINPOINTS,
    ),
    "llava_next_video": TinySpec(
        "llava_next_video", LlavaNextVideoForConditionalGeneration, LlavaNextVideoProcessor, "llama",
        "clip_vision_model", 32, 4, True, "default", -2, _NEXT_PINPOINTS,
    ),
    "llava_onevision": TinySpec(
        "llava_onevision", LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor, "qwen2",
        "siglip_vision_model", 28, 4, True, "full", -1, _OV_PINPOINTS,
    ),
}  # fmt: skip


def tiny_spec(model_type: str) -> TinySpec:
    """The :class:`TinySpec` of ``model_type``; ``ValueError`` for a type the factory does not know."""
    try:
        return _SPECS[model_type]
    except KeyError:
        raise ValueError(f"no tiny model for model_type {model_type!r}; known: {', '.join(TINY_MODEL_TYPES)}") from None


def frames_as_images(model_type: str) -> bool:
    """True where a video is passed as a list of images (one ``<image>`` per frame)."""
    return not tiny_spec(model_type).takes_videos


def video_modality(model_type: str) -> str:
    """``"video"`` or ``"image"``: which placeholder a video's frames use in this class."""
    return "video" if tiny_spec(model_type).takes_videos else "image"


def placeholder_token_id(model_or_config, modality: str = "video") -> int:
    """The placeholder id of ``modality`` ("image" or "video") for a model or a config.

    ``modality="video"`` on a class without video support (llava, llava_next) gives the image token, which is
    what a video's frames use there.
    """
    config = getattr(model_or_config, "config", model_or_config)
    if modality not in ("image", "video"):
        raise ValueError(f"modality must be 'image' or 'video', not {modality!r}")
    if modality == "video" and getattr(config, "video_token_id", None) is not None:
        return config.video_token_id
    return config.image_token_id


# ----------------------------------------------------------------------------------------------- token counts


@lru_cache(maxsize=64)
def _llava_next_image_tokens(height: int, width: int) -> int:
    """Stock LLaVA-NeXT placeholder count of one image of original size (height, width), as its processor
    computes it (base grid + unpadded anyres grid + one newline per anyres row, CLS dropped)."""
    proc = tiny_processor("llava_next")
    return int(proc._get_num_multimodal_tokens(image_sizes=[[height, width]])["num_image_tokens"][0])


def tokens_per_frame(model_type: str, height: int = TINY_FRAME_SIZE, width: int = TINY_FRAME_SIZE) -> int:
    """Stock placeholder tokens one frame contributes (without OneVision's single per-video newline).

    ``height``/``width`` (the frame size before the processor) only matter for ``llava_next`` (anyres).
    """
    spec = tiny_spec(model_type)
    grid = spec.grid
    if model_type == "llava":
        return grid * grid  # CLS dropped by "default"
    if model_type == "llava_next":
        return _llava_next_image_tokens(height, width)
    if model_type == "llava_next_video":
        return (grid // 2) * (grid // 2)  # 2x2 average pool before the projector
    if model_type == "llava_onevision":
        pooled = math.ceil(grid / 2)  # bilinear 2x after the projector, odd grid rounds up
        return pooled * pooled
    raise ValueError(f"no token count for {model_type!r}")


def stock_video_tokens(
    model_type: str, frames: int, height: int = TINY_FRAME_SIZE, width: int = TINY_FRAME_SIZE
) -> int:
    """Exact placeholder count the stock model expects for one video of ``frames`` frames."""
    n = frames * tokens_per_frame(model_type, height, width)
    return n + 1 if model_type == "llava_onevision" else n  # OneVision: one image_newline per video


def _max_positions(model_type: str) -> int:
    need = stock_video_tokens(model_type, MAX_FRAMES) + 1024
    return 1 << (need - 1).bit_length()


# ----------------------------------------------------------------------------------------------- configs


def _text_config(spec: TinySpec, text_overrides: dict) -> PretrainedConfig:
    kwargs = dict(
        vocab_size=TINY_VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=_max_positions(spec.model_type),
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    if spec.text_model_type == "llama":
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
        kwargs.update(text_overrides)
        return LlamaConfig(**kwargs)
    if spec.text_model_type == "qwen2":
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": 1000000.0}
        kwargs.update(text_overrides)
        return Qwen2Config(**kwargs)
    raise ValueError(f"unknown text model type {spec.text_model_type!r}")


def _vision_config(spec: TinySpec) -> PretrainedConfig:
    common = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    if spec.vision_model_type == "clip_vision_model":
        return CLIPVisionConfig(projection_dim=32, **common)
    if spec.vision_model_type == "siglip_vision_model":
        return SiglipVisionConfig(vision_use_head=False, **common)
    raise ValueError(f"unknown vision model type {spec.vision_model_type!r}")


def tiny_config(model_type: str, **text_overrides) -> PretrainedConfig:
    """The tiny config of ``model_type``; keyword arguments override fields of its ``text_config``."""
    spec = tiny_spec(model_type)
    text_config = _text_config(spec, text_overrides)
    vision_config = _vision_config(spec)
    common = dict(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=IMAGE_TOKEN_ID,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        vision_feature_layer=spec.vision_feature_layer,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    pinpoints = [list(p) for p in spec.image_grid_pinpoints] if spec.image_grid_pinpoints else None
    per_frame = tokens_per_frame(model_type)
    if model_type == "llava":
        return LlavaConfig(image_seq_length=per_frame, **common)
    if model_type == "llava_next":
        return LlavaNextConfig(image_grid_pinpoints=pinpoints, image_seq_length=spec.grid**2, **common)
    if model_type == "llava_next_video":
        return LlavaNextVideoConfig(
            image_grid_pinpoints=pinpoints,
            video_token_id=VIDEO_TOKEN_ID,
            spatial_pool_mode="average",
            spatial_pool_stride=2,
            image_seq_length=spec.grid**2,
            video_seq_length=per_frame,
            **common,
        )
    if model_type == "llava_onevision":
        return LlavaOnevisionConfig(
            image_grid_pinpoints=pinpoints, video_token_id=VIDEO_TOKEN_ID, vision_aspect_ratio="anyres_max_9", **common
        )
    raise ValueError(f"no tiny config for {model_type!r}")


def tiny_model(
    model_type: str,
    seed: int = 0,
    attn_implementation: str = "sdpa",
    dtype: torch.dtype = torch.float32,
    **text_overrides,
):
    """A tiny random model of ``model_type`` in eval mode, on CPU.

    Weights are initialised in float32 under ``torch.manual_seed(seed)`` (inside a forked RNG, so the caller's
    RNG state is untouched) and then cast to ``dtype``: the same seed gives identical weights on every call,
    and a bfloat16 model is the float32 one rounded.
    """
    spec = tiny_spec(model_type)
    config = tiny_config(model_type, **text_overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.model_class._from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    if dtype != torch.float32:
        model = model.to(dtype)
        for cfg in (model.config, *(getattr(model.config, k) for k in model.config.sub_configs)):
            if cfg is not None:
                cfg.dtype = dtype
    return model.eval()


# ----------------------------------------------------------------------------------------------- processors


def tiny_processor(model_type: str):
    """The real HF processor of ``model_type`` built on :func:`tiny_tokenizer` with the tiny sizes.

    Image/video processors resize (and for CLIP classes centre-crop) to the tiny vision ``image_size``; the
    processor's ``patch_size`` / ``num_image_tokens`` / ``vision_feature_select_strategy`` match
    :func:`tiny_config`, so its placeholder counts are exactly what the stock tiny model consumes.
    """
    spec = tiny_spec(model_type)
    tok = tiny_tokenizer()
    side = spec.image_size
    pinpoints = [list(p) for p in spec.image_grid_pinpoints] if spec.image_grid_pinpoints else None
    clip_sizes = dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
    if model_type == "llava":
        return LlavaProcessor(
            image_processor=LlavaImageProcessor(**clip_sizes),
            tokenizer=tok,
            patch_size=spec.patch_size,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            num_additional_image_tokens=1,  # CLIP's CLS
            chat_template=CHAT_TEMPLATE,
        )
    if model_type == "llava_next":
        return LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **clip_sizes),
            tokenizer=tok,
            patch_size=spec.patch_size,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
        )
    if model_type == "llava_next_video":
        return LlavaNextVideoProcessor(
            video_processor=LlavaNextVideoVideoProcessor(**clip_sizes),
            image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **clip_sizes),
            tokenizer=tok,
            patch_size=spec.patch_size,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            num_additional_image_tokens=1,
            chat_template=CHAT_TEMPLATE,
        )
    if model_type == "llava_onevision":
        square = {"height": side, "width": side}
        return LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=square, image_grid_pinpoints=pinpoints),
            tokenizer=tok,
            video_processor=LlavaOnevisionVideoProcessor(size=square),
            num_image_tokens=spec.grid**2,
            vision_feature_select_strategy=spec.vision_feature_select_strategy,
            vision_aspect_ratio="anyres_max_9",
            chat_template=CHAT_TEMPLATE,
        )
    raise ValueError(f"no tiny processor for {model_type!r}")


# ----------------------------------------------------------------------------------------------- inputs


def synthetic_video(frames: int, height: int = TINY_FRAME_SIZE, width: int = TINY_FRAME_SIZE, seed: int = 0):
    """A deterministic uint8 video ``(frames, height, width, 3)`` with moving structure.

    A colour gradient whose hue drifts over time, diagonal stripes that scroll, and a bright square that moves
    across the frame; colours, speeds and phases depend on ``seed``. Not noise: neighbouring frames and pixels
    are correlated, as in real footage.
    """
    if frames < 1 or height < 1 or width < 1:
        raise ValueError("frames, height and width must be positive")
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32)[:, None, None]
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[None, :, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    speed = rng.uniform(0.05, 0.3)
    channels = []
    for c in range(3):
        gradient = 0.5 + 0.5 * np.sin(2 * np.pi * (x + y) * (c + 1) / 2 + phase[c] + speed * t)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (6 * x - 4 * y) + 0.6 * t + c)
        channels.append(0.7 * gradient + 0.3 * stripes)
    video = np.stack(channels, axis=-1)  # (T, H, W, 3) in [0, 1]
    side = max(1, min(height, width) // 4)
    colour = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    vy, vx = rng.uniform(0.5, 2.0, size=2)
    y0, x0 = rng.integers(0, max(1, height - side)), rng.integers(0, max(1, width - side))
    for i in range(frames):
        top = int(y0 + vy * i) % max(1, height - side + 1)
        left = int(x0 + vx * i) % max(1, width - side + 1)
        video[i, top : top + side, left : left + side] = colour
    return np.clip(video * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _frame_counts(frames: int, batch: int, frame_counts: Sequence[int] | None) -> list[int]:
    if frame_counts is None:
        return [int(frames)] * batch
    counts = [int(n) for n in frame_counts]
    if len(counts) != batch:
        raise ValueError(f"frame_counts has {len(counts)} entries for batch {batch}")
    if min(counts) < 1:
        raise ValueError("every row needs at least one frame")
    return counts


def _check_counts(model_type: str, counts: list[int]) -> None:
    if tiny_spec(model_type).takes_videos and len(set(counts)) > 1:
        raise ValueError(
            f"{model_type} stacks videos into one tensor (B, T, C, H, W): every row needs the same frame count, "
            f"got {counts}"
        )


def processor_inputs(
    model_type: str,
    frames: int,
    prompt: str | Sequence[str] = "what color is the frame",
    batch: int = 1,
    frame_counts: Sequence[int] | None = None,
    seed: int = 0,
    height: int = TINY_FRAME_SIZE,
    width: int = TINY_FRAME_SIZE,
    ragged: bool = True,
) -> BatchFeature:
    """Run :func:`tiny_processor` on synthetic videos: exactly what a user would feed the model.

    Row ``b`` holds ``synthetic_video(frame_counts[b], height, width, seed + b)`` and the text
    ``"user <video> {prompt} assistant"`` (``<image>`` repeated once per frame, no separator, for llava and
    llava_next). ``batch > 1`` gives a left-padded batch: with one string ``prompt`` and ``ragged=True`` row ``b``
    gets ``b`` extra leading words ``"please"`` so rows differ in length; pass a list of prompts (one per row)
    for exact control. ``frame_counts`` (one per row) may differ only where frames are separate images (llava,
    llava_next); other classes raise ``ValueError``.
    """
    counts = _frame_counts(frames, batch, frame_counts)
    _check_counts(model_type, counts)
    if isinstance(prompt, str):
        prompts = [" ".join(["please"] * (b if ragged else 0) + [prompt]) for b in range(batch)]
    else:
        prompts = list(prompt)
        if len(prompts) != batch:
            raise ValueError(f"prompt has {len(prompts)} entries for batch {batch}")
    proc = tiny_processor(model_type)
    videos = [synthetic_video(n, height, width, seed=seed + b) for b, n in enumerate(counts)]
    if frames_as_images(model_type):
        texts = [f"user {IMAGE_TOKEN * n} {p} assistant" for n, p in zip(counts, prompts)]
        images = [list(video) for video in videos]
        return proc(text=texts, images=images, padding=True, return_tensors="pt")
    texts = [f"user {VIDEO_TOKEN} {p} assistant" for p in prompts]
    return proc(text=texts, videos=videos, padding=True, return_tensors="pt")


def _per_row(value: int | Sequence[int], batch: int, name: str, ragged: bool) -> list[int]:
    if isinstance(value, int):
        return [value + (b if ragged else 0) for b in range(batch)]
    values = [int(v) for v in value]
    if len(values) != batch:
        raise ValueError(f"{name} has {len(values)} entries for batch {batch}")
    return values


def hand_inputs(
    model_type: str,
    frames: int,
    batch: int = 1,
    text_before: int | Sequence[int] = 3,
    text_after: int | Sequence[int] = 4,
    frame_counts: Sequence[int] | None = None,
    seed: int = 0,
    height: int = TINY_FRAME_SIZE,
    width: int = TINY_FRAME_SIZE,
) -> dict:
    """Hand-built inputs with exact control, in the layout the stock model expects.

    Row ``b``: ``text_before[b]`` random word ids, the stock placeholder run of its video (one run per frame for
    llava/llava_next, back to back), ``text_after[b]`` random word ids; rows are left-padded with the pad id and
    ``attention_mask`` 0. An int ``text_before`` gives row ``b`` ``text_before + b`` tokens, so a batch is ragged
    (left-padded) by default; pass a list for exact lengths. ``text_after`` as an int is the same for all rows.
    Pixels are standard-normal tensors at the tiny vision size, deterministic from ``seed``:
    ``pixel_values (sum(frames), 3, S, S)`` for llava; ``pixel_values (sum(frames), tiles, 3, S, S)`` and
    ``image_sizes`` (original ``height, width`` per frame) for llava_next; ``pixel_values_videos (B, T, 3, S, S)``
    for llava_next_video and llava_onevision.
    """
    spec = tiny_spec(model_type)
    counts = _frame_counts(frames, batch, frame_counts)
    _check_counts(model_type, counts)
    before = _per_row(text_before, batch, "text_before", ragged=True)
    after = _per_row(text_after, batch, "text_after", ragged=False)
    gen = torch.Generator().manual_seed(seed)
    text_ids = torch.tensor(TEXT_TOKEN_IDS, dtype=torch.long)
    placeholder = IMAGE_TOKEN_ID if frames_as_images(model_type) else VIDEO_TOKEN_ID

    rows = []
    for b in range(batch):
        n_before = text_ids[torch.randint(len(text_ids), (before[b],), generator=gen)]
        n_after = text_ids[torch.randint(len(text_ids), (after[b],), generator=gen)]
        run = torch.full((stock_video_tokens(model_type, counts[b], height, width),), placeholder, dtype=torch.long)
        rows.append(torch.cat([n_before, run, n_after]))
    length = max(len(r) for r in rows)
    input_ids = torch.full((batch, length), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for b, row in enumerate(rows):
        input_ids[b, length - len(row) :] = row
        attention_mask[b, length - len(row) :] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}

    side = spec.image_size
    total = sum(counts)
    if model_type == "llava":
        out["pixel_values"] = torch.randn((total, 3, side, side), generator=gen)
    elif model_type == "llava_next":
        tiles = image_size_to_num_patches((height, width), [list(p) for p in spec.image_grid_pinpoints], side)
        out["pixel_values"] = torch.randn((total, tiles, 3, side, side), generator=gen)
        out["image_sizes"] = torch.tensor([[height, width]] * total, dtype=torch.long)
    elif spec.takes_videos:
        out["pixel_values_videos"] = torch.randn((batch, counts[0], 3, side, side), generator=gen)
    else:
        raise ValueError(f"no hand inputs for {model_type!r}")
    return out
