"""Question-aware compression glue: which question, which frames, which scorer, per adapted call.

The question of a call (per batch row) is, in this order:
1. `question=` given to the adapted `forward`/`generate` (a string for every row, or one string per row); the
   wrapper pops it before calling the stock model;
2. the text tokens of the call decoded with the tokenizer given as `apply_adapter(model, ..., tokenizer=tok)`
   (a processor works too): the tokens after the row's last visual placeholder, up to the first special token
   that follows some text (a chat template's end of turn such as `<|im_end|>`, so the assistant header is not
   read; templates without special tokens, e.g. "USER: ... ASSISTANT:", keep their words), or, when nothing
   follows the video, all text tokens of the row; special tokens are skipped;
3. none: the question-guided stages take their uniform form (prompt_guided = conv3d average pooling, select_frames
   = evenly spaced frames, keyframe anchor = first frame) and the adapter warns once per handle.

Frames: the scorer sees the pixels the LMM got (LLaVA: the images of the run; LLaVA-NeXT: each image's base tile;
LLaVA-NeXT-Video / OneVision: the video's frames; Qwen-VL: the frames rebuilt from the processor's patches, both
frames of each temporal patch). Its per-frame patch map is averaged (`adaptive_avg_pool3d`) onto the (T, H, W) grid
the LMM pools (identity where the sizes agree; e.g. CLIP's 24x24 onto LLaVA-NeXT-Video's 12x12 averages 2x2
blocks, and Qwen's two frames per temporal patch are averaged).

Reuse: where the scorer's vision model has the weights of the LMM's vision tower (the same module, or equal
embeddings/encoder tensors, compared once at apply time), the same input size and the same pixel normalization,
the tower's hidden states from the LMM's own encoder pass are captured (a forward hook held only during that pass)
and scored, so no second vision pass runs. Not with `vision_chunk_frames` (chunks are encoded separately; the
scorer then runs its own pass).

Pixel normalization of the LMM's inputs: taken from the processor when one is given as `tokenizer=`, otherwise the
public checkpoints' values the family declares (`input_norm`: OpenAI CLIP for LLaVA, LLaVA-NeXT(-Video),
Qwen2/2.5-VL; 0.5 for LLaVA-OneVision and Qwen3-VL). Which frames and which tower: the family's `scorer_frames`
and `scorer_tower`.
"""

from __future__ import annotations

import contextlib
import threading
import warnings

import torch
import torch.nn.functional as F

from longctx_adapter.errors import AdapterError
from longctx_adapter.hooks.scorer import Scorer, resolve_scorer
from longctx_adapter.ops.guided import Guide
from longctx_adapter.ops.stages import parse_stages

__all__ = ["Guidance", "build_guidance", "question_texts"]


def build_guidance(model, family, config, scorer=None, tokenizer=None):
    """The handle's Guidance, or None when no pooling stage depends on the question (then scorer= is unused)."""
    if not any(stage.guided for stage in parse_stages(config.pooling)):
        return None
    return Guidance(model, family, config, scorer, tokenizer)


