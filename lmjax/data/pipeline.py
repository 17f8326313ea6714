"""grain pipelines, one per objective, sharded per process; batches are dicts of per-process NumPy arrays.

  causal_lm        tokenize -> pack (concatenate-and-split) -> shuffle windows -> batch:
                   inputs int32[B, L], targets int32[B, L] (inputs shifted by one), weights float32[B, L]
  mlm              documents -> sentence pairs (NSP) -> BERT masking -> batch (see data/masking.py)
  span_corruption  tokenize -> pack raw windows -> T5 span corruption -> batch (see data/spans.py)

Training iterators are infinite, deterministic from the seed, and their state is checkpointable.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from ml_collections import ConfigDict

from lmjax.data import masking, spans
from lmjax.data.corpora import Corpus
from lmjax.data.tokenizers import Tokenizer

OBJECTIVES = ("causal_lm", "mlm", "span_corruption")


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


def _packed(ds: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer, length: int) -> grain.IterDataset:
    ds = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=corpus.documents)).to_iter_dataset()
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": length})


def span_lengths(data: ConfigDict) -> tuple[int, int]:
    """(raw window, decoder length) for span corruption with encoder inputs of data.seq_len tokens."""
    return spans.window_lengths(data.seq_len, data.noise_density, data.mean_span)


def _examples(ds: grain.MapDataset, documents: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer,
              data: ConfigDict, objective: str, seed: int, training: bool) -> grain.IterDataset:
    """Unbatched examples for `objective` from the documents `ds` lists (NSP draws random ones from `documents`)."""
    if objective == "causal_lm":
        packed = _packed(ds, corpus, tokenizer, data.seq_len + 1)
        if training and data.shuffle_window > 1:  # mixes windows of long documents, which example shuffling cannot
            packed = grain.experimental.WindowShuffleIterDataset(packed, window_size=data.shuffle_window, seed=seed)
        return packed.map(to_lm_example)
    if objective == "mlm":
        spec = masking.MaskingSpec(data.mask_rate, data.mask_token_frac, data.random_token_frac, data.whole_word)
        pairs = masking.BertExamples(documents, corpus.text_key, tokenizer, data.seq_len, spec, data.nsp)
        return ds.random_map(pairs, seed=seed).to_iter_dataset()
    if objective == "span_corruption":
        packed = _packed(ds, corpus, tokenizer, span_lengths(data)[0])
        return packed.random_map(spans.SpanCorruption(tokenizer, data.noise_density, data.mean_span), seed=seed)
    raise ValueError(f"train.objective={objective!r} is unknown; use one of {OBJECTIVES}")


def train_dataset(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, *, objective: str, batch_size: int,
                  seed: int, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
    """Infinite, reshuffled every epoch; `batch_size` is this process's share of the global batch."""
    documents = grain.MapDataset.source(corpus.train)[shard_index::shard_count]
    ds = documents.shuffle(seed=seed).repeat()
    return _examples(ds, documents, corpus, tokenizer, data, objective, seed, training=True).batch(
        batch_size, drop_remainder=True)


def eval_batches(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, *, objective: str, batch_size: int,
                 max_batches: int, shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
    """The validation split in order (at most `max_batches` batches; 0 means one pass). Random choices
    (masks, pairs, spans) use a fixed seed, so every evaluation scores the same examples. MLM draws one
    pair per document and pass, so with max_batches it makes further passes until it has enough batches."""
    documents = grain.MapDataset.source(corpus.validation)[shard_index::shard_count]
    ds = documents
    if objective == "mlm" and max_batches:
        ds = documents.repeat(-(-max_batches * batch_size // max(len(documents), 1)))
    batches = _examples(ds, documents, corpus, tokenizer, data, objective, seed=0, training=False).batch(
        batch_size, drop_remainder=True)
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
