"""Scoring multiple-choice answers: teacher-forced option likelihood, and generation with answer matching.

Likelihood: for each option the prompt's inputs get the option's tokens appended (``input_ids``,
``attention_mask`` and Qwen's ``mm_token_type_ids`` grow together; the pixels are unchanged), one ``forward`` with
``logits_to_keep = len(option) + 1`` returns the logits of the last positions, and the option's score is the sum
(or mean) of ``log_softmax`` at its tokens. An adapted model returns logits in the caller's layout (the text
positions after the video keep their index even when pooling shortened the sequence), so the same slicing serves
stock and adapted models. By default the prompt (video included) is prefilled once and every option runs on its
KV cache, which is trimmed back after each option; ``share_prompt=False`` runs one full forward per option instead
(the plain definition; both agree to float rounding).

Generation: greedy ``generate``, the answer part decoded, then :func:`match_option` maps the text to an option
(a leading letter ``"B"``, ``"(B)"``, ``"B."``, ``"Answer: B"``, or the option's text).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from longctx_adapter.eval.items import LETTERS

from longctx_adapter.errors import AdapterError
from longctx_adapter.registry import MODEL_TYPE_TO_PATCH, family_for

__all__ = ["continuation_ids", "generate_answer", "match_option", "option_logprobs", "score_options"]

_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def continuation_ids(tokenizer, text: str) -> list[int]:
    """Token ids of a continuation (no special tokens); a leading space is kept (``" B"``)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise AdapterError(f"continuation {text!r} tokenizes to nothing")
    return list(ids)


def _extend(inputs: dict, ids: Sequence[int], device) -> dict:
    out = dict(inputs)
    extra = torch.tensor([list(ids)], dtype=inputs["input_ids"].dtype, device=device)
    if inputs["input_ids"].shape[0] != 1:
        raise AdapterError("option scoring takes one prompt (batch 1) at a time")
    out["input_ids"] = torch.cat([inputs["input_ids"], extra], dim=1)
    for key in ("attention_mask",):
        if inputs.get(key) is not None:
            out[key] = torch.cat([inputs[key], torch.ones_like(extra, dtype=inputs[key].dtype)], dim=1)
    for key in ("mm_token_type_ids", "token_type_ids"):
        if inputs.get(key) is not None:
            out[key] = torch.cat([inputs[key], torch.zeros_like(extra, dtype=inputs[key].dtype)], dim=1)
    return out


@torch.inference_mode()
def option_logprobs(model, inputs: dict, continuations: Sequence[Sequence[int]], share_prompt: bool = True) -> list[dict]:
    """Per continuation: ``sum``/``mean`` log-prob of its tokens given the prompt, token count, and ``greedy``
    (every token is the argmax).

    share_prompt: encode the video and prefill the prompt once, then run each option's tokens on that KV cache,
    trimming it back after each (K options: one video prefill instead of K). False gives one full forward per
    option; both agree to float rounding (tested).
    """
    if inputs["input_ids"].shape[0] != 1:
        raise AdapterError("option scoring takes one prompt (batch 1) at a time")
    mask = inputs.get("attention_mask")
    if share_prompt and (mask is None or bool(mask.all())):  # a padded prompt takes the plain path
        return _shared_prompt_logprobs(model, inputs, continuations)
    device = inputs["input_ids"].device
    results = []
    for ids in continuations:
        n = len(ids)
        call = _extend(inputs, ids, device)
        out = model(**call, logits_to_keep=n + 1, use_cache=False)
        results.append(_token_scores(out.logits[0, -(n + 1) : -1], ids))
    return results


