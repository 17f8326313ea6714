"""data.mixture: rows drawn from several sources by weight (grain's mixing), resumable from the iterator's
state, each source validated on its own; bad specs are one line."""

import numpy as np
import pytest
from etils import epath

from lmjax import checkpoint, metrics
from lmjax import config as base_config
from lmjax.data import mixture, pipeline, tokenizers
from lmjax.modes import train as train_mode
from lmjax.training import objectives


def data_config(**kw):
    c = base_config.base().data
    c.update(kw)
    return c


def lines(letter: str, n: int = 3000) -> str:
    return "".join(f"{letter * 3} {letter * 2} {letter}{i % 7}\n" for i in range(n))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    for letter in "abc":
        (root / f"{letter}.txt").write_text(lines(letter))
    return root


def mixed(files, spec, cache_dir, **kw):
    data = data_config(mixture=spec.format(root=files), cache_dir=str(cache_dir), seq_len=8, **kw)
    corpus = mixture.load_corpus(data)
    tok = tokenizers.train("char", pipeline.tokenizer_texts(corpus, 0), 0)
    ds = pipeline.train_dataset(
        corpus, tok, data, objective=objectives.get("causal_lm"), batch_size=100, seed=0
    )
    return corpus, tok, ds


def shares(tok, batches) -> dict[str, float]:
    rows = np.concatenate([b["inputs"] for b in batches])
    return {letter: float((rows == tok.encode(letter)[0]).any(1).mean()) for letter in "abc"}


def test_rows_come_from_the_sources_by_weight_and_weight_zero_is_never_drawn(files, cache_dir):
    corpus, tok, ds = mixed(files, "{root}/a.txt:0.7,{root}/b.txt:0.3,{root}/c.txt:0", cache_dir)
    assert [(s.name, s.weight) for s in corpus.sources] == [("a", 0.7), ("b", 0.3), ("c", 0.0)]
    it = iter(ds)
    got = shares(tok, [next(it) for _ in range(100)])  # 10,000 rows, each from one source
    assert abs(got["a"] - 0.7) < 0.02 and abs(got["b"] - 0.3) < 0.02 and got["c"] == 0
    assert got["a"] + got["b"] == pytest.approx(1.0)


def test_a_restored_iterator_state_gives_the_same_batches(files, cache_dir):
    _, _, ds = mixed(files, "{root}/a.txt:1,{root}/*[bc].txt:2", cache_dir)
    it = iter(ds)
    for _ in range(23):
        next(it)
    saved = checkpoint._IteratorState(it).get_state()  # what a checkpoint stores: every source's position
    want = [next(it)["inputs"] for _ in range(30)]
    again = iter(ds)
    checkpoint._IteratorState(again).set_state(saved)
    for a, b in zip(want, [next(again)["inputs"] for _ in range(30)], strict=True):
        np.testing.assert_array_equal(a, b)


def test_an_interrupted_run_resumes_with_the_same_batches_and_validates_each_source(
    files, tiny_config, tmp_path, train_batches, crash
):
    tiny_config.data.update(text_files="", mixture=f"{files}/a.txt:3,{files}/b.txt:1")
    tiny_config.train.update(num_steps=6, checkpoint_every=3, eval_every=3, log_every=1, sample_tokens=0)
    result = train_mode.run(tiny_config, tmp_path / "a")
    uninterrupted = list(train_batches)
    assert {"eval/a/loss", "eval/b/loss", "eval/a/perplexity", "eval/b/accuracy"} <= set(result)
    weighted = 0.75 * result["eval/a/loss"] + 0.25 * result["eval/b/loss"]
    assert result["eval/loss"] == pytest.approx(weighted)
    logged = [r for r in metrics.read_jsonl(tmp_path / "a") if "eval/a/loss" in r]
    assert [r["step"] for r in logged] == [3, 6] and logged[-1]["eval/b/loss"] == result["eval/b/loss"]

    crash(train_mode.run, tiny_config, tmp_path / "b", at_step=5)  # after the checkpoint of step 3
    train_batches.clear()
    resumed = train_mode.run(tiny_config, tmp_path / "b")
    assert len(uninterrupted) == 6 and len(train_batches) == 3
    for a, b in zip(uninterrupted[3:], train_batches, strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed["eval/loss"] == pytest.approx(result["eval/loss"], rel=1e-6)


def test_a_source_in_a_bucket(files, bucket, cache_dir):
    for letter in "ab":
        (epath.Path(bucket) / "mix" / f"{letter}.txt").write_text(lines(letter, 500))
    corpus = mixture.load_corpus(
        data_config(mixture=f"{bucket}/mix/*.txt:1,{files}/c.txt:1", cache_dir=str(cache_dir))
    )
    assert [s.name for s in corpus.sources] == ["mix", "c"]
    text = "".join(
        corpus.sources[0].corpus.train[i]["text"].decode() for i in range(len(corpus.sources[0].corpus.train))
    )
    assert "aaa" in text and "bbb" in text


@pytest.mark.parametrize(
    "spec, says",
    [
        ("{root}/a.txt:0.5,{root}/b.txt:-1", "weight of '.*b.txt' is -1.0; weights must be >= 0"),
        ("{root}/a.txt:0,{root}/b.txt:0", "has no positive weight"),
        ("{root}/a.txt", "is not NAME:WEIGHT"),
        ("shakespear:1", "source 'shakespear' is unknown: not a built-in corpus"),
        ("{root}/nothing*.txt:1", "matches no file"),
    ],
)
def test_bad_mixtures_are_one_line(files, cache_dir, spec, says):
    with pytest.raises(ValueError, match=says):
        mixture.load_corpus(data_config(mixture=spec.format(root=files), cache_dir=str(cache_dir)))


def test_a_mixture_replaces_the_single_corpus_settings(files):
    with pytest.raises(ValueError, match="data.mixture replaces data.text_files"):
        mixture.load(data_config(mixture=f"{files}/a.txt:1", text_files=f"{files}/b.txt"))


def test_a_tfds_catalog_source(files, cache_dir):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=7):
        corpus = mixture.load_corpus(
            data_config(mixture=f"lm1b:1,{files}/a.txt:1", eval_split="test", cache_dir=str(cache_dir))
        )
    assert [(s.name, len(s.corpus.train)) for s in corpus.sources][0] == ("lm1b", 7)
    assert corpus.sources[0].corpus.documents and not corpus.sources[1].corpus.documents
