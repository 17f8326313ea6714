import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import bert_mlm, shakespeare_char, t5_span
from lmjax import models
from lmjax.models import heads
from lmjax.tasks import pipeline as task_pipeline


def test_pooling_reads_only_real_tokens():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(heads.pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_allclose(heads.pool(h, mask, "last"), jnp.stack([h[0, 1], h[1, 3]]))
    np.testing.assert_allclose(heads.pool(h, mask, "mean"), jnp.stack([h[0, :2].mean(0), h[1].mean(0)]))
    inner = jnp.asarray([[0, 1, 1, 0], [0, 0, 0, 1]])  # a text inside a packed row
    np.testing.assert_allclose(heads.pool(h, inner, "cls"), jnp.stack([h[0, 1], h[1, 3]]))
    np.testing.assert_allclose(heads.pool(h, inner, "last"), jnp.stack([h[0, 2], h[1, 3]]))


def build(cfg, head, **kw):
    cfg.model.vocab_size = 50
    return heads.TaskModel(
        models.build(cfg.model, nnx.Rngs(0)), head=head, num_labels=3, rngs=nnx.Rngs(1), **kw
    )


def test_classification_ignores_padding_content():
    model = build(bert_mlm.get_config("smoke"), "classification", pooling="mean", dropout=0.0)
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 50, (2, 12)).astype(np.int32)
    mask = (np.arange(12) < np.array([[7], [12]])).astype(np.int32)
    out = [
        model({"inputs": jnp.asarray(np.where(mask, ids, fill)), "input_mask": jnp.asarray(mask)})["logits"]
        for fill in (0, 9)
    ]
    assert out[0].shape == (2, 3)
    np.testing.assert_allclose(out[0], out[1], atol=1e-5)


def test_heads_fit_their_families():
    with pytest.raises(ValueError, match="task.pooling='last'"):
        build(shakespeare_char.get_config("tiny"), "classification", pooling="cls")
    with pytest.raises(ValueError, match="encoder-decoder models fine-tune text-to-text"):
        build(t5_span.get_config("smoke"), "classification")
    model = build(shakespeare_char.get_config("tiny"), "token_classification", pooling="last")
    out = model({"inputs": jnp.ones((2, 8), jnp.int32), "input_mask": jnp.ones((2, 8), jnp.int32)})
    assert out["logits"].shape == (2, 8, 3)
    with pytest.raises(ValueError, match="task.pooling='last'"):
        build(shakespeare_char.get_config("tiny"), "regression", pooling="mean")


@pytest.mark.parametrize(
    "family,pooling", [("encoder", "mean"), ("encoder", "cls"), ("decoder", "last")], ids="-".join
)
def test_packed_texts_score_as_padded_rows(family, pooling):
    """task.pack: texts packed into shared rows (attention within each, positions restarting) give each
    text the logits it gets in a padded row of its own."""
    cfg = bert_mlm.get_config("smoke") if family == "encoder" else shakespeare_char.get_config("tiny")
    model = build(cfg, "classification", pooling=pooling, dropout=0.0)
    rng = np.random.default_rng(0)
    mask = (np.arange(12) < rng.integers(2, 13, (6, 1))).astype(np.int32)
    padded = {
        "inputs": rng.integers(5, 50, (6, 12)).astype(np.int32) * mask,
        "input_mask": mask,
        "segments": np.zeros((6, 12), np.int32),
        "labels": np.arange(6, dtype=np.int32) % 3,
        "weights": np.ones(6, np.float32),
    }
    packed = task_pipeline.PackTexts(pad_id=0).map(padded)
    assert packed["inputs"].shape[0] < 6 and packed["input_mask"].sum() == mask.sum()
    logits = [model(jax.tree.map(jnp.asarray, b))["logits"] for b in (padded, packed)]
    assert logits[1].shape == (6, 3)
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-5)
    # a regression head pools the same way: one score a text
    model.kind, model.head = "regression", build(cfg, "regression", pooling=pooling, dropout=0.0).head
    scores = [model(jax.tree.map(jnp.asarray, b))["scores"] for b in (padded, packed)]
    assert scores[1].shape == (6,)
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