def _token_scores(logits: torch.Tensor, ids: Sequence[int]) -> dict:
    """Scores of `ids` from the logits of the positions that predict them, (len(ids), vocab)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    target = torch.tensor(list(ids), device=logp.device)
    token_lp = logp.gather(-1, target[:, None])[:, 0]
    return {
        "sum": float(token_lp.sum()),
        "mean": float(token_lp.mean()),
        "tokens": len(ids),
        "greedy": bool((logp.argmax(-1) == target).all()),
    }


def _appended_positions(model, inputs: dict, count: int, device):
    """The position ids of `count` text tokens appended to the prompt, as one forward on the whole text gives them
    (they depend on the tokens' type, not their ids, so one call serves every option), from the family's
    `rope_positions` (Qwen-VL's M-RoPE: stock 5.x decodes from the prompt's largest id + 1, which is not where its
    own rule puts text after a long video). None where positions follow the cache length (1-D RoPE)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    family = family_for(model_type) if model_type in MODEL_TYPE_TO_PATCH else None
    if family is None or family.rope_positions is None or count == 0:
        return None
    extended = _extend(inputs, [int(inputs["input_ids"][0, -1])] * count, device)
    positions = family.rope_positions(model, extended)
    return None if positions is None else positions[..., -count:]


def _shared_prompt_logprobs(model, inputs: dict, continuations: Sequence[Sequence[int]]) -> list[dict]:
    out = model(**inputs, logits_to_keep=1, use_cache=True)
    cache = out.cache
    last = out.logits[0, -1:]  # predicts every option's first token
    prompt = cache.get_seq_length()
    device = inputs["input_ids"].device
    longest = max((len(ids) for ids in continuations), default=1) - 1
    positions = _appended_positions(model, inputs, longest, device)  # the longest option's; shorter ones take a prefix
    results = []
    for ids in continuations:
        ids = list(ids)
        logits = last
        if len(ids) > 1:  # the option's own tokens predict its later tokens, on the prompt's cache
            step = torch.tensor([ids[:-1]], dtype=inputs["input_ids"].dtype, device=device)
            # no attention_mask: the prompt has no padding, and Qwen-VL's cached path would take positions from
            # the whole mask instead of the new tokens' part
            position_ids = None if positions is None else positions[..., : step.shape[1]]
            more = model(input_ids=step, position_ids=position_ids, cache=cache, use_cache=True)
            logits = torch.cat([last, more.logits[0].to(last.device)], dim=0)
            cache.crop(-(cache.get_seq_length() - prompt))
        results.append(_token_scores(logits, ids))
    return results


def score_options(
    model, tokenizer, inputs: dict, options: Sequence[str], target: str = "letter", reduce: str = "sum"
) -> dict:
    """Score every option; returns ``{"pred": index, "scores": [...], "target": ..., "reduce": ...}``.

    target: ``"letter"`` scores ``" A"``, ``" B"``... (for prompts that ask for the letter), ``"text"`` the option
    text, ``"both"`` ``" A. text"``. reduce: ``"sum"`` or ``"mean"`` (length-normalised) log-probability.
    """
    if target not in ("letter", "text", "both"):
        raise AdapterError(f"target must be 'letter', 'text' or 'both', got {target!r}")
    if reduce not in ("sum", "mean"):
        raise AdapterError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    texts = []
    for i, option in enumerate(options):
        letter = LETTERS[i]
        texts.append({"letter": f" {letter}", "text": f" {option}", "both": f" {letter}. {option}"}[target])
    conts = [continuation_ids(tokenizer, t) for t in texts]
    scored = option_logprobs(model, inputs, conts)
    values = [s[reduce] for s in scored]
    pred = int(max(range(len(values)), key=values.__getitem__))
    return {"pred": pred, "scores": values, "target": target, "reduce": reduce}


def match_option(text: str, options: Sequence[str]) -> int | None:
    """The option a generated answer names, or None. In order: a bare leading letter (``"B"``, ``"B."``,
    ``"(B)"``, ``"B) ..."``), an "answer is X" / "Answer: X" phrase, exactly one option's text contained in the
    answer (case-insensitive), a leading letter followed by a space (``"B red"``; tried last because ``"A"`` is
    also a word)."""
    if text is None:
        return None
    stripped = text.strip()

    def letter(match):
        if match is None:
            return None
        index = LETTERS.index(match.group(1).upper())
        return index if index < len(options) else None

    found = letter(re.match(r"\(?([A-Z])\)?(?:[.:)\-]|$)", stripped))
    if found is None:
        found = letter(re.search(r"\b(?i:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\b", stripped))
    if found is not None:
        return found
    lowered = stripped.lower()
    hits = [i for i, opt in enumerate(options) if str(opt).strip() and str(opt).strip().lower() in lowered]
    if len(hits) == 1:
        return hits[0]
    return letter(re.match(r"\(?([A-Z])\)?\s", stripped))


@torch.inference_mode()
def generate_answer(model, tokenizer, inputs: dict, max_new_tokens: int = 16, streamer=None) -> str:
    """Greedy answer text (the prompt part cut off with the usual ``out[:, prompt_len:]`` idiom)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                         streamer=streamer)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
