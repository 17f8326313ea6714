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


def batch_shapes(data: ConfigDict, objective: str, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the batches `train_dataset` yields (for compiling ahead of time, without data)."""
    B, L = batch_size, data.seq_len
    tokens = {"inputs": ((B, L), np.int32), "targets": ((B, L), np.int32), "weights": ((B, L), np.float32)}
    if objective == "causal_lm":
        return tokens
    if objective == "mlm":
        return tokens | {"segments": ((B, L), np.int32), "input_mask": ((B, L), np.int32)} | (
            {"nsp_labels": ((B,), np.int32)} if data.nsp else {})
    if objective == "span_corruption":
        T = span_lengths(data)[1]
        return {"inputs": ((B, L), np.int32), "input_mask": ((B, L), np.int32), "decoder_inputs": ((B, T), np.int32),
                "targets": ((B, T), np.int32), "weights": ((B, T), np.float32)}
    raise ValueError(f"train.objective={objective!r} is unknown; use one of {OBJECTIVES}")


def process_shards(split, data: ConfigDict, shard_index: int, shard_count: int) -> list[grain.MapDataset]:
    """This process's data shards: documents i::S of the split for i = shard_index, shard_index + shard_count, ...

    S = data.shards, or one shard per process when 0. A fixed S makes the global batch (shard j's rows at
    block j) the same whatever the number of processes, so runs on 1 or N hosts see the same data.
    """
    num_shards = data.shards or shard_count
    if num_shards % shard_count:
        raise ValueError(f"data.shards={num_shards} is not a multiple of the {shard_count} processes; "
                         f"use a multiple, or 0 for one shard per process")
    return [grain.MapDataset.source(split)[i::num_shards] for i in range(shard_index, num_shards, shard_count)]


def _rows_of_shards(streams: list[grain.IterDataset], batch_size: int) -> grain.IterDataset:
    """Batches of `batch_size` rows: an equal block from each shard's stream, in shard order."""
    if batch_size % len(streams):
        raise ValueError(f"this process's batch of {batch_size} rows does not split over its {len(streams)} data "
                         f"shards; make data.batch_size a multiple of data.shards")
    if len(streams) == 1:
        return streams[0].batch(batch_size, drop_remainder=True)
    blocks = grain.experimental.ZipIterDataset(streams, strict=False).batch(batch_size // len(streams), drop_remainder=True)
    return blocks.map(_concat)


def _concat(parts: tuple[dict, ...]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def train_dataset(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, *, objective: str, batch_size: int,
                  seed: int, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
    """Infinite, reshuffled every epoch; `batch_size` is this process's share of the global batch."""
    streams = [_examples(documents.shuffle(seed=seed).repeat(), documents, corpus, tokenizer, data, objective, seed,
                         training=True) for documents in process_shards(corpus.train, data, shard_index, shard_count)]
    return _rows_of_shards(streams, batch_size)


def eval_batches(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, *, objective: str, batch_size: int,
                 max_batches: int, shard_index: int = 0, shard_count: int = 1) -> Iterator[dict]:
    """The validation split in order (at most `max_batches` batches; 0 means one pass). Random choices
    (masks, pairs, spans) use a fixed seed, so every evaluation scores the same examples. MLM draws one
    pair per document and pass, so with max_batches it makes further passes until it has enough batches."""
    streams = []
    for documents in process_shards(corpus.validation, data, shard_index, shard_count):
        ds = documents
        if objective == "mlm" and max_batches:
            ds = documents.repeat(-(-max_batches * batch_size // max(len(documents), 1)))
        streams.append(_examples(ds, documents, corpus, tokenizer, data, objective, seed=0, training=False))
    for i, batch in enumerate(_rows_of_shards(streams, batch_size)):
        if max_batches and i >= max_batches:
            return
        yield batch


def tokenizer_texts(corpus: Corpus, max_examples: int) -> Iterator[str]:
    """Training texts for a tokenizer: the first `max_examples` train examples (0 means all)."""
    n = len(corpus.train) if not max_examples else min(max_examples, len(corpus.train))
    for i in range(n):
        text = corpus.train[i][corpus.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
