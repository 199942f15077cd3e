"""Text-only items of the synthetic video QA family: the same questions, asked about a run of words.

The video tasks (:mod:`longctx_adapter.eval.synthetic_qa`) hide one to three coloured *marker* frames among gray
distractor frames. Here the "video" is a run of ``length`` filler words (any plain word of the tiny vocabulary except
the six marker colours, the count words and the chat role words), and the markers are colour words at uniformly
random depths. The questions and answers are the video tasks' own, word for word:

- ``color``  one colour word; answer it
- ``order``  two different colour words; answer the earlier one
- ``count``  one to three colour words, all different; answer ``one`` / ``two`` / ``three``

The prompt is ``user <words> QUESTION assistant``: the words take the place of the video's placeholder run, so a text
item with ``N`` words is exactly as long as a video item with ``N`` visual tokens (``T * 16 + 1`` at ``T`` frames).
A model trained on these up to ``N`` words has seen every position up to ``N + 8`` with text: its *language* window.
Everything is deterministic from ``(seed, task, length, index)``.

One difference from the videos: the colours of a ``count`` item are all different. Two marker frames of one colour
still differ (size, place, noise); two copies of a colour word are the same token, and the tiny model counted those
at 43-47 % after 5,000 steps (distinct colours: 89 %), a limit of counting identical tokens that has nothing to do
with positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from longctx_adapter.eval.synthetic_qa import COLORS, COUNT_WORDS, QUESTIONS, TASKS

__all__ = ["TextItem", "filler_words", "make_text_item", "text_prompt_words", "text_batch_inputs", "PROMPT_EXTRA"]

#: tokens of a text prompt besides its words: ``user``, the 6 question words, ``assistant``
PROMPT_EXTRA = 8
_TASK_ID = {t: i for i, t in enumerate(TASKS)}
_TEXT_STREAM_TAG = 17  # mixed into the RNG key so a text stream never shares draws with the video stream of a seed
_ROLE_WORDS = ("user", "assistant", "system")


@lru_cache(maxsize=1)
def filler_words() -> tuple[str, ...]:
    """Plain words of the tiny tokenizer that can never be read as a marker or an answer, in vocabulary order."""
    from longctx_adapter.testing.tiny import tiny_tokenizer

    vocab = tiny_tokenizer().get_vocab()
    banned = set(COLORS) | set(COUNT_WORDS) | set(_ROLE_WORDS)
    special = {t for t in vocab if t.startswith("<")}
    return tuple(w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in banned | special)


@dataclass(frozen=True)
class TextItem:
    task: str
    words: tuple[str, ...]  # the filler run with the colour words in it
    question: str
    answer: str
    markers: tuple[int, ...]  # word indices of the colour words, in order
    marker_colors: tuple[str, ...]

    @property
    def length(self) -> int:
        return len(self.words)


def make_text_item(task: str, length: int, seed: int, index: int) -> TextItem:
    """Item ``index`` of ``task`` with ``length`` words from text stream ``seed`` (pure function of its arguments)."""
    if task not in _TASK_ID:
        raise ValueError(f"unknown task {task!r}; tasks are {TASKS}")
    if length < 3:
        raise ValueError("text items need at least 3 words")
    rng = np.random.default_rng([int(seed), _TEXT_STREAM_TAG, _TASK_ID[task], int(length), int(index)])
    names = list(COLORS)
    n_markers = {"color": 1, "order": 2}.get(task) or int(rng.integers(1, 4))
    markers = tuple(sorted(rng.choice(length, size=n_markers, replace=False).tolist()))
    colors = tuple(rng.choice(names, size=n_markers, replace=False).tolist())
    fillers = filler_words()
    words = [fillers[i] for i in rng.integers(0, len(fillers), size=length)]
    for pos, color in zip(markers, colors):
        words[pos] = color
    answer = COUNT_WORDS[n_markers - 1] if task == "count" else colors[0]
    return TextItem(task, tuple(words), QUESTIONS[task], answer, markers, colors)


def text_prompt_words(item: TextItem) -> list[str]:
    """The prompt as words: ``user``, the item's words, the question, ``assistant``."""
    return ["user", *item.words, *item.question.split(), "assistant"]


def text_batch_inputs(items, tokenizer) -> dict:
    """``input_ids`` / ``attention_mask`` for text items of one length (ids straight from the vocabulary: the
    tokenizer's WordLevel + whitespace split gives the same ids for the joined prompt, which the tests check)."""
    lengths = {it.length for it in items}
    if len(lengths) != 1:
        raise ValueError(f"one batch needs one text length, got {sorted(lengths)}")
    ids = [tokenizer.convert_tokens_to_ids(text_prompt_words(it)) for it in items]
    input_ids = torch.tensor(ids, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
