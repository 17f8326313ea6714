"""grain pipelines, one per objective, sharded per process; batches are dicts of per-process NumPy arrays.

  causal_lm        tokenize -> pack (concatenate-and-split) -> shuffle windows -> batch:
                   inputs int32[B, L], targets int32[B, L] (inputs shifted by one), weights float32[B, L]
  mlm              documents -> sentence pairs (NSP) -> BERT masking -> batch (see data/masking.py)
  span_corruption  tokenize -> pack raw windows -> T5 span corruption -> batch (see data/spans.py)
  bilm             causal_lm windows + prev_targets / prev_weights (the backward LM's) + chars int32[B, L, C]
  contrastive      one text piece per row: inputs, input_mask int32[B, L], weights float32[B] (two views: the model)
  skipgram, cbow, glove   word ids of whole documents -> word2vec examples / GloVe co-occurrences (data/wordvec.py)

Training iterators are infinite, deterministic from the seed, and their state is checkpointable.
"""
from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from ml_collections import ConfigDict

from lmjax.data import masking, spans, wordvec
from lmjax.data.corpora import Corpus
from lmjax.data.tokenizers import Tokenizer
from lmjax.errors import InputError

OBJECTIVES = ("causal_lm", "mlm", "span_corruption", "bilm", "contrastive") + wordvec.WORD_OBJECTIVES


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


def char_table(tokenizer: Tokenizer, max_chars: int) -> np.ndarray:
    """int32[V, C]: the UTF-8 bytes of each token between begin-of-word (257) and end-of-word (258) markers, byte
    b as b + 1, padding 0 (ELMo's character input); specials are a lone 259."""
    specials = set(tokenizer.special_ids().tolist())
    table = np.zeros((tokenizer.vocab_size, max_chars), np.int32)
    for i in range(tokenizer.vocab_size):
        ids = [259] if i in specials else [257] + [b + 1 for b in tokenizer.decode([i]).encode()][: max_chars - 2] + [258]
        table[i, :len(ids)] = ids
    return table


class AddChars(grain.transforms.Map):
    """batch['chars'] = the character ids of batch['inputs'] (for an ELMo model)."""

    def __init__(self, table_VC: np.ndarray):
        self.table_VC = table_VC

    def map(self, batch: dict) -> dict:
        return batch | {"chars": self.table_VC[batch["inputs"]]}


def to_bilm_example(packed: dict) -> dict:
    """An LM window plus the backward LM's targets: position i predicts inputs[i - 1] (none at i = 0)."""
    ex = to_lm_example(packed)
    inputs, real = ex["inputs"], (packed["tokens_segment_ids"][:-1] > 0).astype(np.float32)
    prev_weights = np.concatenate([[0.0], real[:-1] * real[1:]]).astype(np.float32)
    return ex | {"prev_targets": np.concatenate([[0], inputs[:-1]]).astype(np.int32), "prev_weights": prev_weights}


def to_sentence(tokens: np.ndarray, length: int) -> dict:
    n = min(len(tokens), length)
    mask = (np.arange(length) < n).astype(np.int32)
    return {"inputs": np.pad(tokens[:n], (0, length - n)).astype(np.int32), "input_mask": mask,
            "weights": np.float32(n > 0)}


def word_documents(split, tokenizer: Tokenizer, text_key: str, shard_index: int = 0,
                   shard_count: int = 1) -> list[np.ndarray]:
    """The word ids of every document (documents i::shard_count), words outside the vocabulary dropped."""
    docs = []
    for i in range(shard_index, len(split), shard_count):
        text = split[i][text_key]
        ids = tokenizer.encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        docs.append(ids[ids >= len(tokenizer.special_ids())])
    return docs


