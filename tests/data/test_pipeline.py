import numpy as np
import pytest

from lmjax import config as base_config
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.training import objectives


def data_config(**kw):
    c = base_config.base().data
    c.update(kw)
    return c


@pytest.fixture
def corpus(corpus_file, cache_dir):
    return corpora.load(data_config(text_files=str(corpus_file), cache_dir=str(cache_dir)))


@pytest.fixture
def tok(corpus):
    return tokenizers.train("char", pipeline.tokenizer_texts(corpus, 0), 0)


def batches(ds, n, state=None):
    it = iter(ds)
    if state is not None:
        it.set_state(state)
    return [next(it) for _ in range(n)], it


def test_batches_are_packed_shifted_and_unpadded(corpus, tok):
    ds = pipeline.train_dataset(
        corpus,
        tok,
        data_config(seq_len=16, shuffle_window=8),
        objective=objectives.get("causal_lm"),
        batch_size=4,
        seed=0,
    )
    (b,), _ = batches(ds, 1)
    keys = ("inputs", "targets", "weights", "document_ids", "positions")
    assert {k: v.shape for k, v in b.items()} == {k: (4, 16) for k in keys}
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
    ids, positions = b["document_ids"], b["positions"]
    assert ids.min() >= 1  # packing leaves no padding in training
    # a document's last token does not predict the next document's first; positions restart per document
    np.testing.assert_array_equal(b["weights"][:, :-1], ids[:, 1:] == ids[:, :-1])
    starts = np.c_[np.ones((4, 1), bool), ids[:, 1:] != ids[:, :-1]]
    assert np.all(positions[starts] == 0) and np.all(np.diff(positions, axis=1)[~starts[:, 1:]] == 1)
    text = "".join(corpus.train[i]["text"].decode() for i in range(len(corpus.train)))
    for doc in np.unique(ids[0]):
        assert tok.decode(b["inputs"][0][ids[0] == doc]) in text


def test_deterministic_from_seed(corpus, tok):
    def make(seed):
        return pipeline.train_dataset(
            corpus,
            tok,
            data_config(seq_len=16, shuffle_window=8),
            objective=objectives.get("causal_lm"),
            batch_size=4,
            seed=seed,
        )

    a, _ = batches(make(0), 5)
    b, _ = batches(make(0), 5)
    c, _ = batches(make(1), 5)
    assert all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x["inputs"], y["inputs"]) for x, y in zip(a, c, strict=True))


def test_iterator_state_restores_the_same_batches(corpus, tok):
    ds = pipeline.train_dataset(
        corpus,
        tok,
        data_config(seq_len=16, shuffle_window=8),
        objective=objectives.get("causal_lm"),
        batch_size=4,
        seed=0,
    )
    _, it = batches(ds, 37)  # mid-window, mid-epoch
    state = it.get_state()
    expected = [next(it) for _ in range(60)]  # crosses an epoch boundary of this small corpus
    got, _ = batches(ds, 60, state)
    for x, y in zip(expected, got, strict=True):
        np.testing.assert_array_equal(x["inputs"], y["inputs"])


def test_process_shards_are_disjoint_and_cover_the_data(corpus, tok):
    def shard(i):
        return [
            b["inputs"]
            for b in pipeline.eval_batches(
                corpus,
                tok,
                data_config(seq_len=8),
                objective=objectives.get("causal_lm"),
                batch_size=1,
                max_batches=0,
                shard_index=i,
                shard_count=2,
            )
        ]

    whole = np.concatenate(
        [
            b["inputs"]
            for b in pipeline.eval_batches(
                corpus,
                tok,
                data_config(seq_len=8),
                objective=objectives.get("causal_lm"),
                batch_size=1,
                max_batches=0,
            )
        ]
    )
    a, b = np.concatenate(shard(0)), np.concatenate(shard(1))
    assert abs(a.size + b.size - whole.size) <= 2 * 8 * 2  # each shard may lose a partial window at its end
    assert a.size and b.size and not np.array_equal(a[:4], b[:4])


