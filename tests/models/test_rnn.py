"""LSTM / GRU layers against a step-by-step NumPy reference; the recurrent LM is causal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.models.rnn import Recurrent, RecurrentLM


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def reference(layer, x, reverse=False):
    W, U = np.asarray(layer.input_DG[...], np.float64), np.asarray(layer.hidden_HG[...], np.float64)
    b, bh = np.asarray(layer.bias_G[...], np.float64), np.asarray(layer.hidden_bias_G[...], np.float64)
    B, L, _ = x.shape
    H = layer.hidden
    h, c, out = np.zeros((B, H)), np.zeros((B, H)), np.zeros((B, L, H))
    for t in reversed(range(L)) if reverse else range(L):
        if layer.cell == "lstm":
            i, f, g, o = np.split(x[:, t] @ W + b + h @ U + bh, 4, axis=-1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            xr, xz, xn = np.split(x[:, t] @ W + b, 3, axis=-1)
            hr, hz, hn = np.split(h @ U + bh, 3, axis=-1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            h = (1 - z) * np.tanh(xn + r * hn) + z * h
        out[:, t] = h
    return out


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("reverse", [False, True])
def test_cell_matches_step_by_step_reference(cell, reverse):
    layer = Recurrent(5, 7, cell=cell, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(3, 6, 5))
    np.testing.assert_allclose(
        layer(jnp.asarray(x, jnp.float32), reverse=reverse),
        reference(layer, x, reverse),
        rtol=1e-4,
        atol=1e-5,
    )


def test_lstm_matches_torch():
    torch = pytest.importorskip("torch")
    layer = Recurrent(4, 6, cell="lstm", rngs=nnx.Rngs(1))
    ref = torch.nn.LSTM(4, 6, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(torch.tensor(np.asarray(layer.input_DG[...]).T))
        ref.weight_hh_l0.copy_(torch.tensor(np.asarray(layer.hidden_HG[...]).T))
        ref.bias_ih_l0.copy_(torch.tensor(np.asarray(layer.bias_G[...])))
        ref.bias_hh_l0.copy_(torch.tensor(np.asarray(layer.hidden_bias_G[...])))
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    np.testing.assert_allclose(
        layer(jnp.asarray(x)), ref(torch.tensor(x))[0].detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_recurrent_lm_is_causal():
    model = RecurrentLM(
        vocab_size=11,
        d_model=8,
        num_layers=2,
        cell="lstm",
        dropout=0.0,
        tie_embeddings=True,
        rngs=nnx.Rngs(0),
    )
    x = model.embed(jnp.arange(1, 7)[None])
    jac = jax.jacobian(lambda x: model.hidden(x)[0, 2].sum())(x)  # output at t=2 w.r.t. every input
    assert np.abs(jac[0, 3:]).max() == 0 and np.abs(jac[0, :3]).max() > 0
