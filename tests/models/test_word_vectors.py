"""word2vec and GloVe models with their objectives, against direct NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lmjax.models import GloVe, Word2Vec
from lmjax.training import losses


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_negative_sampling_loss_and_gradients_match_numpy():
    V, D, B, K = 20, 6, 5, 3
    model = Word2Vec(V, D, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    model.context_VD[...] = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
    batch = {
        "inputs": rng.integers(3, V, B),
        "targets": rng.integers(3, V, B),
        "negatives": rng.integers(3, V, (B, K)),
        "weights": np.array([1, 1, 1, 1, 0], np.float32),
    }
    graphdef, params = nnx.split(model)

    def loss(params):
        return losses.negative_sampling(nnx.merge(graphdef, params)(batch), batch)[0]

    value, grads = jax.value_and_grad(loss)(params)
    E, C = np.asarray(model.embed_VD[...], np.float64), np.asarray(model.context_VD[...], np.float64)
    want, gE, gC = 0.0, np.zeros_like(E), np.zeros_like(C)
    for b in range(B):
        if not batch["weights"][b]:
            continue
        v, o = E[batch["inputs"][b]], C[batch["targets"][b]]
        want -= np.log(sigmoid(v @ o))
        gE[batch["inputs"][b]] += (sigmoid(v @ o) - 1) * o
        gC[batch["targets"][b]] += (sigmoid(v @ o) - 1) * v
        for n in batch["negatives"][b]:
            want -= np.log(sigmoid(-v @ C[n]))
            gE[batch["inputs"][b]] += sigmoid(v @ C[n]) * C[n]
            gC[n] += sigmoid(v @ C[n]) * v
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(grads["embed_VD"][...], gE, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["context_VD"][...], gC, rtol=1e-4, atol=1e-6)


def test_cbow_uses_the_mean_of_the_window():
    V, D = 10, 4
    model = Word2Vec(V, D, rngs=nnx.Rngs(0))
    model.context_VD[...] = jnp.ones((V, D))
    batch = {
        "inputs": np.array([[3, 4, 5, 6]]),
        "input_mask": np.array([[1, 1, 0, 1]], np.float32),
        "targets": np.array([7]),
        "negatives": np.array([[8]]),
    }
    E = np.asarray(model.embed_VD[...])
    out = model(batch)
    np.testing.assert_allclose(out["pos_B"], [(E[3] + E[4] + E[6]).sum() / 3], rtol=1e-5)


def test_glove_loss_matches_a_dense_reference():
    V, D = 7, 3
    model = GloVe(V, D, rngs=nnx.Rngs(1))
    rng = np.random.default_rng(0)
    model.bias_V[...] = jnp.asarray(rng.normal(size=V), jnp.float32)
    X = rng.integers(0, 4, (V, V)) * rng.random((V, V)) * 150  # some entries above x_max, many zero
    rows, cols = np.nonzero(X)
    batch = {
        "rows": rows,
        "cols": cols,
        "counts": X[rows, cols].astype(np.float32),
        "weights": np.ones(len(rows), np.float32),
    }
    loss = losses.glove(model(batch), batch)[0]
    W, Wc = np.asarray(model.embed_VD[...]), np.asarray(model.context_VD[...])
    b, bc = np.asarray(model.bias_V[...]), np.asarray(model.context_bias_V[...])
    err = W @ Wc.T + b[:, None] + bc[None, :] - np.log(np.where(X > 0, X, 1))
    f = np.where(X > 0, np.minimum(1, (X / 100) ** 0.75), 0)
    np.testing.assert_allclose(loss, 0.5 * np.sum(np.where(X > 0, f * err**2, 0)), rtol=1e-5)
    np.testing.assert_allclose(model.vectors(), W + Wc)
