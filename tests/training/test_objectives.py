"""The objective registry: every objective's batches match its declared shapes, and a new objective is its own
code plus one registration (a toy: predict the token after next)."""

import json

import jax
import numpy as np
import pytest

from lmjax.data import corpora, pipeline, tokenizers
from lmjax.modes import train as train_mode
from lmjax.training import losses, objectives, prepare


def skip_examples(ds, documents, corpus, tokenizer, data, seed, training):
    """Windows of L + 2 tokens: position i predicts token i + 2."""
    packed = pipeline._packed(ds, corpus, tokenizer, data.seq_len + 2)

    def to_example(window):
        tokens, segments = window["tokens"], window["tokens_segment_ids"]
        return {
            "inputs": tokens[:-2],
            "targets": tokens[2:],
            "weights": (segments[2:] > 0).astype(np.float32),
        }

    return packed.map(to_example)


@pytest.fixture
def skip_lm():
    toy = objectives.Objective(
        "skip_lm",
        ("decoder",),
        lambda train_config: losses.language_model,
        lambda data, B: {
            "inputs": ((B, data.seq_len), np.int32),
            "targets": ((B, data.seq_len), np.int32),
            "weights": ((B, data.seq_len), np.float32),
        },
        examples=skip_examples,
        eval_stats=objectives.target_counts,
    )
    objectives.register(toy)
    yield toy
    del objectives.REGISTRY["skip_lm"]


def test_unknown_objective_fails_clearly():
    with pytest.raises(ValueError, match="train.objective='mlm2' is unknown; use one of"):
        objectives.get("mlm2")


def test_a_registered_toy_objective_trains_end_to_end(skip_lm, tiny_config, tmp_path):
    tiny_config.train.update(objective="skip_lm", num_steps=40, eval_every=40, sample_tokens=0)
    prepare.check_config(tiny_config)
    corpus = corpora.load(tiny_config.data)
    tok = tokenizers.train("char", pipeline.tokenizer_texts(corpus, 0), 0, 1)
    batch = next(
        iter(pipeline.train_dataset(corpus, tok, tiny_config.data, objective=skip_lm, batch_size=4, seed=0))
    )
    np.testing.assert_array_equal(batch["inputs"][:, 2:], batch["targets"][:, :-2])  # its own examples
    result = train_mode.run(tiny_config, tmp_path)
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert result["eval/loss"] < first["train/loss"] - 0.5, (first, result)
    assert 0 < result["eval/unigram_accuracy"] < result["eval/accuracy"]  # its evaluation adds the baseline


def test_a_family_it_does_not_train_is_refused(skip_lm, tiny_config):
    tiny_config.train.objective = "skip_lm"
    tiny_config.model.family = "rnn"
    with pytest.raises(
        ValueError, match="train.objective='skip_lm' does not train a model.family='rnn' model; use causal_lm"
    ):
        prepare.check_config(tiny_config)


@pytest.mark.parametrize("name", ["causal_lm", "bilm", "mlm", "span_corruption", "contrastive"])
def test_batches_have_the_declared_shapes(name, verse, tmp_path):
    from lmjax import config as config_lib

    config = config_lib.base()
    config.data.update(seq_len=16, max_chars=8, tokenizer="char", nsp=True)
    path = tmp_path / "text.txt"
    path.write_text(verse(300))
    config.data.update(text_files=str(path), cache_dir=str(tmp_path / "cache"))
    corpus = corpora.load(config.data)
    tok = tokenizers.train("sentencepiece", [verse(2000)], 450)  # has the special tokens MLM and spans need
    objective = objectives.get(name)
    batch = next(
        iter(pipeline.train_dataset(corpus, tok, config.data, objective=objective, batch_size=4, seed=0))
    )
    shapes = objective.batch_shapes(config.data, 4)
    assert sorted(batch) == sorted(shapes)
    for key, (shape, dtype) in shapes.items():
        assert batch[key].shape == shape and batch[key].dtype == dtype, key
    assert jax.tree.leaves(batch)
