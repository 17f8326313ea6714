"""grain pipelines, sharded per process; batches are dicts of per-process NumPy arrays.

An objective (lmjax.training.objectives) names the examples its batches are made of; the example makers here
are:

  lm_examples        tokenize -> pack (concatenate-and-split) -> shuffle windows:
                     inputs int32[L], targets int32[L] (inputs shifted by one), weights float32[L],
                     document_ids int32[L] (1, 2, ... per document in the row; 0: padding) and
                     positions int32[L] (restarting at each document): attention stays in a document
  bilm_examples      lm_examples + prev_targets / prev_weights (the backward LM's);
                     batches add chars int32[B, L, C]
  mlm_examples       documents -> sentence pairs (NSP) -> BERT masking (see data/masking.py)
  span_examples      tokenize -> split documents into raw windows -> T5 span corruption of each (see
                     data/spans.py) -> pack examples into rows (first fit), with document ids and
                     positions of the inputs and of the targets
  sentence_examples  one text piece per row: inputs, input_mask int32[L], weights float32
                     (the two views: the model's)
  word_pairs, cooccurrences   word ids of whole documents -> word2vec examples / GloVe entries
                              (data/wordvec.py)

Training iterators are infinite, deterministic from the seed, and their state is checkpointable.
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np
from ml_collections import ConfigDict

from lmjax.data import masking, spans, wordvec
from lmjax.data.corpora import Corpus
from lmjax.data.mixture import Mixture
from lmjax.data.tokenizers import Tokenizer
from lmjax.errors import InputError


class Tokenize(grain.transforms.Map):
    def __init__(self, tokenizer: Tokenizer, text_key: str, append_eos: bool):
        self.tokenizer, self.text_key, self.append_eos = tokenizer, text_key, append_eos

    def map(self, example: dict) -> dict:
        text = example[self.text_key]
        ids = self.tokenizer.encode(
            text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
        )
        if self.append_eos:
            ids = np.append(ids, np.int32(self.tokenizer.eos_id))
        return {"tokens": ids.astype(np.int32)}


def to_lm_example(packed: dict) -> dict:
    """A packed window of L + 1 tokens -> inputs, targets, weights, document_ids, positions. Padding has
    document id 0; a document's last token does not predict the next document's first (weight 0)."""
    tokens, ids, positions = packed["tokens"], packed["tokens_segment_ids"], packed["tokens_positions"]
    same_document = (ids[1:] == ids[:-1]) & (ids[1:] > 0)
    return {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "weights": same_document.astype(np.float32),
        "document_ids": ids[:-1],
        "positions": positions[:-1],
    }


def char_table(tokenizer: Tokenizer, max_chars: int) -> np.ndarray:
    """int32[V, C]: the UTF-8 bytes of each token between begin-of-word (257) and end-of-word (258) markers,
    byte b as b + 1, padding 0 (ELMo's character input); specials are a lone 259."""
    specials = set(tokenizer.special_ids().tolist())
    table = np.zeros((tokenizer.vocab_size, max_chars), np.int32)
    for i in range(tokenizer.vocab_size):
        ids = (
            [259]
            if i in specials
            else [257] + [b + 1 for b in tokenizer.decode([i]).encode()][: max_chars - 2] + [258]
        )
        table[i, : len(ids)] = ids
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
    return ex | {
        "prev_targets": np.concatenate([[0], inputs[:-1]]).astype(np.int32),
        "prev_weights": prev_weights,
    }


def to_sentence(tokens: np.ndarray, length: int) -> dict:
    n = min(len(tokens), length)
    mask = (np.arange(length) < n).astype(np.int32)
    return {
        "inputs": np.pad(tokens[:n], (0, length - n)).astype(np.int32),
        "input_mask": mask,
        "weights": np.float32(n > 0),
    }


def word_documents(
    split, tokenizer: Tokenizer, text_key: str, shard_index: int = 0, shard_count: int = 1
) -> list[np.ndarray]:
    """The word ids of every document (documents i::shard_count), words outside the vocabulary dropped."""
    docs = []
    for i in range(shard_index, len(split), shard_count):
        text = split[i][text_key]
        ids = tokenizer.encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)
        docs.append(ids[ids >= len(tokenizer.special_ids())])
    return docs


def _word_counts(tokenizer: Tokenizer, name: str) -> np.ndarray:
    counts_V = getattr(tokenizer, "counts_V", None)
    if counts_V is None:
        raise InputError(f"train.objective={name!r} trains word vectors; set data.tokenizer='word'")
    return counts_V


def word_pairs(cbow: bool):
    """The training dataset of word2vec examples (skip-gram pairs or CBOW windows) with negatives."""

    def dataset(
        corpus: Corpus,
        tokenizer: Tokenizer,
        data: ConfigDict,
        batch_size: int,
        seed: int,
        shard_index: int,
        shard_count: int,
    ) -> grain.IterDataset:
        counts_V = _word_counts(tokenizer, "cbow" if cbow else "skipgram")
        docs = word_documents(corpus.train, tokenizer, corpus.text_key, shard_index, shard_count)
        return wordvec.WordPairs(
            docs,
            counts_V,
            cbow=cbow,
            window=data.window,
            negatives=data.negatives,
            sample=data.sample,
            batch_size=batch_size,
            seed=seed,
        )

    return dataset


