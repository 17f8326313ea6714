"""ELMo: the backward LM sees only the future, the forward LM only the past; the scalar mix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models.elmo import ELMo, ScalarMix, parse_filters


def model():
    return ELMo(
        vocab_size=13,
        d_model=8,
        num_layers=2,
        char_dim=4,
        char_filters="1:4,2:4",
        highway_layers=1,
        dropout=0.0,
        rngs=nnx.Rngs(0),
    )


def test_backward_lm_sees_only_the_future_and_forward_only_the_past():
    m = model()
    chars = jnp.asarray(np.random.default_rng(0).integers(1, 259, (1, 6, 5)))
    x = m.tokens(chars)

    def directions(x):
        states = []
        for stack, reverse in ((m.forward_layers, False), (m.backward_layers, True)):
            h = x
            for j, layer in enumerate(stack):
                h = layer(h, reverse=reverse) + (h if j else 0)
            states.append(h)
        return states

    t = 3
    jac_f = jax.jacobian(lambda x: directions(x)[0][0, t].sum())(x)
    jac_b = jax.jacobian(lambda x: directions(x)[1][0, t].sum())(x)
    assert np.abs(jac_b[0, :t]).max() == 0 and np.abs(jac_b[0, t:]).max() > 0  # backward: tokens t.. only
    assert np.abs(jac_f[0, t + 1 :]).max() == 0 and np.abs(jac_f[0, : t + 1]).max() > 0
    # The model's own outputs: changing token 0's characters leaves backward logits at t >= 1 unchanged.
    other = chars.at[0, 0].set(7)
    np.testing.assert_array_equal(m(chars)["backward_logits"][0, 1:], m(other)["backward_logits"][0, 1:])
    assert not np.allclose(m(chars)["logits"][0, 1:], m(other)["logits"][0, 1:])


def test_features_and_scalar_mix():
    m = model()
    chars = jnp.asarray(np.random.default_rng(0).integers(1, 259, (2, 4, 5)))
    h = m.features(chars)
    assert h.shape == (3, 2, 4, 16)
    mix = ScalarMix(3, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(mix(h), h.mean(0), rtol=1e-5, atol=1e-7)  # s = 0, gamma = 1: the mean
    mix.weights_J[...] = jnp.array([0.0, 1.0, 2.0])
    mix.gamma[...] = jnp.array(0.5)
    w = np.exp([0, 1, 2]) / np.exp([0, 1, 2]).sum()
    np.testing.assert_allclose(mix(h), 0.5 * np.tensordot(w, np.asarray(h), 1), rtol=1e-5)


def test_bad_filters_fail_with_one_line():
    with pytest.raises(ValueError, match="not a list of width:count pairs"):
        parse_filters("3x64")
