"""grain pipelines: tokenize -> pack (concatenate-and-split) -> shuffle -> batch, sharded per process.

Batches are dicts of per-process NumPy arrays:
  inputs  int32[B, L]    targets int32[B, L] (inputs shifted by one)    weights float32[B, L] (0 on padding)
The training iterator is infinite, deterministic from the seed, and its state is checkpointable.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from lmjax.data.corpora import Corpus
from lmjax.data.tokenizers import Tokenizer


class Tokenize(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer, text_key: str, append_eos: bool):
        self.tokenizer, self.text_key, self.append_eos = tokenizer, text_key, append_eos

    def map(self, example: dict) -> dict:
        text = example[self.text_key]
        ids = self.tokenizer.encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        if self.append_eos:
            ids = np.append(ids, np.int32(self.tokenizer.eos_id))
        return {"tokens": ids.astype(np.int32)}


def to_lm_example(packed: dict) -> dict:
    """A packed window of L + 1 tokens -> (inputs, targets, weights); padding has segment id 0."""
    tokens, segments = packed["tokens"], packed["tokens_segment_ids"]
    return {"inputs": tokens[:-1], "targets": tokens[1:], "weights": (segments[1:] > 0).astype(np.float32)}


def _packed(ds: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer, seq_len: int) -> grain.IterDataset:
    ds = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=corpus.documents)).to_iter_dataset()
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": seq_len + 1})


def train_dataset(corpus: Corpus, tokenizer: Tokenizer, *, seq_len: int, batch_size: int, seed: int,
                  shuffle_window: int, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
    """Infinite, reshuffled every epoch; `batch_size` is this process's share of the global batch."""
    ds = grain.MapDataset.source(corpus.train)[shard_index::shard_count].shuffle(seed=seed).repeat()
    packed = _packed(ds, corpus, tokenizer, seq_len)
    if shuffle_window > 1:  # mixes windows of long documents, which example shuffling cannot
        packed = grain.experimental.WindowShuffleIterDataset(packed, window_size=shuffle_window, seed=seed)
    return packed.map(to_lm_example).batch(batch_size, drop_remainder=True)


def eval_batches(corpus: Corpus, tokenizer: Tokenizer, *, seq_len: int, batch_size: int, max_batches: int,
                 shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
    """The validation split in order, one pass (at most `max_batches` batches; 0 means all)."""
    ds = grain.MapDataset.source(corpus.validation)[shard_index::shard_count]
    batches = _packed(ds, corpus, tokenizer, seq_len).map(to_lm_example).batch(batch_size, drop_remainder=True)
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            return
        yield batch


def tokenizer_texts(corpus: Corpus, max_examples: int) -> Iterator[str]:
    """Training texts for a tokenizer: the first `max_examples` train examples (0 means all)."""
    n = len(corpus.train) if not max_examples else min(max_examples, len(corpus.train))
    for i in range(n):
        text = corpus.train[i][corpus.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