def _split_processor(tokenizer):
    """(tokenizer, (mean, std) or None) from a tokenizer or a processor."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is None:
        return tokenizer, None
    for name in ("video_processor", "image_processor"):
        proc = getattr(tokenizer, name, None)
        if proc is not None and getattr(proc, "image_mean", None) is not None:
            return inner, (tuple(proc.image_mean), tuple(proc.image_std))
    return inner, None


class Guidance:
    """Per handle: the scorer, the question source and the reuse decision (see module docstring)."""

    def __init__(self, model, family, config, scorer, tokenizer):
        self.family = family
        stages = [s for s in parse_stages(config.pooling) if s.guided]
        named = next((s.scorer for s in stages if getattr(s, "scorer", None) is not None), None)
        spec = scorer if scorer is not None else named
        if spec is None:
            kinds = sorted({s.describe() for s in stages})
            raise AdapterError(
                f"the pooling stages {kinds} need a question scorer and none is available; pass "
                "apply_adapter(model, config, scorer=Scorer(clip_model, clip_tokenizer)) (or a local CLIP/SigLIP "
                "checkpoint path), or name one in the stage as 'scorer': '<registered name or path>'"
            )
        if family.scorer_frames is None:
            raise AdapterError(
                f"question-guided pooling does not know how {model.config.model_type!r} lays out its frames; use "
                "stages without a question scorer for this model"
            )
        self.scorer: Scorer = resolve_scorer(spec)
        self.tokenizer, norm = _split_processor(tokenizer)
        self.input_norm = norm or family.input_norm
        if self.input_norm is None:
            raise AdapterError(
                f"question-guided pooling needs the pixel normalization of {model.config.model_type!r} inputs; pass "
                "the model's processor as tokenizer= to apply_adapter"
            )
        self.frame_level = any(getattr(s, "score", None) == "global" for s in stages)
        self.placeholders = {
            int(v)
            for v in (getattr(model.config, "image_token_id", None), getattr(model.config, "video_token_id", None))
            if v is not None
        }
        self.placeholders.add(int(family.token_id(model.config)))
        self.reuse = config.vision_chunk_frames is None and _same_tower(self.tower(model), self.scorer, self.input_norm)
        self._warned = False
        self._lock = threading.Lock()

    # --- reuse of the LMM's own vision pass ----------------------------------------------------------------------
    def tower(self, model):
        """The LMM's vision tower whose hidden states may stand in for the scorer's own pass, or None."""
        name = self.family.scorer_tower
        return None if name is None else getattr(getattr(model, "model", None), name, None)

    @contextlib.contextmanager
    def capture(self, model):
        """Hold the LMM vision tower's outputs of the encode inside this block (only when reusing)."""
        captured: list = []
        if not self.reuse:
            yield captured
            return

        def hook(module, args, output):
            captured.append(output)

        handle = self.tower(model).register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    # --- per call ------------------------------------------------------------------------------------------------
    def _warn(self, why: str) -> None:
        with self._lock:
            if self._warned:
                return
            self._warned = True
        warnings.warn(
            f"question-guided pooling got no question ({why}); using uniform weights (prompt_guided = average "
            "pooling, select_frames = evenly spaced frames, keyframes = first frames). Pass question='...' to the "
            "call or tokenizer= to apply_adapter. Warned once per adapter handle.",
            UserWarning,
            stacklevel=5,
        )

    @torch.no_grad()
    def guides(self, model, call, question, segments, segment_runs, encoder_kwargs, captured):
        """(one Guide or None per segment, the question text per batch row)."""
        input_ids = call["input_ids"]
        texts = question_texts(input_ids, call.get("attention_mask"), question, self.tokenizer, self.placeholders)
        rows = [runs[0].row for runs in segment_runs]
        pooled_rows = [row for seg, row in zip(segments, rows) if seg.grid is not None]
        if any(texts[row] is None for row in pooled_rows):
            self._warn("no question= and no tokenizer= given" if self.tokenizer is None else "the prompt has no text")
        if all(texts[row] is None for row in pooled_rows):
            return [None] * len(segments), texts
        frames = self.family.scorer_frames(model, encoder_kwargs, segments)
        hidden = _captured_hidden(captured, self.scorer, self.frame_level) if self.reuse else None
        out = []
        for seg, row, (pixels, tower_rows) in zip(segments, rows, frames):
            if seg.grid is None or texts[row] is None:
                out.append(None)
                continue
            text = self.scorer.text_embedding(texts[row])
            if hidden is not None and tower_rows is not None:
                patch, whole = self.scorer.embed_hidden(hidden, frames=self.frame_level, rows=tower_rows)
            else:
                patch, whole = self.scorer.embed_pixels(pixels, *self.input_norm, frames=self.frame_level)
            out.append(_guide(self.scorer, text, patch, whole, seg.grid.shape[:3], seg.grid.device))
        return out, texts


