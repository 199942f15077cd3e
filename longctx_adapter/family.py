"""What a model family declares: everything family-specific, as data and small functions, in one object.

patches/<family>.py builds one VisualFamily per `config.model_type` and registry.py finds it; every other module
(call path, question guidance, chunked encoding, config presets, the memory estimator, eval prompts) asks the
family instead of branching on the model type. This layer imports torch only (transformers inside functions, no
version check), so config.py and tools running under another transformers release can read family knowledge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

__all__ = ["OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "HALF", "EncoderCost", "Segment", "VisualFamily", "make_family"]

#: pixel normalization of the public checkpoints' processors (OpenAI CLIP; SigLIP-style 0.5)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


@dataclass
class Segment:
    """The visual features behind one placeholder run, in the layout pooling understands.

    grid: (T, H, W, D) features to pool, or None when the run stays stock (`fixed` then holds its features).
    tail: (m, D) features appended after the pooled tokens (LLaVA-OneVision's one newline per video).
    """

    stock_tokens: int
    grid: torch.Tensor | None = None
    tail: torch.Tensor | None = None
    fixed: torch.Tensor | None = None
    runs: int = 1  # placeholder runs this video fills (Qwen3-VL: one block per frame)
    side_grids: tuple = ()  # more (T, H, W, D') grids pooled exactly like `grid` (Qwen3-VL DeepStack)

    @property
    def frames(self) -> int:
        return 0 if self.grid is None else self.grid.shape[0]


@dataclass(frozen=True)
class EncoderCost:
    """How the memory estimator (profiling/estimate.py) models the family's vision stage.

    kind: "tower" (an image ViT then a projector: the LLaVA family) or "patches" (a ViT on patchified frames then
        a merger: Qwen-VL).
    cls_token: tower: the ViT prepends a CLS token (CLIP) that feature selection drops.
    pools_after_projector: tower: the stock model shrinks each frame's grid after the projector (OneVision's
        bilinear 2x) rather than before it (LLaVA-NeXT-Video's 2x average).
    mlp_width: patches: vision config -> MLP activations alive per patch (elements).
    position_copy: patches: the ViT builds a per-call copy of its interpolated position embeddings (Qwen3-VL).
    """

    kind: str
    cls_token: bool = False
    pools_after_projector: bool = False
    mlp_width: Callable | None = None
    position_copy: bool = False


def _no_text(blocks: int) -> int:
    return 0


def _one_step(config) -> int:
    return 1


@dataclass(frozen=True)
class VisualFamily:
    """Everything the core needs to know about one model type, as data and small functions of HF configs/models.

    Fields are grouped by the module that asks; each one is explained where it is declared below. The call path's
    fields, the preset and the prompt placeholder are required; every other default means "this family does not
    do that", and the module that needs it refuses with a clear error. Functions run inside the adapter's calls,
    so they may import transformers; building a VisualFamily must not.
    """

    # --- identity and the call path (hooks/call_path.py) -----------------------------------------------------
    model_types: tuple[str, ...]  # the config.model_type values this declaration serves
    modality: str  # "image" (frames arrive as images) or "video"; the key in mm_encoder_outputs
    token_attr: str  # config attribute holding the placeholder id
    pixel_keys: tuple[str, ...]  # call kwargs that carry this modality's pixels
    encoder_name: str  # method of model.model that encodes this modality
    required: tuple[str, ...]  # dotted attributes of the top model the patch relies on (checked at apply time)
    # (model, encoder_kwargs, run_lengths, adapter_config) -> (segments, template output): run the stock encoder
    # (wrapped, never copied) and cut its output into one Segment per placeholder run
    encode: Callable
    # (template output, features, side_features) -> the mm_encoder_outputs[modality] value the stock forward
    # expects, given one (n_i, D) tensor per video (and its pooled side grids)
    pack: Callable
    frame_grid: Callable  # config -> (H, W) per frame of the grid pooling acts on (apply-time window checks)
    # presets (config.py): the AdapterConfig dict AdapterConfig.preset(model_type) returns; its rope visual_window
    # (where the model's visual training window is known) fills in a user's rope spec that leaves the window out
    preset: Mapping
    # evaluation (eval/video.py): the placeholder text of a prompt without chat template (per frame for "image")
    prompt_placeholder: str
    # other per-token call tensors rewritten with input_ids: name -> (padding value, value at an inserted
    # placeholder), e.g. Qwen's mm_token_type_ids
    token_tensors: Mapping = field(default_factory=dict)
    tail_tokens: int = 0  # stock tokens after each video's grid, kept after the pooled ones (OneVision: a newline)
    # (handle) -> family state: apply-time step (instance patches go through handle.shadow); what it returns is
    # kept as handle.family_state
    install: Callable | None = None
    # (handle, call_path.PoolContext) -> per-call state: runs after the rewrite of each adapted call; what it
    # returns is Prepared.family, and this thread's handle.calls.family while the call runs
    finish: Callable | None = None
    # (handle, prepared, call) -> per-row extent of the visual tokens for the RoPE factor (default: their count)
    visual_extent: Callable | None = None
    blocks_per_frame: bool = False  # every frame sits in its own block of text + placeholders (Segment.runs > 1)
    # (model, row_ids, runs) -> [(start | None, stop)] caller span of each frame's block, so pooling that merges
    # frames can delete the blocks it no longer needs (tokens.merged_frame_blocks); None: refuse such pooling
    frame_blocks: Callable | None = None

    # --- question guidance (hooks/question.py) ---------------------------------------------------------------
    # (mean, std) of the public checkpoints' processors, used when no processor is given (None: a processor is needed)
    input_norm: tuple | None = None
    # (model, encoder_kwargs, segments) -> [(pixels (n, 3, h, w), rows in the vision tower's batch or None)]: the
    # frames behind each segment, as the question scorer should see them (None: no question-guided pooling)
    scorer_frames: Callable | None = None
    # attribute of model.model whose hidden states a scorer with the same weights may reuse (None: never)
    scorer_tower: str | None = "vision_tower"

    # --- chunked encoding (hooks/chunking.py) ----------------------------------------------------------------
    # (encoder_kwargs, bounds) -> iterable of (video indices, encoder kwargs of one chunk), where bounds(frames)
    # lists the chunks' [start, stop) in grid frames; None: the family cannot encode a video in chunks
    split_video: Callable | None = None
    temporal_patch: Callable = _one_step  # config -> input frames per grid frame (Qwen-VL: 2)

    # --- sizes and memory (profiling/) -----------------------------------------------------------------------
    stock_tokens: Callable | None = None  # (config, frames, frame_size) -> placeholders of one video, stock
    video_grid: Callable | None = None  # (config, frames, frame_size) -> (T, H, W) grid the adapter pools
    frame_size: tuple[int, int] | None = None  # (height, width) in pixels when a caller gives none (Qwen-VL)
    marker_tokens: Callable = _no_text  # blocks -> text tokens the processor writes around one video's runs
    cost: EncoderCost | None = None  # how the memory estimator models the vision stage (None: not modelled)
    # (config, frames, frame_size, words, text_before, text_after, generator, dtype) -> hand-built inputs of one
    # video in the processor's layout; words(n) draws n random text ids
    video_inputs: Callable | None = None

    # --- evaluation (eval/) ----------------------------------------------------------------------------------
    processor_kwargs: Callable | None = None  # (frames, timestamps, fps) -> extra kwargs for the HF processor
    pixel_budget_args: tuple[str, ...] = ()  # processor arguments that bound a frame's pixels (Qwen-VL's)
    # (model, inputs) -> position ids of a whole input as the model computes them; None: 1-D positions that
    # follow the cache length
    rope_positions: Callable | None = None

    def __post_init__(self):
        object.__setattr__(self, "preset", _read_only(self.preset))
        object.__setattr__(self, "token_tensors", MappingProxyType(dict(self.token_tensors)))

    @property
    def model_type(self) -> str:
        return self.model_types[0]

    def token_id(self, config) -> int:
        return getattr(config, self.token_attr)


def _read_only(value):
    if isinstance(value, Mapping):
        return MappingProxyType({k: _read_only(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_read_only(v) for v in value)
    return value


_MODALITIES = {
    "video": dict(
        modality="video",
        token_attr="video_token_id",
        pixel_keys=("pixel_values_videos",),
        encoder_name="get_video_features",
    ),
    "image": dict(
        modality="image", token_attr="image_token_id", pixel_keys=("pixel_values",), encoder_name="get_image_features"
    ),
}
_DECODER = ("model.language_model", "model.language_model.rotary_emb")


def make_family(model_type: str, modality: str, hooked: tuple[str, ...], **rest) -> VisualFamily:
    """A family whose stock encoder, decoder and rotary are where every supported class keeps them.

    hooked: the other attributes of `model.model` the patch relies on (checked at apply time).
    """
    fields = _MODALITIES[modality]
    required = (f"model.{fields['encoder_name']}", *(f"model.{name}" for name in hooked), *_DECODER)
    return VisualFamily(model_types=(model_type,), required=required, **fields, **rest)
