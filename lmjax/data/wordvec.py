"""Training data for word vectors, generated in vectorised NumPy: word2vec examples (frequent-word
subsampling, dynamic window, negatives from the unigram^0.75 noise distribution) and GloVe's co-occurrence
entries.

  skipgram  inputs int32[B] (a context word), targets int32[B] (the centre word it predicts), negatives
            int32[B, K]
  cbow      inputs int32[B, 2W] (the window), input_mask float32[B, 2W], targets int32[B],
            negatives int32[B, K]
  glove     rows int32[B], cols int32[B], counts float32[B] (distance-weighted co-occurrence X_ij)
  all       weights float32[B]: 1 for an example, 0 for the padding of an epoch's last batch

Both datasets are infinite grain IterDatasets, deterministic from the seed, with checkpointable state.
"""

from __future__ import annotations

from typing import Sequence

import grain
import numpy as np

from lmjax.errors import InputError


def keep_probabilities(counts_V: np.ndarray, sample: float) -> np.ndarray:
    """word2vec's subsampling: a word of frequency f is kept with probability (sqrt(f / s) + 1) * s / f."""
    if sample <= 0:
        return np.ones(len(counts_V))
    threshold = sample * counts_V.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = (np.sqrt(counts_V / threshold) + 1) * threshold / counts_V
    return np.where(counts_V > 0, np.minimum(keep, 1.0), 0.0)


class NoiseTable:
    """Draws words from the unigram^power distribution in O(1) each (Walker's alias method: a uniform slot,
    then the slot's word or its alias), exactly, without word2vec.c's 1e8-entry table or a binary search."""

    def __init__(self, counts_V: np.ndarray, power: float = 0.75):
        p_V = counts_V.astype(np.float64) ** power
        scaled_V = p_V * len(p_V) / p_V.sum()  # mean 1: a slot keeps its own word with probability min(1, .)
        self.keep_V, self.alias_V = np.ones(len(p_V)), np.arange(len(p_V), dtype=np.int32)
        small = [i for i in range(len(p_V)) if scaled_V[i] < 1.0]
        large = [i for i in range(len(p_V)) if scaled_V[i] >= 1.0]
        while small and large:  # Vose: fill each short slot from a long one
            s, g = small.pop(), large.pop()
            self.keep_V[s], self.alias_V[s] = scaled_V[s], g
            scaled_V[g] -= 1.0 - scaled_V[s]
            (small if scaled_V[g] < 1.0 else large).append(g)

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        slot = rng.integers(0, len(self.keep_V), shape, dtype=np.int32)
        return np.where(rng.random(shape) < self.keep_V[slot], slot, self.alias_V[slot])


