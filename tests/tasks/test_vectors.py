"""Word-vector tools: neighbours, 3CosAdd analogies, evaluation with out-of-vocabulary words, gensim
export."""

import numpy as np
import pytest

from lmjax.tasks import vectors


@pytest.fixture
def wv():
    words = ["man", "woman", "king", "queen", "apple", "pear"]
    v = np.array(
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 1], [0, 0.1, 0, 1]], np.float32
    )
    return vectors.WordVectors(words, v)


def test_nearest_and_analogy(wv):
    assert wv.nearest("apple", 1)[0][0] == "pear"
    assert wv.analogy("man", "woman", "King")[0][0] == "queen"  # case-insensitive; a, b, c excluded
    with pytest.raises(KeyError, match="'dragon' is not in the vocabulary"):
        wv.nearest("dragon")


def test_evaluation_counts_words_outside_the_vocabulary(wv):
    pairs = [("king", "queen", 8.0), ("apple", "pear", 9.0), ("man", "apple", 1.0), ("dragon", "king", 5.0)]
    r = vectors.evaluate_similarity(wv, pairs)
    assert r["pairs"] == 3 and r["oov_pairs"] == 1 and r["spearman"] == pytest.approx(1.0)
    q = [
        ("man", "woman", "king", "queen"),
        ("man", "king", "woman", "queen"),
        ("man", "woman", "dragon", "x"),
    ]
    r = vectors.evaluate_analogies(wv, q)
    assert r == {"questions": 2, "oov_questions": 1, "accuracy": 1.0}
    assert (
        vectors.evaluate_similarity(wv, [("dragon", "x", 1.0)])["pairs"] == 0
    )  # nothing known: NaN, no crash


def test_gensim_sets_are_read(wv):
    result = vectors.evaluate(wv)
    assert result["wordsim353_pairs"] + result["wordsim353_oov"] == 353
    assert result["simlex999_pairs"] + result["simlex999_oov"] == 999
    assert result["analogy_oov"] == 19544 - result["analogy_questions"]


def test_exported_vectors_load_in_gensim(wv, tmp_path):
    from gensim.models import KeyedVectors

    wv.save_word2vec_format(tmp_path / "v.txt")
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "v.txt"))
    assert kv.index_to_key == wv.words
    np.testing.assert_allclose(kv["queen"], wv.vectors_VD[3], rtol=1e-5)
    back = vectors.WordVectors.load_word2vec_format(tmp_path / "v.txt")
    np.testing.assert_allclose(back.vectors_VD, wv.vectors_VD, rtol=1e-5)
