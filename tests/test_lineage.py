"""The lineage on the same trainer, end to end on tiny configs: word2vec / GloVe (vectors exported for
gensim), recurrent LMs, ELMo pretraining then frozen scalar-mix features for a classifier, and SimCSE."""

import importlib
import json

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from lmjax import checkpoint, metrics
from lmjax.data import tokenizers
from lmjax.modes import finetune as finetune_mode
from lmjax.modes import train as train_mode
from lmjax.training import prepare


def smoke(name, arg, corpus_file, cache_dir, **data):
    c = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
    c.data.update(cache_dir=str(cache_dir), text_files=str(corpus_file), **data)
    prepare.check_config(c)
    return c


@pytest.mark.parametrize("arg", ["smoke", "smoke_cbow", "smoke_glove"])
def test_word_vectors_train_resume_and_export(arg, tmp_path, corpus_file, cache_dir):
    from gensim.models import KeyedVectors

    c = smoke("word2vec", arg, corpus_file, cache_dir)
    result = train_mode.run(c, tmp_path / "run")
    assert (
        result["eval/wordsim353_pairs"] + result["eval/wordsim353_oov"] == 353
    )  # OOV pairs counted, not fatal
    kv = KeyedVectors.load_word2vec_format(str(tmp_path / "run" / train_mode.VECTORS_FILE))
    tok = tokenizers.load(tmp_path / "run" / checkpoint.TOKENIZER_DIR)
    assert kv.index_to_key == tok.words[3:] and kv.vector_size == c.model.d_model
    assert kv.most_similar("king", topn=1)  # gensim can use them
    losses = [
        r["train/loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert np.isfinite(losses).all()
    c.train.num_steps = 8  # resumes from step 6 with the data iterator's state
    train_mode.run(c, tmp_path / "run")
    assert checkpoint.saved_steps(tmp_path / "run")[-1] == 8


def assert_training_loss_falls(workdir) -> None:
    """The mean training loss of the last logged interval is below that of the first."""
    losses = [r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses


def test_word2vec_learns_the_corpus_structure(tmp_path, corpus_file, cache_dir):
    """On the verse corpus, 'thou' and 'thee' share contexts less than random words do not: a loss that
    falls."""
    c = smoke("word2vec", "smoke", corpus_file, cache_dir)
    c.train.update(num_steps=150, eval_every=150, checkpoint_every=150, log_every=50)
    train_mode.run(c, tmp_path / "run")
    rows = [
        r
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in r
    ]
    assert rows[-1]["train/loss"] < rows[0]["train/loss"] - 0.3


def test_too_small_corpus_fails_with_one_line(tmp_path, cache_dir):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("a few words only\n\nand a few more words\n")
    c = smoke("word2vec", "smoke", tiny, cache_dir)
    with pytest.raises(ValueError, match=r"distinct words seen at least data.min_count=2 times .* too few"):
        train_mode.run(c, tmp_path / "run")
    c.data.update(min_count=1, vocab_size=500)
    with pytest.raises(ValueError, match="too few for data.vocab_size=500"):
        train_mode.run(c, tmp_path / "run2")


@pytest.mark.parametrize("arg", ["smoke", "gru"])
def test_recurrent_lm_trains(arg, tmp_path, corpus_file, cache_dir):
    c = smoke("rnn_lm", "smoke", corpus_file, cache_dir)
    c.model.cell = "lstm" if arg == "smoke" else "gru"
    result = train_mode.run(c, tmp_path / "run")
    assert np.isfinite(result["eval/loss"]) and 0 < result["eval/unigram_accuracy"] < 1
    assert_training_loss_falls(tmp_path / "run")


@pytest.mark.slow  # ~30 s: make test-slow
def test_elmo_pretrains_then_feeds_a_frozen_classifier(tmp_path, cache_dir):
    c = importlib.import_module("experiments.configs.elmo").get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    result = train_mode.run(c, tmp_path / "elmo")
    assert {"eval/loss", "eval/forward_perplexity"} <= set(result) and np.isfinite(result["eval/loss"])

    ft = importlib.import_module("experiments.configs.elmo").get_config("smoke_rotten_tomatoes")
    ft.data.cache_dir = str(cache_dir)
    ft.finetune.init = str(tmp_path / "elmo")
    out = finetune_mode.run(ft, tmp_path / "rt")
    assert 0 <= out["test/accuracy"] <= 1
    # The backbone stayed frozen: its parameters equal the pretrained ones; the mix and head moved.
    pre = ocp.StandardCheckpointer().restore((tmp_path / "elmo" / "checkpoints" / "3" / "state").absolute())
    fine = ocp.StandardCheckpointer().restore((tmp_path / "rt" / "checkpoints" / "3" / "state").absolute())
    p, f = (traverse_util.flatten_dict(t["params"], sep="/") for t in (pre, fine))
    assert all(np.array_equal(p[k], f["backbone/" + k]) for k in p)
    assert not np.allclose(f["mix/weights_J/value"], 0.0) or not np.allclose(f["mix/gamma/value"], 1.0)


def test_simcse_trains_with_dropout_views(tmp_path, cache_dir):
    c = importlib.import_module("experiments.configs.simcse").get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    result = train_mode.run(c, tmp_path / "simcse")
    assert np.isfinite(result["eval/loss"]) and 0 <= result["eval/accuracy"] <= 1
    assert_training_loss_falls(tmp_path / "simcse")
    c.model.dropout = 0.0
    with pytest.raises(ValueError, match="makes a text's two views by dropout"):
        prepare.check_config(c)
