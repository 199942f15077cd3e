"""The question scorer: a frozen CLIP or SigLIP model that rates every visual token against the question
(docs/methods.md#prompt-guided).

    scorer = Scorer(clip_model, clip_tokenizer)              # or Scorer.from_pretrained("/path/to/clip")
    register_scorer("clip-l", scorer)                        # then {"scorer": "clip-l"} in a config
    apply_adapter(model, config, scorer=scorer)              # or give it directly (never serialized)

What is computed (per patch, per frame, per question):
- patch embeddings: the scorer vision model's hidden state at `feature_layer` (CLIP: -2 with the CLS token
  dropped, the layer LLaVA feeds its projector and PPLLaVA scores; SigLIP: -1), through the scorer's own
  `post_layernorm` and then CLIP's `visual_projection`, or for SigLIP (which has no projection: its image
  embedding is the attention-pooling head's output, see `SiglipModel.get_image_features`) the head applied to each
  patch as if its attention were all on that patch (value and output projections, then the head's layernorm +
  MLP residual; MaskCLIP-style). Without a head (vision_use_head=False) the post-layernorm state is used.
- whole-frame embeddings (score "global"): the model's own image embedding (CLIP: post_layernorm(CLS of the last
  layer) -> visual_projection; SigLIP: the head over the post-layernormed last layer).
- text embedding: CLIP `text_projection(text_model(question).pooler_output)`; SigLIP `text_model(...).pooler_output`
  with the question padded to max_length as SigLIP was trained. All embeddings are L2-normalized.
- logits = `exp(logit_scale) * cos` (CLIP; 100 for trained CLIP) or `exp(logit_scale) * cos + logit_bias` (SigLIP).

Pixels: the scorer runs on the frames the LMM got. They arrive in the LMM's normalization at its input size; they
are mapped to the scorer's normalization (un-normalize, re-normalize) and resized with `F.interpolate(bilinear,
antialias=True)` to the scorer's `image_size` when the sizes differ (non-square frames, e.g. Qwen-VL, are squashed
to the square input). Where the LMM's vision tower *is* the scorer's vision tower (same weights, same input size
and normalization, e.g. LLaVA-NeXT with CLIP-L/336 and that CLIP as scorer), the hidden states of the LMM's own
encoder pass are reused and no second vision pass runs (longctx_adapter/hooks/question.py decides this).

Long questions: `long_text=True` stretches the text model's position table Long-CLIP style (keep the first 20
positions, interpolate the rest 4x: CLIP's 77 -> 248) on a shallow copy that shares every other weight; the user's
model is never modified.
"""

from __future__ import annotations

import copy
import os
import threading
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from longctx_adapter.errors import AdapterError
from longctx_adapter.family import HALF, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

__all__ = [
    "Scorer",
    "register_scorer",
    "registered_scorers",
    "resolve_scorer",
    "stretch_positions",
    "unregister_scorer",
]


def _kind(model) -> str:
    from transformers import CLIPModel, SiglipModel

    if isinstance(model, CLIPModel):
        return "clip"
    if isinstance(model, SiglipModel):
        return "siglip"
    raise AdapterError(
        f"a scorer must be a transformers CLIPModel or SiglipModel (with text and vision towers), got "
        f"{type(model).__name__}; load one with CLIPModel.from_pretrained(path) or pass a local checkpoint path"
    )


def stretch_positions(table: torch.Tensor, keep: int = 20, factor: int = 4) -> torch.Tensor:
    """Long-CLIP's stretched position table: rows < keep unchanged, each later gap split into `factor` steps.

    (L, D) -> (keep + factor * (L - keep), D); the last `factor` rows extrapolate the final step. CLIP: 77 -> 248.
    """
    length = table.shape[0]
    if not 0 <= keep < length - 1:
        raise AdapterError(
            f"cannot keep {keep} of {length} text positions and stretch the rest; use keep < {length - 1}"
        )
    old = table.detach().to(torch.float64)
    step = torch.arange(factor, dtype=torch.float64)[:, None] / factor
    inner = old[keep:-1][:, None] * (1 - step) + old[keep + 1 :][:, None] * step  # (L-1-keep, factor, D)
    tail = old[-1] + step * (old[-1] - old[-2])
    return torch.cat([old[:keep], inner.reshape(-1, old.shape[1]), tail]).to(table.dtype)