def cooccurrences(
    corpus: Corpus,
    tokenizer: Tokenizer,
    data: ConfigDict,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
) -> grain.IterDataset:
    """GloVe's training dataset: the global co-occurrence matrix; each process trains on its share of
    entries."""
    _word_counts(tokenizer, "glove")
    rows, cols, counts = wordvec.cooccurrence(
        word_documents(corpus.train, tokenizer, corpus.text_key), tokenizer.vocab_size, data.window
    )
    part = slice(shard_index, None, shard_count)
    return wordvec.Cooccurrences(rows[part], cols[part], counts[part], batch_size=batch_size, seed=seed)


def _packed(ds: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer, length: int) -> grain.IterDataset:
    ds = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=corpus.documents)).to_iter_dataset()
    return grain.experimental.ConcatThenSplitIterDataset(ds, length_struct={"tokens": length})


PACKING_BINS = 8  # rows first-fit packing fills at once (more: less padding, more mixing of epochs)


class SplitWindows(grain.experimental.FlatMapTransform):
    """A tokenized document -> its consecutive windows of at most `length` tokens (the last may be shorter;
    windows of one token are dropped: nothing to corrupt)."""

    def __init__(self, length: int):
        self.length = length

    def flat_map(self, example: dict) -> list[dict]:
        tokens = example["tokens"]
        starts = range(0, len(tokens) - 1, self.length)
        return [{"tokens": tokens[i : i + self.length]} for i in starts if len(tokens) - i >= 2]


def span_lengths(data: ConfigDict) -> tuple[int, int]:
    """(raw window, decoder length) for span corruption with encoder inputs of data.seq_len tokens."""
    return spans.window_lengths(data.seq_len, data.noise_density, data.mean_span)


# Example makers: (documents to read, all documents, corpus, tokenizer, data config, seed, training) ->
# examples.


def _lm_windows(
    ds: grain.MapDataset, corpus: Corpus, tokenizer: Tokenizer, data: ConfigDict, seed: int, training: bool
) -> grain.IterDataset:
    packed = _packed(ds, corpus, tokenizer, data.seq_len + 1)
    if (
        training and data.shuffle_window > 1
    ):  # mixes windows of long documents, which example shuffling cannot
        packed = grain.experimental.WindowShuffleIterDataset(
            packed, window_size=data.shuffle_window, seed=seed
        )
    return packed


def lm_examples(ds, documents, corpus, tokenizer, data, seed, training) -> grain.IterDataset:
    return _lm_windows(ds, corpus, tokenizer, data, seed, training).map(to_lm_example)


def bilm_examples(ds, documents, corpus, tokenizer, data, seed, training) -> grain.IterDataset:
    return _lm_windows(ds, corpus, tokenizer, data, seed, training).map(to_bilm_example)


def sentence_examples(ds, documents, corpus, tokenizer, data, seed, training) -> grain.IterDataset:
    tokenized = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=False)).to_iter_dataset()
    return tokenized.map(lambda ex: to_sentence(ex["tokens"], data.seq_len))


def mlm_examples(ds, documents, corpus, tokenizer, data, seed, training) -> grain.IterDataset:
    """Sentence pairs (NSP draws random second sentences from `documents`), BERT-masked."""
    spec = masking.MaskingSpec(data.mask_rate, data.mask_token_frac, data.random_token_frac, data.whole_word)
    pairs = masking.BertExamples(documents, corpus.text_key, tokenizer, data.seq_len, spec, data.nsp)
    return ds.random_map(pairs, seed=seed).to_iter_dataset()


def span_examples(ds, documents, corpus, tokenizer, data, seed, training) -> grain.IterDataset:
    """Each document's raw windows span-corrupted on their own, then packed several to a row."""
    raw, target_len = span_lengths(data)
    tokens = ds.map(Tokenize(tokenizer, corpus.text_key, append_eos=corpus.documents)).to_iter_dataset()
    windows = grain.experimental.FlatMapIterDataset(tokens, SplitWindows(raw))
    examples = windows.random_map(
        spans.SpanCorruption(tokenizer, data.noise_density, data.mean_span), seed=seed
    )
    lengths = {
        "inputs": data.seq_len,
        "decoder_inputs": target_len,
        "targets": target_len,
        "weights": target_len,
    }
    rows = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct=lengths, num_packing_bins=PACKING_BINS, seed=seed, shuffle_bins=training
    )
    return rows.map(spans.packed_example)


def with_chars(batches: grain.IterDataset, tokenizer: Tokenizer, data: ConfigDict) -> grain.IterDataset:
    """Batches with the characters of their inputs (ELMo's input)."""
    return batches.map(AddChars(char_table(tokenizer, data.max_chars)))


