import numpy as np
import pytest

from lmjax.data import masking, tokenizers


def test_masking_statistics_over_100k_tokens():
    rng = np.random.default_rng(0)
    spec = masking.MaskingSpec()
    selected = masked = randomised = kept = candidates = 0
    for _ in range(800):  # 800 x 128 = 102,400 tokens
        tokens = rng.integers(10, 500, 128).astype(np.int32)
        maskable = np.ones(128, bool)
        maskable[[0, 60, 127]] = False  # [CLS], [SEP]s
        maskable[rng.integers(100, 128) :] = False  # padding
        inputs, weights = masking.mask_tokens(
            tokens, maskable, rng, spec, mask_id=3, replacement_ids=np.arange(10, 500)
        )
        chosen = weights > 0
        assert not np.any(chosen & ~maskable), "a special or padding token was selected"
        candidates += maskable.sum()
        selected += chosen.sum()
        masked += np.sum(inputs[chosen] == 3)
        randomised += np.sum((inputs[chosen] != 3) & (inputs[chosen] != tokens[chosen]))
        kept += np.sum(inputs[chosen] == tokens[chosen])
        assert np.array_equal(inputs[~chosen], tokens[~chosen])
    assert abs(selected / candidates - 0.15) < 0.005
    # A random replacement equals the original 1/490 of the time: count those with the kept ones.
    assert abs(masked / selected - 0.8) < 0.01
    assert abs(randomised / selected - 0.1) < 0.01 and abs(kept / selected - 0.1) < 0.01


def test_whole_word_masking_selects_whole_words():
    rng = np.random.default_rng(1)
    tokens = np.arange(100, 400, dtype=np.int32)
    word_start = rng.random(300) < 0.4
    word_start[0] = True
    spec = masking.MaskingSpec(whole_word=True)
    _, weights = masking.mask_tokens(
        tokens,
        np.ones(300, bool),
        rng,
        spec,
        mask_id=3,
        replacement_ids=np.arange(100, 400),
        word_start_L=word_start,
    )
    word = np.cumsum(word_start)
    for w in np.unique(word):
        chosen = weights[word == w] > 0
        assert chosen.all() or not chosen.any(), f"word {w} partly selected"
    assert 0.14 < weights.mean() < 0.25


@pytest.fixture(scope="module")
def spm(verse):
    return tokenizers.train("sentencepiece", [verse(2000)], 450)


def test_bert_examples_have_pairs_segments_padding_and_balanced_nsp(spm, verse):
    docs = [{"text": verse(40, seed=i)} for i in range(30)]
    make = masking.BertExamples(docs, "text", spm, 64, masking.MaskingSpec(), nsp=True)
    cls, sep = spm.special_id("[CLS]"), spm.special_id("[SEP]")
    rng = np.random.default_rng(0)
    labels = []
    for i in range(600):
        ex = make.random_map(docs[i % 30], rng)
        real = ex["input_mask"].astype(bool)
        t = ex["targets"][real]
        assert t[0] == cls and t[-1] == sep and np.sum(t == sep) == 2
        assert np.all(ex["targets"][~real] == 0) and np.all(ex["weights"][~real] == 0)
        assert np.all(ex["weights"][real][np.isin(t, (cls, sep))] == 0)
        first_sep = int(np.flatnonzero(t == sep)[0])
        assert np.all(ex["segments"][real][: first_sep + 1] == 0) and np.all(
            ex["segments"][real][first_sep + 1 :] == 1
        )
        labels.append(int(ex["nsp_labels"]))
    assert abs(np.mean(labels) - 0.5) < 0.05


def test_a_vocabulary_without_special_tokens_fails_clearly():
    char = tokenizers.train("char", ["abc"], 0)
    with pytest.raises(ValueError, match="needs? data.tokenizer='sentencepiece'"):
        masking.BertExamples([], "text", char, 16, masking.MaskingSpec(), nsp=True)