def _stretched_text_model(text_model: nn.Module, keep: int = 20, factor: int = 4) -> nn.Module:
    """A shallow copy of `text_model` with a stretched position table; every other weight is shared."""
    embeddings = copy.copy(text_model.embeddings)
    embeddings._modules = dict(embeddings._modules)
    embeddings._buffers = dict(embeddings._buffers)
    old = text_model.embeddings.position_embedding.weight
    table = stretch_positions(old, keep, factor)
    embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=True)
    embeddings.position_ids = torch.arange(table.shape[0], device=old.device)[None]
    stretched = copy.copy(text_model)
    stretched._modules = dict(text_model._modules)
    stretched.embeddings = embeddings
    stretched.config = copy.deepcopy(text_model.config)
    stretched.config.max_position_embeddings = table.shape[0]
    return stretched


class Scorer:
    """A frozen CLIP/SigLIP model plus its tokenizer, scoring visual tokens against a question (module docstring).

    model: a CLIPModel or SiglipModel (used as given, in no_grad; never modified).
    tokenizer: the scorer's own tokenizer (None: loaded from the model's `name_or_path` when that is a local dir).
    feature_layer: hidden state scored per patch (default: -2 for CLIP, -1 for SigLIP).
    image_mean / image_std: the scorer's pixel normalization (default: OpenAI CLIP's, or 0.5 for SigLIP).
    long_text: stretch the text positions 4x (Long-CLIP) for questions longer than the text window.
    batch_frames: frames per vision forward of the scorer's own pass (bounds its activation memory).
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        feature_layer: int | None = None,
        image_mean=None,
        image_std=None,
        long_text: bool = False,
        batch_frames: int = 16,
    ):
        self.kind = _kind(model)
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else _local_tokenizer(model)
        vision_config = model.config.vision_config
        self.image_size = int(vision_config.image_size)
        self.patch_size = int(vision_config.patch_size)
        layers = int(vision_config.num_hidden_layers)
        self.feature_layer = int(feature_layer if feature_layer is not None else (-2 if self.kind == "clip" else -1))
        if not -layers - 1 <= self.feature_layer <= layers:
            raise AdapterError(
                f"feature_layer {self.feature_layer} does not exist in a vision model of {layers} layers; use an "
                f"index into its {layers + 1} hidden states (e.g. -2)"
            )
        default_mean, default_std = (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD) if self.kind == "clip" else (HALF, HALF)
        self.image_mean = tuple(float(v) for v in (image_mean if image_mean is not None else default_mean))
        self.image_std = tuple(float(v) for v in (image_std if image_std is not None else default_std))
        if isinstance(batch_frames, bool) or not isinstance(batch_frames, int) or batch_frames < 1:
            raise AdapterError(f"batch_frames must be a positive int, got {batch_frames!r}")
        self.batch_frames = batch_frames
        self.long_text = bool(long_text)
        self.text_model = _stretched_text_model(model.text_model) if long_text else model.text_model
        self.embed_dim = self._check_embedding_sizes()
        self._texts: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    # --- construction helpers ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str, **options) -> Scorer:
        """Load a CLIP/SigLIP checkpoint from a local directory (model, tokenizer and pixel normalization)."""
        from transformers import AutoConfig, AutoTokenizer, CLIPModel, SiglipModel

        if not os.path.isdir(path):
            raise AdapterError(
                f"scorer {path!r} is neither a registered scorer name nor a local checkpoint directory; call "
                "register_scorer(name, model) first, or give the path of a saved CLIPModel/SiglipModel"
            )
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        classes = {"clip": CLIPModel, "siglip": SiglipModel}
        if model_type not in classes:
            raise AdapterError(f"scorer checkpoint {path!r} is a {model_type!r} model; use a CLIP or SigLIP checkpoint")
        model = classes[model_type].from_pretrained(path, local_files_only=True).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        mean, std = _saved_normalization(path)
        options.setdefault("image_mean", mean)
        options.setdefault("image_std", std)
        return cls(model, tokenizer, **options)

    def _check_embedding_sizes(self) -> int:
        model = self.model
        if self.kind == "clip":
            image, text = model.visual_projection.out_features, model.text_projection.out_features
            image_what, text_what = "visual_projection", "text_projection"
        else:
            head = getattr(model.vision_model, "head", None)
            image = model.config.vision_config.hidden_size
            text = model.text_model.head.out_features
            image_what = "vision head" if head is not None else "vision hidden size (no head)"
            text_what = "text head"
        if image != text:
            raise AdapterError(
                f"this {self.kind.upper()} scorer's image embeddings ({image_what}: {image}) and text embeddings "
                f"({text_what}: {text}) differ in size, so tokens cannot be compared with the question; use a "
                "matching CLIP/SigLIP checkpoint (both towers trained together)"
            )
        return int(image)

    # --- numbers -------------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.detach().float().exp())

    @property
    def logit_bias(self) -> float:
        return float(self.model.logit_bias.detach().float()) if self.kind == "siglip" else 0.0

    @property
    def text_positions(self) -> int:
        return int(self.text_model.embeddings.position_embedding.weight.shape[0])

    def logits(self, cos: torch.Tensor) -> torch.Tensor:
        return cos * self.logit_scale + self.logit_bias

    # --- text ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def text_embedding(self, question: str) -> torch.Tensor:
        """(E,) float32, L2-normalized; the last few questions are cached."""
        with self._lock:
            if question in self._texts:
                self._texts.move_to_end(question)
                return self._texts[question]
        ids, mask = self._tokenize(question)
        out = self.text_model(input_ids=ids, attention_mask=mask)
        pooled = out.pooler_output
        if self.kind == "clip":
            pooled = self.model.text_projection(pooled)
        embedding = F.normalize(pooled[0].float(), dim=-1)
        with self._lock:
            self._texts[question] = embedding
            while len(self._texts) > 32:
                self._texts.popitem(last=False)
        return embedding

    def _tokenize(self, question: str):
        length = self.text_positions
        if self.kind == "siglip":  # trained on max_length-padded text without a mask; pools the last position
            enc = self.tokenizer(question, padding="max_length", truncation=True, max_length=length)
            return torch.tensor([enc["input_ids"]], device=self.device), None
        enc = self.tokenizer(question, truncation=True, max_length=length)
        ids = list(enc["input_ids"])
        eos = getattr(self.text_model.config, "eos_token_id", None)
        if eos is not None and eos != 2 and eos not in ids:  # CLIP pools at the first EOS: make sure there is one
            ids = ids[: length - 1] + [eos]
        tensor = torch.tensor([ids], device=self.device)
        return tensor, torch.ones_like(tensor)

    # --- vision --------------------------------------------------------------------------------------------------
    def prepare_pixels(self, pixels: torch.Tensor, mean, std) -> torch.Tensor:
        """Frames in another normalization / size -> this scorer's input (see module docstring)."""
        x = pixels.to(device=self.device, dtype=torch.float32)
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if (mean, std) != (self.image_mean, self.image_std):

            def column(v):
                return torch.tensor(v, device=x.device)[:, None, None]

            x = (x * column(std) + column(mean) - column(self.image_mean)) / column(self.image_std)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x.to(self.dtype)

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor, mean, std, frames: bool = False):
        """Own vision pass over (N, 3, h, w) frames in batches: (patch (N, gh, gw, E), frame (N, E) | None)."""
        patches, whole = [], []
        for part in pixels.split(self.batch_frames):
            x = self.prepare_pixels(part, mean, std)
            hidden = self.model.vision_model(pixel_values=x, output_hidden_states=True).hidden_states
            p, f = self.embed_hidden(hidden, frames=frames)
            patches.append(p)
            whole.append(f)
        return torch.cat(patches), (torch.cat(whole) if frames else None)

    @torch.no_grad()
    def embed_hidden(self, hidden_states, frames: bool = False, rows=None):
        """Embeddings from vision hidden states (this scorer's pass, or the LMM's own pass of the same tower)."""
        states = hidden_states[self.feature_layer]
        last = hidden_states[-1] if frames else None
        if rows is not None:
            states = states.index_select(0, rows.to(states.device))
            last = last.index_select(0, rows.to(last.device)) if last is not None else None
        vision = self.model.vision_model
        param = next(vision.post_layernorm.parameters())
        states = states.to(device=param.device, dtype=param.dtype)
        if self.kind == "clip":
            tokens = self.model.visual_projection(vision.post_layernorm(states[:, 1:]))
        else:
            tokens = self._siglip_patches(vision.post_layernorm(states))
        side = int(round(tokens.shape[1] ** 0.5))
        if side * side != tokens.shape[1]:
            raise AdapterError(f"the scorer's patch grid is not square ({tokens.shape[1]} patches)")
        patch = F.normalize(tokens.float(), dim=-1).reshape(tokens.shape[0], side, side, -1)
        frame = None
        if last is not None:
            frame = F.normalize(self._frame_embeddings(last.to(device=param.device, dtype=param.dtype)).float(), dim=-1)
        return patch, frame

    def _siglip_patches(self, states: torch.Tensor) -> torch.Tensor:
        head = getattr(self.model.vision_model, "head", None)
        if head is None:
            return states
        attention = head.attention
        dim = attention.embed_dim
        value = F.linear(states, attention.in_proj_weight[2 * dim :], attention.in_proj_bias[2 * dim :])
        hidden = attention.out_proj(value)
        return hidden + head.mlp(head.layernorm(hidden))

    def _frame_embeddings(self, last: torch.Tensor) -> torch.Tensor:
        vision = self.model.vision_model
        if self.kind == "clip":
            return self.model.visual_projection(vision.post_layernorm(last[:, 0]))
        normed = vision.post_layernorm(last)
        head = getattr(vision, "head", None)
        return head(normed) if head is not None else normed.mean(1)

    def __repr__(self) -> str:
        return (
            f"Scorer({self.kind}, image_size={self.image_size}, patch={self.patch_size}, embed_dim={self.embed_dim}, "
            f"feature_layer={self.feature_layer}, text_positions={self.text_positions})"
        )