def _word_dataset(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, objective: str, batch_size: int, seed: int,
                  shard_index: int, shard_count: int) -> grain.IterDataset:
    counts_V = getattr(tokenizer, "counts_V", None)
    if counts_V is None:
        raise InputError(f"train.objective={objective!r} trains word vectors; set data.tokenizer='word'")
    if objective == "glove":  # the global matrix; each process trains on its own share of the entries
        rows, cols, counts = wordvec.cooccurrence(word_documents(corpus.train, tokenizer, corpus.text_key),
                                                  tokenizer.vocab_size, data.window)
        part = slice(shard_index, None, shard_count)
        return wordvec.Cooccurrences(rows[part], cols[part], counts[part], batch_size=batch_size, seed=seed)
    docs = word_documents(corpus.train, tokenizer, corpus.text_key, shard_index, shard_count)
    return wordvec.WordPairs(docs, counts_V, cbow=objective == "cbow", window=data.window, negatives=data.negatives,
                             sample=data.sample, batch_size=batch_size, seed=seed)


def _packed(ds: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer, length: int) -> grain.IterDataset:
    ds = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=corpus.documents)).to_iter_dataset()
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": length})


def span_lengths(data: ConfigDict) -> tuple[int, int]:
    """(raw window, decoder length) for span corruption with encoder inputs of data.seq_len tokens."""
    return spans.window_lengths(data.seq_len, data.noise_density, data.mean_span)


def _examples(ds: grain.MapDataset, documents: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer,
              data: ConfigDict, objective: str, seed: int, training: bool) -> grain.IterDataset:
    """Unbatched examples for `objective` from the documents `ds` lists (NSP draws random ones from `documents`)."""
    if objective in ("causal_lm", "bilm"):
        packed = _packed(ds, corpus, tokenizer, data.seq_len + 1)
        if training and data.shuffle_window > 1:  # mixes windows of long documents, which example shuffling cannot
            packed = grain.experimental.WindowShuffleIterDataset(packed, window_size=data.shuffle_window, seed=seed)
        return packed.map(to_lm_example if objective == "causal_lm" else to_bilm_example)
    if objective == "contrastive":
        tokenized = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=False)).to_iter_dataset()
        return tokenized.map(lambda ex: to_sentence(ex["tokens"], data.seq_len))
    if objective == "mlm":
        spec = masking.MaskingSpec(data.mask_rate, data.mask_token_frac, data.random_token_frac, data.whole_word)
        pairs = masking.BertExamples(documents, corpus.text_key, tokenizer, data.seq_len, spec, data.nsp)
        return ds.random_map(pairs, seed=seed).to_iter_dataset()
    if objective == "span_corruption":
        packed = _packed(ds, corpus, tokenizer, span_lengths(data)[0])
        return packed.random_map(spans.SpanCorruption(tokenizer, data.noise_density, data.mean_span), seed=seed)
    raise InputError(f"train.objective={objective!r} is unknown; use one of {OBJECTIVES}")


