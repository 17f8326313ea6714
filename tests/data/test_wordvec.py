"""word2vec / GloVe data: subsampling and noise statistics, windows, co-occurrence counts, resumable
iterators."""

import numpy as np
import pytest

from lmjax.data import wordvec


def test_subsampling_keeps_rare_words_and_thins_frequent_ones_as_word2vec():
    counts = np.array([0, 0, 0, 1_000_000, 1_000, 100, 1])
    keep = wordvec.keep_probabilities(counts, 1e-3)
    t = 1e-3 * counts.sum()
    np.testing.assert_allclose(keep[3], (np.sqrt(counts[3] / t) + 1) * t / counts[3])
    assert keep[:3].tolist() == [0, 0, 0] and keep[4:].tolist() == [1, 1, 1]
    # Empirically: the kept fraction of the frequent word matches its probability.
    rng = np.random.default_rng(0)
    tokens = np.full(200_000, 3)
    assert abs(np.mean(rng.random(len(tokens)) < keep[tokens]) - keep[3]) < 0.005


def test_negatives_follow_the_unigram_075_distribution():
    counts = np.array([0, 0, 0, 800, 100, 50, 50])
    draws = wordvec.NoiseTable(counts).draw((200_000,), np.random.default_rng(0))
    expected = counts**0.75 / (counts**0.75).sum()
    np.testing.assert_allclose(np.bincount(draws, minlength=7) / len(draws), expected, atol=0.004)
    assert not np.isin(draws, [0, 1, 2]).any()  # specials have count 0: never noise


def test_skipgram_pairs_respect_dynamic_window_and_documents():
    tokens = np.arange(10, 30)
    doc = np.repeat([0, 1], 10)
    rng = np.random.default_rng(0)
    inputs, targets = wordvec.skipgram_pairs(tokens, doc, 3, rng)
    distance = np.abs(inputs - targets)
    assert distance.min() >= 1 and distance.max() <= 3
    assert np.all((inputs < 20) == (targets < 20))  # never across the document boundary
    # Over many draws, offset d is used with probability (W - d + 1) / W: 1, 2/3, 1/3.
    counts = np.zeros(4)
    for seed in range(200):
        i, t = wordvec.skipgram_pairs(np.arange(1000), np.zeros(1000, int), 3, np.random.default_rng(seed))
        counts += np.bincount(np.abs(i - t), minlength=4)
    np.testing.assert_allclose(counts[1:] / counts[1], [1, 2 / 3, 1 / 3], atol=0.01)


def test_cbow_windows_hold_the_same_contexts_as_skipgram():
    tokens, doc = np.arange(10, 40), np.repeat([0, 1, 2], 10)
    ctx, mask, centres = wordvec.cbow_windows(tokens, doc, 2, np.random.default_rng(1))
    assert ctx.shape == (len(centres), 4) and mask.shape == ctx.shape
    for row, m, c in zip(ctx, mask, centres, strict=True):
        used = row[m > 0]
        assert (
            len(used) >= 1 and np.all(np.abs(used - c) <= 2) and np.all((used - 10) // 10 == (c - 10) // 10)
        )


def test_cooccurrence_matches_a_dense_count_and_merges_chunks():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 12, size=n) for n in (7, 1, 15, 4)]
    V, W = 12, 3
    dense = np.zeros((V, V))
    for d in docs:
        for i in range(len(d)):
            for j in range(max(0, i - W), i):
                dense[d[i], d[j]] += 1 / (i - j)
                dense[d[j], d[i]] += 1 / (i - j)
    for chunk in (1 << 20, 5):  # one chunk, or one document at a time merged
        rows, cols, x = wordvec.cooccurrence(docs, V, W, chunk_tokens=chunk)
        got = np.zeros((V, V))
        got[rows, cols] = x
        np.testing.assert_allclose(got, dense, rtol=1e-6)


def test_word_pairs_are_deterministic_and_resume_from_their_state():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 50, size=n) for n in rng.integers(5, 60, size=40)]
    counts = np.bincount(np.concatenate(docs), minlength=50)

    def make():
        return wordvec.WordPairs(
            docs,
            counts,
            cbow=False,
            window=3,
            negatives=4,
            sample=1e-2,
            batch_size=32,
            seed=7,
            chunk_tokens=100,
        )

    it = iter(make())
    first = [next(it) for _ in range(30)]  # crosses chunks and epochs
    assert first[0]["negatives"].shape == (32, 4) and set(first[0]) == {
        "inputs",
        "targets",
        "negatives",
        "weights",
    }
    assert any(b["weights"].min() == 0 for b in first)  # a chunk's last batch is padded with weight 0
    it2 = iter(make())
    for _ in range(11):
        next(it2)
    state = it2.get_state()
    it3 = iter(make())
    it3.set_state(state)
    for a, b in zip(first[11:], [next(it3) for _ in range(19)], strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


def test_no_usable_document_fails_with_one_line():
    with pytest.raises(ValueError, match="no training document has two in-vocabulary words"):
        wordvec.WordPairs(
            [np.array([3])], np.ones(4), cbow=False, window=2, negatives=2, sample=0, batch_size=4, seed=0
        )