def process_shards(split, data: ConfigDict, shard_index: int, shard_count: int) -> list[grain.MapDataset]:
    """This process's data shards: documents i::S of the split for i = shard_index, shard_index + shard_count,
    ...

    S = data.shards, or one shard per process when 0. A fixed S makes the global batch (shard j's rows at
    block j) the same whatever the number of processes, so runs on 1 or N hosts see the same data.
    """
    num_shards = data.shards or shard_count
    if num_shards % shard_count:
        raise InputError(
            f"data.shards={num_shards} is not a multiple of the {shard_count} processes; "
            f"use a multiple, or 0 for one shard per process"
        )
    return [
        grain.MapDataset.source(split)[i::num_shards] for i in range(shard_index, num_shards, shard_count)
    ]


def _rows_of_shards(streams: list[grain.IterDataset], batch_size: int) -> grain.IterDataset:
    """Batches of `batch_size` rows: an equal block from each shard's stream, in shard order."""
    if batch_size % len(streams):
        raise InputError(
            f"this process's batch of {batch_size} rows does not split over its {len(streams)} data "
            f"shards; make data.batch_size a multiple of data.shards"
        )
    if len(streams) == 1:
        return streams[0].batch(batch_size, drop_remainder=True)
    blocks = grain.experimental.ZipIterDataset(streams, strict=False).batch(
        batch_size // len(streams), drop_remainder=True
    )
    return blocks.map(_concat)


def _concat(parts: tuple[dict, ...]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _batches(
    objective, streams: list[grain.IterDataset], batch_size: int, tokenizer: Tokenizer, data: ConfigDict
) -> grain.IterDataset:
    batches = _rows_of_shards(streams, batch_size)
    return objective.batches(batches, tokenizer, data) if objective.batches else batches


def train_dataset(
    corpus: Corpus | Mixture,
    tokenizer: Tokenizer,
    data: ConfigDict,
    *,
    objective,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> grain.IterDataset:
    """Infinite, reshuffled every epoch (a mixture's rows drawn from its sources by weight); `objective` (an
    lmjax.training.objectives.Objective) says what the batches hold; `batch_size` is this process's share of
    the global batch. A thread prepares the next batch while the step runs (its iterator state is that of the
    batches handed out)."""
    if objective.dataset is not None:
        if isinstance(corpus, Mixture):
            raise InputError(f"train.objective={objective.name!r} reads one corpus; unset data.mixture")
        batches = objective.dataset(corpus, tokenizer, data, batch_size, seed, shard_index, shard_count)
    else:

        def examples(corpus: Corpus, seed: int) -> list[grain.IterDataset]:
            return [
                objective.examples(
                    documents.shuffle(seed=seed).repeat(), documents, corpus, tokenizer, data, seed, True
                )
                for documents in process_shards(corpus.train, data, shard_index, shard_count)
            ]

        if isinstance(corpus, Mixture):  # shard j of every source, mixed row by row
            per_source = {s.name: examples(s.corpus, seed + i) for i, s in enumerate(corpus.trained)}
            weights = {s.name: s.weight for s in corpus.trained}
            streams = [
                grain.IterDataset.mix({name: shards[j] for name, shards in per_source.items()}, weights)
                for j in range(len(next(iter(per_source.values()))))
            ]
        else:
            streams = examples(corpus, seed)
        batches = _batches(objective, streams, batch_size, tokenizer, data)
    return grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=1)


def eval_batches(
    corpus: Corpus,
    tokenizer: Tokenizer,
    data: ConfigDict,
    *,
    objective,
    batch_size: int,
    max_batches: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict]:
    """The validation split in order (at most `max_batches` batches; 0 means one pass). Random choices
    (masks, pairs, spans) use a fixed seed, so every evaluation scores the same examples. Objectives that draw
    one example per document (MLM pairs: objective.one_per_document) make further passes until they have
    enough batches."""
    if objective.examples is None:
        raise InputError(f"train.objective={objective.name!r} is scored by its own evaluation, not batches")
    streams = []
    for documents in process_shards(corpus.validation, data, shard_index, shard_count):
        ds = documents
        if objective.one_per_document and max_batches:
            ds = documents.repeat(-(-max_batches * batch_size // max(len(documents), 1)))
        streams.append(objective.examples(ds, documents, corpus, tokenizer, data, 0, False))
    for i, batch in enumerate(_batches(objective, streams, batch_size, tokenizer, data)):
        if max_batches and i >= max_batches:
            return
        yield batch


def tokenizer_texts(corpus: Corpus | Mixture, max_examples: int) -> Iterator[str]:
    """Training texts for a tokenizer: the first `max_examples` train examples (0 means all) of the corpus, or
    of each source of a mixture."""
    if isinstance(corpus, Mixture):
        for source in corpus.sources:
            yield from tokenizer_texts(source.corpus, max_examples)
        return
    n = len(corpus.train) if not max_examples else min(max_examples, len(corpus.train))
    for i in range(n):
        text = corpus.train[i][corpus.text_key]
        yield text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text