def _local_tokenizer(model):
    path = getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if path and os.path.isdir(path):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    raise AdapterError(
        "the scorer needs its own tokenizer to read the question; pass Scorer(clip_model, clip_tokenizer) (or "
        "register_scorer(name, clip_model, tokenizer=...)), or give the scorer as a local checkpoint path"
    )


def _saved_normalization(path: str):
    import json

    for name in ("preprocessor_config.json", "processor_config.json"):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as handle:
                data = json.load(handle)
            data = data.get("image_processor", data)
            if "image_mean" in data and "image_std" in data:
                return tuple(data["image_mean"]), tuple(data["image_std"])
    return None, None


# ---------------------------------------------------------------------------------------------------------------------
# Registry: configs are JSON, so they name a scorer; the object lives here (never serialized).

_REGISTRY: dict[str, Scorer] = {}
_LOADED: dict[str, Scorer] = {}  # scorers loaded from paths, by absolute path
_REGISTRY_LOCK = threading.Lock()


def register_scorer(name: str, scorer, tokenizer=None, **options) -> Scorer:
    """Make `name` usable as a config's "scorer"; `scorer` is a Scorer, a CLIP/SigLIP model, or a local path."""
    if not isinstance(name, str) or not name:
        raise AdapterError(f"a scorer name must be a non-empty string, got {name!r}")
    resolved = resolve_scorer(scorer, tokenizer, **options) if not isinstance(scorer, Scorer) else scorer
    with _REGISTRY_LOCK:
        _REGISTRY[name] = resolved
    return resolved


