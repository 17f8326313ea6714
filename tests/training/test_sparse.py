"""The sparse word-vector step gives the generic (dense) step's parameters and optimizer state."""

import jax
import numpy as np
import pytest
from flax import nnx

from experiments.configs import word2vec
from lmjax.errors import InputError
from lmjax.training import loop, objectives, optim, pretrain, sparse

V, B, K, W = 40, 16, 3, 4


def batch(kind: str, rng: np.random.Generator, rows: int = B) -> dict:
    """Few distinct words, so that rows repeat within a batch; the last row is padding (weight 0)."""
    words = lambda *shape: rng.integers(0, 12, shape).astype(np.int32)  # noqa: E731
    weights = np.ones(rows, np.float32)
    weights[-1] = 0.0
    if kind == "glove":
        counts = rng.uniform(0.5, 20.0, rows).astype(np.float32)
        return {"rows": words(rows), "cols": words(rows), "counts": counts, "weights": weights}
    out = {"targets": words(rows), "negatives": words(rows, K), "weights": weights}
    if kind == "cbow":
        return out | {
            "inputs": words(rows, W),
            "input_mask": (rng.random((rows, W)) < 0.7).astype(np.float32),
        }
    return out | {"inputs": words(rows)}


def engine_parts(kind: str, num_steps: int, updates: int = 1, share: int = 1):
    config = word2vec.get_config("smoke" if kind == "skipgram" else f"smoke_{kind}")
    config.model.update(vocab_size=V, share_negatives=share)
    config.optim.updates_per_step = updates
    config.train.num_steps = num_steps
    objective = objectives.get(kind)
    model = pretrain.models.build(config.model, nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optim.make(config.optim, num_steps * updates)  # the dense reference counts updates as steps
    state = loop.TrainState(
        step=jax.numpy.zeros((), jax.numpy.int32),
        params=params,
        opt_state=tx.init(params),
        rng=jax.random.PRNGKey(0),
    )
    loss = objective.make_loss(config.train)
    dense = jax.jit(pretrain.make_train_step(pretrain.make_loss_fn(graphdef, loss), tx, 1))
    return config, state, dense, jax.jit(sparse.make_train_step(graphdef, loss, config.optim, num_steps))


@pytest.mark.parametrize(
    "kind, share", [("skipgram", 1), ("skipgram", 4), ("cbow", 1), ("cbow", 8), ("glove", 1)]
)
def test_sparse_updates_equal_the_dense_step(kind, share):
    """3 sparse steps of 2 updates each = 6 dense steps on the same halves: parameters, AdaGrad's sums,
    the schedule's count, losses (word2vec also with groups sharing noise words)."""
    rng = np.random.default_rng(0)
    batches = [batch(kind, rng) for _ in range(6)]
    _, dense_state, dense_step, _ = engine_parts(kind, num_steps=3, updates=2, share=share)
    _, sparse_state, _, sparse_step = engine_parts(kind, num_steps=3, updates=2, share=share)
    dense_losses = []
    for b in batches:
        dense_state, m = dense_step(dense_state, b)
        dense_losses.append(float(m["loss"]))
    for i in range(3):
        pair = {k: np.concatenate([batches[2 * i][k], batches[2 * i + 1][k]]) for k in batches[0]}
        sparse_state, m = sparse_step(sparse_state, pair)
        # the step's loss: both updates' examples together (each update's loss at the parameters it saw)
        w = [batches[2 * i + j]["weights"].sum() for j in range(2)]
        expected = (dense_losses[2 * i] * w[0] + dense_losses[2 * i + 1] * w[1]) / sum(w)
        np.testing.assert_allclose(float(m["loss"]), expected, rtol=1e-5)
    changed = jax.tree.map(
        lambda a, b: not np.array_equal(a, b), dense_state.params, engine_parts(kind, 3, 2)[1].params
    )
    assert all(jax.tree.leaves(changed))  # every table moved
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        sparse_state.params,
        dense_state.params,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9),
        sparse_state.opt_state,
        dense_state.opt_state,
    )


@pytest.mark.parametrize("kind", ["skipgram", "cbow"])
def test_a_group_scores_its_first_examples_noise_words(kind):
    """share_negatives=4 scores what each example scores alone (share 1) given its group's first noise
    words."""
    b = batch(kind, np.random.default_rng(1))
    shared = pretrain.models.build(engine_parts(kind, 1, share=4)[0].model, nnx.Rngs(0))
    alone = pretrain.models.build(engine_parts(kind, 1)[0].model, nnx.Rngs(0))
    alone.context_VD[...] = shared.embed_VD[...][::-1]  # non-zero output vectors, the same in both
    shared.context_VD[...] = alone.context_VD[...]
    assert shared.lookups(b)["context_VD"].shape == (B + B // 4 * K,)
    firsts = b | {"negatives": np.repeat(b["negatives"][::4], 4, axis=0)}
    got, want = shared(b), alone(firsts)
    assert not np.allclose(got["neg_BK"], alone(b)["neg_BK"])  # the sharing changed the noise words
    for key in ("pos_B", "neg_BK"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-8)


def test_settings_the_sparse_step_cannot_take_are_refused():
    config = word2vec.get_config("smoke")
    config.optim.name = "adamw"
    with pytest.raises(InputError, match="optim.name='adamw': word vectors train with sparse SGD or AdaGrad"):
        objectives.check(config)
    config = word2vec.get_config("smoke")
    config.model.family, config.train.objective, config.optim.updates_per_step = "decoder", "causal_lm", 2
    with pytest.raises(InputError, match="optim.updates_per_step=2 applies to word vectors' sparse step"):
        objectives.check(config)
    config = word2vec.get_config("smoke")
    config.model.share_negatives = 3
    per_update = config.data.batch_size // config.optim.updates_per_step
    with pytest.raises(InputError, match=f"model.share_negatives=3 must divide an update's {per_update} "):
        pretrain.setup(config, jax.devices()[:1])