def _guide(scorer: Scorer, text, patch, whole, grid_shape, device) -> Guide:
    """Patch cosine maps (n, gh, gw) of the scorer -> logits on the LMM's (T, H, W) grid."""
    cos = torch.einsum("nhwe,e->nhw", patch, text.to(patch.device))
    if tuple(cos.shape) != tuple(grid_shape):
        cos = F.adaptive_avg_pool3d(cos[None, None], tuple(int(n) for n in grid_shape))[0, 0]
    frame = None
    if whole is not None:
        frame = whole @ text.to(whole.device)
        if frame.shape[0] != grid_shape[0]:
            frame = F.adaptive_avg_pool1d(frame[None, None], int(grid_shape[0]))[0, 0]
        frame = scorer.logits(frame).to(device)
    return Guide(scorer.logits(cos).to(device), frame)


def _captured_hidden(captured, scorer: Scorer, frame_level: bool):
    """The LMM tower's hidden states when they hold what the scorer needs (transformers records only the layers
    the LMM selects: the scorer's feature_layer must be the LMM's vision_feature_layer, and score "global" needs
    the last layer), else None (the scorer runs its own pass)."""
    if len(captured) != 1:
        return None
    hidden = getattr(captured[0], "hidden_states", None)
    if hidden is None or hidden[scorer.feature_layer] is None or (frame_level and hidden[-1] is None):
        return None
    return hidden


def _same_tower(tower, scorer: Scorer, input_norm) -> bool:
    """True when the LMM's vision tower computes the scorer's vision hidden states from the LMM's own pixels."""
    vision = scorer.model.vision_model
    if tower is None:
        return False
    if (tuple(input_norm[0]), tuple(input_norm[1])) != (scorer.image_mean, scorer.image_std):
        return False
    if tower is vision:
        return True
    if type(tower) is not type(vision):
        return False
    for key in ("image_size", "patch_size", "hidden_size", "num_hidden_layers"):
        if getattr(tower.config, key, None) != getattr(vision.config, key, None):
            return False
    prefixes = ("embeddings.", "pre_layrnorm.", "encoder.")
    ours = {k: v for k, v in tower.state_dict().items() if k.startswith(prefixes)}
    theirs = {k: v for k, v in vision.state_dict().items() if k.startswith(prefixes)}
    if ours.keys() != theirs.keys():
        return False
    for key, value in ours.items():
        other = theirs[key]
        if value is other:
            continue
        if value.shape != other.shape or value.dtype != other.dtype or not torch.equal(value, other.to(value.device)):
            return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# The question.


def _until_turn_end(ids: list[int], special: set) -> list[int]:
    """The tokens up to the first special token that follows some text: a chat template's end of the user turn
    (e.g. `<|im_end|>`), so the assistant header after it is not read as part of the question."""
    seen_text = False
    for i, token in enumerate(ids):
        if token not in special:
            seen_text = True
        elif seen_text:
            return ids[:i]
    return ids


def question_texts(input_ids, attention_mask, question, tokenizer, placeholders) -> list[str | None]:
    """The question of each batch row (see module docstring)."""
    batch = input_ids.shape[0]
    if question is not None:
        if isinstance(question, str):
            return [question] * batch
        if (
            isinstance(question, (list, tuple))
            and len(question) == batch
            and all(q is None or isinstance(q, str) for q in question)
        ):
            return [q if q else None for q in question]
        raise AdapterError(
            f"question= must be a string or a list of {batch} strings (one per batch row), got {question!r}"
        )
    if tokenizer is None:
        return [None] * batch
    inner = getattr(tokenizer, "tokenizer", tokenizer)  # a processor carries its tokenizer
    special = set(getattr(inner, "all_special_ids", None) or ())
    texts = []
    for b in range(batch):
        ids = input_ids[b]
        if attention_mask is not None:
            ids = ids[attention_mask[b].to(ids.device).bool()]
        ids = ids.tolist()
        visual = [i for i, token in enumerate(ids) if token in placeholders]
        after = _until_turn_end(ids[visual[-1] + 1 :], special) if visual else ids
        text = tokenizer.decode(after, skip_special_tokens=True).strip() if after else ""
        if not text:
            rest = [token for token in ids if token not in placeholders]
            text = tokenizer.decode(rest, skip_special_tokens=True).strip() if rest else ""
        texts.append(text or None)
    return texts
