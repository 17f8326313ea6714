import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import bert_mlm, shakespeare_char, t5_span
from lmjax import models
from lmjax.models import heads


def test_pooling_reads_only_real_tokens():
    h = jnp.arange(2 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 3)
    mask = jnp.asarray([[1, 1, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(heads.pool(h, mask, "cls"), h[:, 0])
    np.testing.assert_allclose(heads.pool(h, mask, "last"), jnp.stack([h[0, 1], h[1, 3]]))
    np.testing.assert_allclose(heads.pool(h, mask, "mean"), jnp.stack([h[0, :2].mean(0), h[1].mean(0)]))


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
