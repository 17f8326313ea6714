import numpy as np
import pytest

from lmjax.data import tokenizers

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"


def test_char_round_trip_and_save_load(tmp_path):
    tok = tokenizers.train("char", [TEXT], 0)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and tok.decode(ids) == TEXT
    assert tok.vocab_size == len(set(TEXT)) + 3
    tok.save(tmp_path)
    again = tokenizers.load(tmp_path)
    np.testing.assert_array_equal(again.encode(TEXT), ids)


def test_char_unknown_characters_map_to_unk():
    tok = tokenizers.train("char", ["abc"], 0)
    assert list(tok.encode("aé\U0001f600c")) == [3, tok.unk_id, tok.unk_id, 5]


def test_sentencepiece_round_trip_keeps_whitespace_and_newlines(tmp_path):
    tok = tokenizers.train("sentencepiece", [TEXT * 20 + "the king and the queen\n" * 50], 450)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    tok.save(tmp_path)
    assert tokenizers.load(tmp_path).decode(ids) == TEXT
    assert tok.decode(tok.encode("unseen: é 中")) == "unseen: é 中"  # byte fallback


def test_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="empty corpus"):
        tokenizers.train("char", [""], 0)
    with pytest.raises(ValueError, match="data.tokenizer='bpe' is unknown"):
        tokenizers.train("bpe", [TEXT], 0)
    with pytest.raises(FileNotFoundError, match="no tokenizer in"):
        tokenizers.load(tmp_path)


def test_word_tokenizer_counts_min_count_and_save_load(tmp_path):
    texts = ["The cat sat; the cat's hat.", "THE dog sat"]
    tok = tokenizers.train("word", texts, 0, min_count=2)
    assert tok.words[3:] == ["the", "sat"] and tok.counts_V[3:].tolist() == [3, 2]  # "cat's" is one word
    assert tok.encode("The cat's dog sat").tolist() == [3, 2, 2, 4]  # unknown words -> <unk> (2)
    tok.save(tmp_path)
    back = tokenizers.load(tmp_path)
    assert back.words == tok.words and tokenizers.same(back, tok)
    with pytest.raises(ValueError, match="distinct words seen at least data.min_count=5 times"):
        tokenizers.train("word", texts, 0, min_count=5)