def unregister_scorer(name: str) -> None:
    with _REGISTRY_LOCK:
        _REGISTRY.pop(name, None)


def registered_scorers() -> dict[str, Scorer]:
    with _REGISTRY_LOCK:
        return dict(_REGISTRY)


def resolve_scorer(spec, tokenizer=None, **options) -> Scorer:
    """A Scorer from what a user may give: a Scorer, a (model, tokenizer) pair, a model, a registered name, a path."""
    if isinstance(spec, Scorer):
        return spec
    if isinstance(spec, tuple) and len(spec) == 2:
        return Scorer(spec[0], spec[1], **options)
    if isinstance(spec, str):
        with _REGISTRY_LOCK:
            if spec in _REGISTRY:
                return _REGISTRY[spec]
        key = os.path.abspath(spec)
        with _REGISTRY_LOCK:
            cached = _LOADED.get(key) if not options else None
        if cached is not None:
            return cached
        scorer = Scorer.from_pretrained(spec, **options)
        if not options:
            with _REGISTRY_LOCK:
                _LOADED[key] = scorer
        return scorer
    if isinstance(spec, nn.Module):
        return Scorer(spec, tokenizer, **options)
    raise AdapterError(
        f"cannot use {type(spec).__name__} as a scorer; give a Scorer, a CLIPModel/SiglipModel (with its tokenizer), "
        "a name registered with register_scorer, or a local checkpoint path"
    )
