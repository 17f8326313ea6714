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


TEXT = "The quick brown fox jumps over the lazy dog.\nA fox, a dog: both quick.\n" * 20


def test_a_byte_level_bpe_model_directory_loads_with_its_specials_and_chat_template(tmp_path):
    hf_tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    bpe = hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE())
    bpe.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = hf_tokenizers.decoders.ByteLevel()
    trainer = hf_tokenizers.trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=hf_tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([TEXT], trainer)
    template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    )
    reference = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|endoftext|>", chat_template=template
    )
    reference.save_pretrained(tmp_path / "model")  # what a Hugging Face model directory holds

    tok = tokenizers.load(tmp_path / "model")
    assert tok.kind == "bpe" and tok.vocab_size == reference.vocab_size
    text = "The lazy fox: quick!\nNew words too."
    np.testing.assert_array_equal(tok.encode(text), reference.encode(text, add_special_tokens=False))
    assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == tok.pad_id == reference.convert_tokens_to_ids("<|endoftext|>")  # no pad: eos pads
    assert tok.chat_template == template
    assert tok.word_starts()[reference.convert_tokens_to_ids("Ġfox")]
    tok.save(tmp_path / "saved")
    again = tokenizers.load(tmp_path / "saved")
    assert tokenizers.same(tok, again) and again.chat_template == template and again.eos_id == tok.eos_id


def test_a_t5_sentencepiece_model_directory_loads_with_its_own_ids(tmp_path):
    import io

    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TEXT.splitlines()),
        model_writer=proto,
        vocab_size=40,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )  # T5's layout: pad 0, eos 1, unk 2
    (tmp_path / "spiece.model").write_bytes(proto.getvalue())
    tok = tokenizers.load(tmp_path)
    assert (tok.kind, tok.pad_id, tok.eos_id) == ("sentencepiece", 0, 1)
    assert tok.decode(np.append(tok.encode("the quick fox"), tok.eos_id)) == "the quick fox"
