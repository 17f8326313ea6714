import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import config as base_config
from lmjax import models


def tiny(positions="learned", **kw):
    c = base_config.base().model
    c.update(
        vocab_size=19, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=12, positions=positions, **kw
    )
    return models.build(c, nnx.Rngs(0))


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rotary", "relative"])
def test_causal_by_gradient(positions):
    """d logits[t] / d input[s] is exactly zero for every s > t, and not zero for s <= t."""
    model = tiny(positions)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (1, 12), 0, 19)
    x_BLD = model.embed(tokens)
    for t in (0, 5, 11):
        grad_BLD = jax.grad(lambda x, t=t: model.from_embeddings(x)[0, t].sum())(x_BLD)
        per_pos = np.abs(np.asarray(grad_BLD[0])).sum(-1)
        assert np.all(per_pos[t + 1 :] == 0.0), (t, per_pos)
        assert np.all(per_pos[: t + 1] > 0.0), (t, per_pos)


def test_logits_shape_and_dtype():
    logits = tiny()(jnp.zeros((3, 7), jnp.int32))
    assert logits.shape == (3, 7, 19) and logits.dtype == jnp.float32


def test_sequence_longer_than_positions_fails_clearly():
    with pytest.raises(ValueError, match=r"longer than the model's positions \(model.max_len=12\)"):
        tiny()(jnp.zeros((1, 13), jnp.int32))


def test_tied_head_has_no_extra_matrix():
    tied, untied = tiny(tie_embeddings=True), tiny(tie_embeddings=False)

    def count(m):
        return sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))

    assert count(untied) - count(tied) == 16 * 19


def test_dropout_is_random_in_training_and_off_in_evaluation():
    model = tiny(dropout=0.5)
    tokens = jnp.ones((1, 8), jnp.int32)
    a = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=0))
    b = model(tokens, deterministic=False, rngs=nnx.Rngs(dropout=1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(model(tokens), model(tokens))


def test_unknown_positions_fail_clearly():
    with pytest.raises(ValueError, match="model.positions='alibi' is unknown"):
        tiny("alibi")