def batch_shapes(data: ConfigDict, objective: str, batch_size: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{key: (shape, dtype)} of the batches `train_dataset` yields (for compiling ahead of time, without data)."""
    B, L = batch_size, data.seq_len
    tokens = {"inputs": ((B, L), np.int32), "targets": ((B, L), np.int32), "weights": ((B, L), np.float32)}
    if objective == "causal_lm":
        return tokens
    if objective == "bilm":
        return tokens | {"prev_targets": ((B, L), np.int32), "prev_weights": ((B, L), np.float32),
                         "chars": ((B, L, data.max_chars), np.int32)}
    if objective == "contrastive":
        return {"inputs": ((B, L), np.int32), "input_mask": ((B, L), np.int32), "weights": ((B,), np.float32)}
    if objective in ("skipgram", "cbow"):
        inputs = {"inputs": ((B,), np.int32)} if objective == "skipgram" else {
            "inputs": ((B, 2 * data.window), np.int32), "input_mask": ((B, 2 * data.window), np.float32)}
        return inputs | {"targets": ((B,), np.int32), "negatives": ((B, data.negatives), np.int32),
                         "weights": ((B,), np.float32)}
    if objective == "glove":
        return {"rows": ((B,), np.int32), "cols": ((B,), np.int32), "counts": ((B,), np.float32),
                "weights": ((B,), np.float32)}
    if objective == "mlm":
        return tokens | {"segments": ((B, L), np.int32), "input_mask": ((B, L), np.int32)} | (
            {"nsp_labels": ((B,), np.int32)} if data.nsp else {})
    if objective == "span_corruption":
        T = span_lengths(data)[1]
        return {"inputs": ((B, L), np.int32), "input_mask": ((B, L), np.int32), "decoder_inputs": ((B, T), np.int32),
                "targets": ((B, T), np.int32), "weights": ((B, T), np.float32)}
    raise InputError(f"train.objective={objective!r} is unknown; use one of {OBJECTIVES}")


def process_shards(split, data: ConfigDict, shard_index: int, shard_count: int) -> list[grain.MapDataset]:
    """This process's data shards: documents i::S of the split for i = shard_index, shard_index + shard_count, ...

    S = data.shards, or one shard per process when 0. A fixed S makes the global batch (shard j's rows at
    block j) the same whatever the number of processes, so runs on 1 or N hosts see the same data.
    """
    num_shards = data.shards or shard_count
    if num_shards % shard_count:
        raise InputError(f"data.shards={num_shards} is not a multiple of the {shard_count} processes; "
                         f"use a multiple, or 0 for one shard per process")
    return [grain.MapDataset.source(split)[i::num_shards] for i in range(shard_index, num_shards, shard_count)]


def _rows_of_shards(streams: list[grain.IterDataset], batch_size: int) -> grain.IterDataset:
    """Batches of `batch_size` rows: an equal block from each shard's stream, in shard order."""
    if batch_size % len(streams):
        raise InputError(f"this process's batch of {batch_size} rows does not split over its {len(streams)} data "
                         f"shards; make data.batch_size a multiple of data.shards")
    if len(streams) == 1:
        return streams[0].batch(batch_size, drop_remainder=True)
    blocks = grain.experimental.ZipIterDataset(streams, strict=False).batch(batch_size // len(streams), drop_remainder=True)
    return blocks.map(_concat)


def _concat(parts: tuple[dict, ...]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def train_dataset(corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, *, objective: str, batch_size: int,
                  seed: int, shard_index: int = 0, shard_count: int = 1) -> grain.IterDataset:
    """Infinite, reshuffled every epoch; `batch_size` is this process's share of the global batch. A thread
    prepares the next batch while the step runs (its iterator state is that of the batches handed out)."""
    if objective in wordvec.WORD_OBJECTIVES:
        batches = _word_dataset(corpus, tokenizer, data, objective, batch_size, seed, shard_index, shard_count)
    else:
        streams = [_examples(documents.shuffle(seed=seed).repeat(), documents, corpus, tokenizer, data, objective,
                             seed, training=True)
                   for documents in process_shards(corpus.train, data, shard_index, shard_count)]
        batches = _with_chars(_rows_of_shards(streams, batch_size), tokenizer, data, objective)
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=1)


def _with_chars(batches: grain.IterDataset, tokenizer: Tokenizer, data: ConfigDict, objective: str) -> grain.IterDataset:
    return batches.map(AddChars(char_table(tokenizer, data.max_chars))) if objective == "bilm" else batches


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
    if objective in wordvec.WORD_OBJECTIVES:
        raise InputError(f"train.objective={objective!r} is scored on word-similarity and analogy sets, not batches")
    for i, batch in enumerate(_with_chars(_rows_of_shards(streams, batch_size), tokenizer, data, objective)):
        if max_batches and i >= max_batches:
            return
        yield batch


def tokenizer_texts(corpus: Corpus, max_examples: int) -> Iterator[str]:
    """Training texts for a tokenizer: the first `max_examples` train examples (0 means all)."""
    n = len(corpus.train) if not max_examples else min(max_examples, len(corpus.train))
    for i in range(n):
        text = corpus.train[i][corpus.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text


def check(c: ConfigDict) -> None:
    """The objective's examples against the model: span corruption's targets must fit its positions."""
    if c.train.objective == "span_corruption" and span_lengths(c.data)[1] > c.model.max_len:
        raise InputError(f"span corruption of {c.data.seq_len}-token inputs makes {span_lengths(c.data)[1]}-token "
                         f"targets, longer than model.max_len={c.model.max_len}; raise model.max_len")