def test_fixed_data_shards_give_the_same_global_batches_on_one_or_two_processes(corpus, tok):
    objective = "causal_lm"
    data = data_config(seq_len=16, shuffle_window=8, shards=2)

    def make(batch_size, **shard):
        return pipeline.train_dataset(
            corpus, tok, data, objective=objectives.get(objective), seed=3, batch_size=batch_size, **shard
        )

    one, it = batches(make(8), 6)
    state = it.get_state()
    two = [batches(make(4, shard_index=i, shard_count=2), 6)[0] for i in range(2)]
    for whole, first, second in zip(
        one, *two, strict=True
    ):  # process 0's rows, then process 1's: the same global batch
        for k in whole:
            np.testing.assert_array_equal(whole[k], np.concatenate([first[k], second[k]]))
    resumed, _ = batches(make(8), 2, state)  # the state of several shards in one process restores too
    np.testing.assert_array_equal(resumed[0]["inputs"], next(it)["inputs"])
    with pytest.raises(ValueError, match="data.shards=3 is not a multiple of the 2 processes"):
        pipeline.train_dataset(
            corpus,
            tok,
            data_config(shards=3),
            objective=objectives.get(objective),
            seed=0,
            batch_size=4,
            shard_index=0,
            shard_count=2,
        )


def test_eval_covers_validation_in_order_with_padding_masked(corpus, tok):
    evals = list(
        pipeline.eval_batches(
            corpus,
            tok,
            data_config(seq_len=16),
            objective=objectives.get("causal_lm"),
            batch_size=2,
            max_batches=0,
        )
    )
    val = "".join(corpus.validation[i]["text"].decode() for i in range(len(corpus.validation)))
    # a row's real inputs and its real last target are the window (weights skip document boundaries)
    text = "".join(
        tok.decode(
            np.r_[b["inputs"][r][b["document_ids"][r] > 0], b["targets"][r][-1:][b["weights"][r][-1:] > 0]]
        )
        for b in evals
        for r in range(2)
    )
    assert val.startswith(text[:500]) and len(text) > 0.9 * len(val)
    real = np.concatenate([b["document_ids"] > 0 for b in evals])
    assert np.all(np.concatenate([b["weights"] for b in evals])[~real] == 0)
    assert (
        len(
            list(
                pipeline.eval_batches(
                    corpus,
                    tok,
                    data_config(seq_len=16),
                    objective=objectives.get("causal_lm"),
                    batch_size=2,
                    max_batches=3,
                )
            )
        )
        == 3
    )


@pytest.mark.parametrize("objective", ["mlm", "span_corruption"])
def test_mlm_and_span_pipelines_are_deterministic_and_resumable(corpus, objective):
    spm = tokenizers.train("sentencepiece", pipeline.tokenizer_texts(corpus, 0), 450)
    data = data_config(seq_len=32)

    def make(seed):
        return pipeline.train_dataset(
            corpus, spm, data, objective=objectives.get(objective), batch_size=4, seed=seed
        )

    a, it = batches(make(0), 3)
    b, _ = batches(make(0), 3)
    c, _ = batches(make(1), 3)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    assert not np.array_equal(a[0]["inputs"], c[0]["inputs"])
    state = it.get_state()
    after, _ = batches(make(0), 2, state)
    expected = [next(it) for _ in range(2)]
    assert all(np.array_equal(x[k], y[k]) for x, y in zip(after, expected, strict=True) for k in x)
    assert a[0]["inputs"].shape == (4, 32)
    if objective == "span_corruption":
        assert a[0]["targets"].shape == (4, pipeline.span_lengths(data)[1])
        for batch in a:
            check_packed_spans(batch, spm, corpus)


def check_packed_spans(b: dict, tok, corpus) -> None:
    """Each row holds several span-corrupted windows side by side: within one, the decoder inputs are its
    targets shifted right after a 0 start token and positions count from 0; each uncorrupts to text of the
    corpus; padding has id 0, no weight and no input mask."""
    from lmjax.data import spans

    sentinels = np.asarray([tok.special_id(tokenizers.sentinel(i)) for i in range(tokenizers.NUM_SENTINELS)])
    text = "".join(corpus.train[i]["text"].decode() for i in range(len(corpus.train)))
    np.testing.assert_array_equal(b["input_mask"], b["input_document_ids"] > 0)
    np.testing.assert_array_equal(b["weights"], b["decoder_document_ids"] > 0)
    for r in range(b["inputs"].shape[0]):
        for doc in np.unique(b["input_document_ids"][r][b["input_document_ids"][r] > 0]):
            enc, dec = b["input_document_ids"][r] == doc, b["decoder_document_ids"][r] == doc
            targets, decoder_inputs = b["targets"][r][dec], b["decoder_inputs"][r][dec]
            np.testing.assert_array_equal(decoder_inputs, np.r_[0, targets[:-1]])
            np.testing.assert_array_equal(b["input_positions"][r][enc], np.arange(enc.sum()))
            np.testing.assert_array_equal(b["decoder_positions"][r][dec], np.arange(dec.sum()))
            window = spans.uncorrupt(b["inputs"][r][enc], targets, sentinels, tok.eos_id)
            assert tok.decode(window) in text
