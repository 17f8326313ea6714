import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models import layers

SPEC = layers.Spec(d_model=16, num_heads=4, head_dim=4, d_ff=32, num_layers=2)


def test_rotary_scores_depend_only_on_relative_position():
    q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 8))
    k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 8))

    def score(i, j):
        return float(
            jnp.sum(layers.apply_rotary(q, jnp.array([[i]])) * layers.apply_rotary(k, jnp.array([[j]])))
        )

    np.testing.assert_allclose(score(3, 1), score(10, 8), rtol=1e-5)
    assert abs(score(3, 1) - score(3, 2)) > 1e-4


def test_sinusoidal_table_matches_formula():
    table = np.asarray(layers.sinusoidal_table(6, 8))
    pos, i = 4, 2
    np.testing.assert_allclose(table[pos, 2 * i], np.sin(pos / 10000 ** (2 * i / 8)), rtol=1e-5)
    np.testing.assert_allclose(table[pos, 2 * i + 1], np.cos(pos / 10000 ** (2 * i / 8)), rtol=1e-5)


def test_norms_normalise_in_fp32():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 8)) * 5 + 3
    y = np.asarray(layers.Norm(8, kind="layernorm", rngs=nnx.Rngs(0))(x))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-3)
    rms = layers.Norm(8, kind="rmsnorm", eps=0.0, rngs=nnx.Rngs(0))
    assert rms.bias is None
    np.testing.assert_allclose(np.sqrt(np.mean(np.square(np.asarray(rms(x))), -1)), 1, rtol=1e-5)


def test_t5_relative_buckets_match_the_reference_values():
    rel = jnp.arange(-200, 201)
    bi = np.asarray(layers.relative_bucket(rel, bidirectional=True, num_buckets=32, max_distance=128))
    uni = np.asarray(layers.relative_bucket(rel, bidirectional=False, num_buckets=32, max_distance=128))
    # Exact buckets for small distances; log-spaced after; saturating at max_distance.
    assert list(bi[200 + np.arange(0, 8)]) == [0] + [16 + i for i in range(1, 8)] and bi[200 - 3] == 3
    assert bi[200 + 128] == bi[200 + 200] == 31 and bi[0] == 15
    assert uni[200 + 5] == 0 and uni[200 - 5] == 5 and uni[0] == 31
    assert np.all(np.diff(uni[:201]) <= 0)


@pytest.mark.parametrize(
    "variant",
    [
        dict(),
        dict(norm="rmsnorm", norm_position="post", activation="swiglu"),
        dict(activation="geglu", use_bias=False, positions="rotary"),
    ],
)
def test_block_variants_run_and_carry_logical_axes(variant):
    import dataclasses

    spec = dataclasses.replace(SPEC, **variant)
    block = layers.Block(spec, cross_attention=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16))
    enc = jax.random.normal(jax.random.PRNGKey(1), (2, 7, 16))
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    y, _ = block(x, positions_BL=positions, mask=layers.Mask(causal=True), enc_BSD=enc)
    assert y.shape == x.shape and np.all(np.isfinite(np.asarray(y)))
    for path, var in nnx.state(block, nnx.Param).flat_state():
        assert len(var.get_metadata()["axes"]) == var.value.ndim, path


def _gelu(x, tanh=False):
    import math

    if tanh:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


@pytest.mark.parametrize(
    "activation, reference",
    [
        ("gelu", lambda up, gate: _gelu(up)),
        ("gelu_tanh", lambda up, gate: _gelu(up, tanh=True)),
        ("relu", lambda up, gate: np.maximum(up, 0)),
        ("swiglu", lambda up, gate: up / (1 + np.exp(-up)) * gate),  # SiLU(x W) * (x V)   (Shazeer 2020)
        ("geglu", lambda up, gate: _gelu(up, tanh=True) * gate),
    ],
)
def test_mlp_activations_match_numpy(activation, reference):
    import dataclasses

    mlp = layers.MLP(dataclasses.replace(SPEC, activation=activation), rngs=nnx.Rngs(0))
    for dense in (
        mlp.up,
        mlp.gate,
        mlp.down,
    ):  # non-zero biases, weights large enough to leave the linear range
        if dense is not None:
            dense.kernel[...] = jax.random.normal(
                jax.random.PRNGKey(dense.kernel.value.size), dense.kernel.value.shape
            )
            dense.bias[...] = jax.random.normal(jax.random.PRNGKey(3), dense.bias.value.shape)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (2, 5, 16)), np.float64)

    def w(dense):
        return (np.asarray(dense.kernel.value, np.float64), np.asarray(dense.bias.value, np.float64))

    up = x @ w(mlp.up)[0] + w(mlp.up)[1]
    gate = x @ w(mlp.gate)[0] + w(mlp.gate)[1] if mlp.gate is not None else None
    want = reference(up, gate) @ w(mlp.down)[0] + w(mlp.down)[1]
    np.testing.assert_allclose(np.asarray(mlp(jnp.asarray(x, jnp.float32))), want, rtol=2e-4, atol=2e-4)