def skipgram_pairs(
    tokens_T: np.ndarray, doc_T: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(context, centre) pairs: centre i reaches i ± d for d <= b_i, b_i uniform in 1..window, within its
    document."""
    b_T = rng.integers(1, window + 1, size=len(tokens_T))
    inputs, targets = [], []
    for d in range(1, window + 1):
        for centre, context in ((slice(0, -d), slice(d, None)), (slice(d, None), slice(0, -d))):
            ok = (b_T[centre] >= d) & (doc_T[centre] == doc_T[context])
            targets.append(tokens_T[centre][ok])
            inputs.append(tokens_T[context][ok])
    return np.concatenate(inputs), np.concatenate(targets)


def cbow_windows(
    tokens_T: np.ndarray, doc_T: np.ndarray, window: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window words [N, 2W], their mask, centres [N]) for every position with at least one context word."""
    T = len(tokens_T)
    b_T = rng.integers(1, window + 1, size=T)
    offsets_W = np.concatenate([np.arange(-window, 0), np.arange(1, window + 1)])
    idx_TW = np.arange(T)[:, None] + offsets_W
    inside = (idx_TW >= 0) & (idx_TW < T)
    idx_TW = np.clip(idx_TW, 0, T - 1)
    mask_TW = inside & (np.abs(offsets_W) <= b_T[:, None]) & (doc_T[idx_TW] == doc_T[:, None])
    rows = mask_TW.any(axis=1)
    return tokens_T[idx_TW[rows]], mask_TW[rows].astype(np.float32), tokens_T[rows]


def cooccurrence(
    docs: Sequence[np.ndarray], vocab_size: int, window: int, chunk_tokens: int = 1 << 20
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GloVe's symmetric co-occurrence counts, each pair at distance d adding 1/d: (rows, cols, X) of the
    non-zero entries. Documents are counted `chunk_tokens` at a time and merged, so memory is the result plus
    one chunk."""
    keys, values = np.zeros(0, np.int64), np.zeros(0, np.float64)

    def merge(keys, values, new_keys, new_values):
        all_keys, inverse = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
        return all_keys, np.bincount(
            inverse, weights=np.concatenate([values, new_values]), minlength=len(all_keys)
        )

    start = 0
    while start < len(docs):
        stop, n = start, 0
        while stop < len(docs) and (n == 0 or n + len(docs[stop]) <= chunk_tokens):
            n, stop = n + len(docs[stop]), stop + 1
        tokens_T = np.concatenate(docs[start:stop]).astype(np.int64)
        doc_T = np.repeat(np.arange(stop - start), [len(d) for d in docs[start:stop]])
        chunk_keys, chunk_values = [], []
        for d in range(1, window + 1):
            ok = doc_T[:-d] == doc_T[d:]
            a, b = tokens_T[:-d][ok], tokens_T[d:][ok]
            chunk_keys += [a * vocab_size + b, b * vocab_size + a]
            chunk_values += [np.full(2 * len(a), 1.0 / d)]
        keys, values = merge(keys, values, np.concatenate(chunk_keys), np.concatenate(chunk_values))
        start = stop
    return (
        (keys // vocab_size).astype(np.int32),
        (keys % vocab_size).astype(np.int32),
        values.astype(np.float32),
    )


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["weights"])
    return {k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


class _EpochIterator(grain.DatasetIterator):
    """Walks epochs of `parts` (pieces of an epoch made one at a time by `make(epoch, part)`), yielding
    fixed-size batches; the state is (epoch, part, batch within the part)."""

    def __init__(self, ds: "WordPairs | Cooccurrences"):
        super().__init__()
        self.ds, self.epoch, self.part, self.index, self._examples = ds, 0, 0, 0, None

    def __next__(self) -> dict[str, np.ndarray]:
        while True:
            if self._examples is None:
                self._examples = self.ds.make(self.epoch, self.part)
            n, B = len(self._examples["weights"]), self.ds.batch_size
            if self.index * B < n:
                batch = {k: v[self.index * B : (self.index + 1) * B] for k, v in self._examples.items()}
                self.index += 1
                return _pad(batch, B)
            self.part, self.index, self._examples = self.part + 1, 0, None
            if self.part == self.ds.parts(self.epoch):
                self.epoch, self.part = self.epoch + 1, 0

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "part": self.part, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.part, self.index, self._examples = (
            state["epoch"],
            state["part"],
            state["index"],
            None,
        )


class WordPairs(grain.IterDataset):
    """word2vec examples: each epoch visits the documents in a new order, `chunk_tokens` tokens at a time; a
    chunk is subsampled, windowed, shuffled and given `negatives` noise words per example."""

    def __init__(
        self,
        docs: Sequence[np.ndarray],
        counts_V: np.ndarray,
        *,
        cbow: bool,
        window: int,
        negatives: int,
        sample: float,
        batch_size: int,
        seed: int,
        chunk_tokens: int = 1 << 18,
    ):
        super().__init__()
        self.docs = [d for d in docs if len(d) > 1]
        if not self.docs:
            raise InputError(
                "no training document has two in-vocabulary words; give a larger corpus or lower "
                "data.min_count"
            )
        self.keep_V, self.noise = keep_probabilities(counts_V, sample), NoiseTable(counts_V)
        self.cbow, self.window, self.negatives, self.batch_size, self.seed = (
            cbow,
            window,
            negatives,
            batch_size,
            seed,
        )
        self.chunk_tokens = chunk_tokens
        self._epoch_chunks: tuple[int, list[np.ndarray]] | None = None

    def _chunks(self, epoch: int) -> list[np.ndarray]:
        """The document indices of each chunk of this epoch."""
        if self._epoch_chunks is None or self._epoch_chunks[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.docs))
            ends = np.cumsum([len(self.docs[i]) for i in order])
            cuts = np.searchsorted(
                ends, np.arange(self.chunk_tokens, ends[-1], self.chunk_tokens), side="right"
            )
            self._epoch_chunks = (epoch, [c for c in np.split(order, np.unique(cuts)) if len(c)])
        return self._epoch_chunks[1]

    def parts(self, epoch: int) -> int:
        return len(self._chunks(epoch))

    def make(self, epoch: int, part: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch, part, 1])
        chosen = self._chunks(epoch)[part]
        tokens_T = np.concatenate([self.docs[i] for i in chosen])
        doc_T = np.repeat(np.arange(len(chosen)), [len(self.docs[i]) for i in chosen])
        kept = rng.random(len(tokens_T)) < self.keep_V[tokens_T]
        tokens_T, doc_T = tokens_T[kept], doc_T[kept]
        if self.cbow:
            inputs, mask, targets = cbow_windows(tokens_T, doc_T, self.window, rng)
            out = {"inputs": inputs, "input_mask": mask, "targets": targets}
        else:
            inputs, targets = skipgram_pairs(tokens_T, doc_T, self.window, rng)
            out = {"inputs": inputs, "targets": targets}
        order = rng.permutation(len(targets))
        out = {k: v[order] for k, v in out.items()}
        out["negatives"] = self.noise.draw((len(targets), self.negatives), rng)
        out["weights"] = np.ones(len(targets), np.float32)
        return out

    def __iter__(self) -> _EpochIterator:
        return _EpochIterator(self)


class Cooccurrences(grain.IterDataset):
    """GloVe examples: the non-zero co-occurrence entries, reshuffled every epoch (entries i::shard_count
    here)."""

    def __init__(self, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, *, batch_size: int, seed: int):
        super().__init__()
        if not len(counts):
            raise InputError(
                "the corpus gives no co-occurring word pairs; give a larger corpus or lower data.min_count"
            )
        self.entries = {
            "rows": rows,
            "cols": cols,
            "counts": counts,
            "weights": np.ones(len(counts), np.float32),
        }
        self.batch_size, self.seed = batch_size, seed

    def parts(self, epoch: int) -> int:
        return 1

    def make(self, epoch: int, part: int) -> dict[str, np.ndarray]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.entries["counts"]))
        return {k: v[order] for k, v in self.entries.items()}

    def __iter__(self) -> _EpochIterator:
        return _EpochIterator(self)


def expected_examples(
    docs: Sequence[np.ndarray], counts_V: np.ndarray, *, cbow: bool, window: int, sample: float
) -> float:
    """Examples one epoch makes on average (to turn epochs into train.num_steps): each kept word is a CBOW
    example, and in skip-gram pairs with window + 1 words on average (b uniform in 1..W, both sides), less
    document edges."""
    keep_V = keep_probabilities(counts_V, sample)
    kept = sum(float(keep_V[d].sum()) for d in docs if len(d) > 1)
    return kept if cbow else kept * (window + 1)
