import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models import layers


def test_einsum_attention_path_matches_dot_product_attention():
    """The dropout path (used only for attention dropout) computes the same attention at rate 0."""
    attn = layers.MultiHeadAttention(16, 4, use_bias=True, rotary=False, attention_dropout=0.0, rngs=nnx.Rngs(0))
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, 5, 4, 4)) for i in range(3))
    mask = jnp.asarray(np.random.default_rng(0).random((2, 1, 5, 5)) > 0.3) | jnp.eye(5, dtype=bool)
    for is_causal in (False, True):
        ref = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
        got = attn._attend_with_dropout(q, k, v, mask, is_causal, nnx.Rngs(dropout=0))
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))
    score = lambda i, j: float(jnp.sum(layers.apply_rotary(q, jnp.array([[i]])) * layers.apply_rotary(k, jnp.array([[j]]))))
    np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-4


def test_sinusoidal_table_matches_formula():
    table = np.asarray(layers.sinusoidal_table(6, 8))
    pos, i = 4, 2
    np.testing.assert_allclose(table[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 8)), rtol=1e-5)
    np.testing.assert_allclose(table[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 8)), rtol=1e-5)


def test_layernorm_normalises_in_fp32():
    norm = layers.LayerNorm(8, use_bias=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8)) * 5 + 3
    y = np.asarray(norm(x))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)


def test_parameters_carry_logical_axes():
    block = layers.Block(16, 4, 32, use_bias=True, rotary=False, dropout=0.0, attention_dropout=0.0, num_layers=2,
                         rngs=nnx.Rngs(0))
    for path, var in nnx.state(block, nnx.Param).flat_state():
        assert len(var.get_metadata()["axes"]) == var.value.ndim, path
