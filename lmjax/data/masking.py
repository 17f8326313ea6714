"""BERT's inputs: sentence pairs for next-sentence prediction and masked-LM corruption (NumPy, per example).

An example holds
  inputs  int32[L]  [CLS] A [SEP] B [SEP] with some tokens replaced    segments int32[L] 0 for A, 1 for B
  input_mask int32[L] 1 on real tokens    targets int32[L] the original tokens
  weights float32[L] 1 where a prediction is scored
  nsp_labels int32 0: B follows A, 1: B is random (with NSP)
"""

from __future__ import annotations

import dataclasses
import functools
import re

import grain
import numpy as np

from lmjax.data import tokenizers
from lmjax.data.tokenizers import Tokenizer

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclasses.dataclass(frozen=True)
class MaskingSpec:
    rate: float = 0.15  # fraction of the maskable tokens that are predicted
    mask_frac: float = 0.8  # ... of which replaced by [MASK]
    random_frac: float = 0.1  # ... by a random token (the rest are left unchanged)
    whole_word: bool = False  # select whole words (a word-start piece and the pieces after it)


def mask_tokens(
    tokens_L: np.ndarray,
    maskable_L: np.ndarray,
    rng: np.random.Generator,
    spec: MaskingSpec,
    *,
    mask_id: int,
    replacement_ids: np.ndarray,
    word_start_L: np.ndarray | None = None,
):
    """Returns (inputs_L, weights_L): round(rate * maskable) tokens selected, then 80/10/10 replaced."""
    candidates = np.flatnonzero(maskable_L)
    weights_L = np.zeros(tokens_L.shape, np.float32)
    inputs_L = tokens_L.copy()
    target = int(round(spec.rate * candidates.size))
    if target == 0:
        return inputs_L, weights_L
    if spec.whole_word and word_start_L is not None:
        word_L = np.cumsum(word_start_L[candidates] | np.r_[True, np.diff(candidates) > 1])
        selected = []
        for w in rng.permutation(np.unique(word_L)):
            if len(selected) >= target:
                break
            selected.extend(candidates[word_L == w])
        chosen = np.asarray(selected, np.int64)
    else:
        chosen = rng.choice(candidates, size=target, replace=False)
    weights_L[chosen] = 1.0
    u = rng.random(chosen.size)
    inputs_L[chosen[u < spec.mask_frac]] = mask_id
    random_pos = chosen[(u >= spec.mask_frac) & (u < spec.mask_frac + spec.random_frac)]
    inputs_L[random_pos] = rng.choice(replacement_ids, size=random_pos.size)
    return inputs_L, weights_L


class BertExamples(grain.transforms.RandomMap):
    """A document -> one pair example (A from a random point of it; B its continuation or, half of the time,
    text from a random other document) -> masked. Without NSP: one segment of up to L - 2 tokens."""

    def __init__(
        self, source, text_key: str, tokenizer: Tokenizer, seq_len: int, spec: MaskingSpec, nsp: bool
    ):
        self.source, self.text_key, self.tok, self.seq_len, self.spec, self.nsp = (
            source,
            text_key,
            tokenizer,
            seq_len,
            spec,
            nsp,
        )
        self.cls, self.sep, self.mask = (
            tokenizer.special_id(p) for p in (tokenizers.CLS, tokenizers.SEP, tokenizers.MASK)
        )
        special = tokenizer.special_ids()
        self.replacement_ids = np.setdiff1d(np.arange(tokenizer.vocab_size), special)
        self.word_starts = tokenizer.word_starts() if spec.whole_word else None

    def _sentences(self, example) -> list[np.ndarray]:
        text = example[self.text_key]
        return self._tokenized(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)

    @functools.lru_cache(maxsize=1024)  # noqa: B019  documents recur every epoch and as random next segments
    def _tokenized(self, text: str) -> list[np.ndarray]:
        pieces = (self.tok.encode(s) for s in _SENTENCE_END.split(text) if s.strip())
        return [p for p in pieces if p.size] or [np.asarray([self.tok.eos_id], np.int32)]

    @staticmethod
    def _run(sentences: list[np.ndarray], start: int, budget: int) -> list[np.ndarray]:
        run, size = [], 0
        for s in sentences[start:]:
            if run and size >= budget:
                break
            run.append(s)
            size += s.size
        return run

    def random_map(self, example, rng: np.random.Generator) -> dict:
        sentences = self._sentences(example)
        budget = self.seq_len - (3 if self.nsp else 2)
        run = self._run(sentences, int(rng.integers(len(sentences))), budget)
        if not self.nsp:
            a, b, label = np.concatenate(run)[:budget], np.zeros(0, np.int32), 0
        else:
            if len(run) == 1:  # one long sentence: split it in two at a random token
                cut = int(rng.integers(1, max(run[0].size, 2)))
                run = [run[0][:cut], run[0][cut:]]
            split = int(rng.integers(1, len(run)))
            a, label = np.concatenate(run[:split]), int(rng.random() < 0.5)
            if label:
                other = self._sentences(self.source[int(rng.integers(len(self.source)))])
                b = np.concatenate(
                    self._run(other, int(rng.integers(len(other))), budget - min(a.size, budget // 2))
                )
            else:
                b = np.concatenate(run[split:])
            while a.size + b.size > budget:  # trim the longer segment, at its front or back (as BERT)
                longer = a if a.size >= b.size else b
                longer = longer[1:] if rng.random() < 0.5 else longer[:-1]
                a, b = (longer, b) if a.size >= b.size else (a, longer)
        tokens = np.concatenate([[self.cls], a, [self.sep]] + ([b, [self.sep]] if self.nsp else [])).astype(
            np.int32
        )
        segments = np.concatenate([np.zeros(a.size + 2), np.ones(tokens.size - a.size - 2)]).astype(np.int32)
        maskable = ~np.isin(tokens, (self.cls, self.sep))
        inputs, weights = mask_tokens(
            tokens,
            maskable,
            rng,
            self.spec,
            mask_id=self.mask,
            replacement_ids=self.replacement_ids,
            word_start_L=None if self.word_starts is None else self.word_starts[tokens],
        )
        pad = self.seq_len - tokens.size

        def padded(x, dtype):
            return np.pad(x, (0, pad)).astype(dtype)

        example = {
            "inputs": padded(inputs, np.int32),
            "segments": padded(segments, np.int32),
            "input_mask": padded(np.ones(tokens.size), np.int32),
            "targets": padded(tokens, np.int32),
            "weights": padded(weights, np.float32),
        }
        return example | {"nsp_labels": np.int32(label)} if self.nsp else example
