import jax
import numpy as np
from flax import nnx

from experiments.configs import shakespeare_char
from lmjax import models
from lmjax.training import optim


def test_schedule_warms_up_then_decays_to_min():
    c = shakespeare_char.get_config().optim
    sched = optim.schedule(c, 2000)
    np.testing.assert_allclose(
        [sched(0), sched(50), sched(100), sched(2000)], [0.0, 5e-4, 1e-3, 1e-4], rtol=1e-5
    )
    assert sched(1000) < sched(500) < sched(100)


def test_weight_decay_mask_skips_norms_biases_and_embeddings():
    c = shakespeare_char.get_config("tiny")
    c.model.update(vocab_size=11, use_bias=True, tie_embeddings=False, positions="learned")
    params = nnx.state(models.build(c.model, nnx.Rngs(0)), nnx.Param)
    flat = {".".join(map(str, path)): v.value for path, v in optim.decay_mask(params, False).flat_state()}
    assert flat["blocks.0.mlp.up.kernel"] and flat["blocks.0.attn.query_DHK"] and flat["head_DV"]
    assert (
        not flat["blocks.0.mlp.up.bias"]
        and not flat["blocks.0.attn_norm.scale"]
        and not flat["blocks.0.attn.key_bias_GK"]
    )
    assert not flat["embed_VD"] and not flat["pos_embed_LD"]
    with_embed = {".".join(map(str, p)): v.value for p, v in optim.decay_mask(params, True).flat_state()}
    assert with_embed["embed_VD"] and with_embed["pos_embed_LD"]


def test_masked_parameters_get_no_decay():
    """With zero gradients AdamW changes only the decayed parameters."""
    c = shakespeare_char.get_config("tiny")
    c.model.vocab_size = 11
    c.optim.update(warmup_steps=0, weight_decay=0.5, decay_embeddings=False)
    params = nnx.state(models.build(c.model, nnx.Rngs(0)), nnx.Param)
    tx = optim.make(c.optim, 10)
    zeros = jax.tree.map(np.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    moved = {".".join(map(str, p)): bool(np.any(v.value != 0)) for p, v in updates.flat_state()}
    assert moved["blocks.0.mlp.up.kernel"] and not moved["embed_VD"] and not moved["final_norm.scale"]


def fine_tune_params(c):
    from lmjax.models import heads

    c.model.vocab_size = 11
    return nnx.state(
        heads.TaskModel(
            models.build(c.model, nnx.Rngs(0)),
            head="classification",
            num_labels=2,
            pooling="last",
            rngs=nnx.Rngs(1),
        ),
        nnx.Param,
    )


def first_update_sizes(c, params):
    """Adam's first update is learning rate x sign(gradient): its size is each parameter's learning rate."""
    tx = optim.make(c.optim, 10, c.model)
    ones = jax.tree.map(np.ones_like, params)
    updates, state = tx.update(ones, tx.init(params), params)
    return {
        optim.path_str(p): float(np.abs(u).max()) for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]
    }, state


def test_layer_decay_head_rate_and_freezing():
    c = shakespeare_char.get_config("tiny")
    c.model.num_layers = 3
    c.optim.update(
        warmup_steps=0,
        learning_rate=1e-3,
        min_learning_rate=1e-3,
        weight_decay=0.0,
        layer_decay=0.5,
        head_learning_rate=1e-2,
        freeze="backbone/blocks/2/",
    )
    sizes, opt_state = first_update_sizes(c, fine_tune_params(c))

    def get(prefix):
        return {v for k, v in sizes.items() if k.startswith(prefix)}

    np.testing.assert_allclose(list(get("backbone/embed_VD")), [1e-3 * 0.5**4], rtol=1e-3)
    np.testing.assert_allclose(list(get("backbone/blocks/0/")), [1e-3 * 0.5**3], rtol=1e-3)
    np.testing.assert_allclose(list(get("backbone/blocks/1/")), [1e-3 * 0.5**2], rtol=1e-3)
    assert get("backbone/blocks/2/") == {0.0}
    np.testing.assert_allclose(list(get("backbone/final_norm")), [1e-3], rtol=1e-3)
    np.testing.assert_allclose(list(get("head/")), [1e-2], rtol=1e-3)
    # Frozen parameters keep no Adam moments.
    moments = [optim.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
    assert not any("blocks/2/" in m for m in moments) and any("blocks/1/" in m for m in moments)


def test_a_backbone_at_rate_zero_leaves_the_head_its_own_rate():
    c = shakespeare_char.get_config("tiny")
    c.optim.update(warmup_steps=0, learning_rate=0.0, min_learning_rate=0.0, weight_decay=0.0)
    c.optim.head_learning_rate = 1e-2
    sizes, _ = first_update_sizes(c, fine_tune_params(c))
    assert {v for k, v in sizes.items() if k.startswith("backbone/")} == {0.0}
    np.testing.assert_allclose([v for k, v in sizes.items() if k.startswith("head/")], 1e-2, rtol=1e-3)


def test_linear_schedule_and_plain_sgd_as_word2vec():
    from experiments.configs import word2vec

    c = word2vec.get_config().optim
    sched = optim.schedule(c, 1000)
    np.testing.assert_allclose(
        [sched(0), sched(500), sched(1000)],
        [c.learning_rate, (c.learning_rate + c.min_learning_rate) / 2, c.min_learning_rate],
        rtol=1e-5,
    )
    tx = optim.make(c, 1000)
    params = {"w": jax.numpy.ones(3)}
    updates, _ = tx.update({"w": jax.numpy.full(3, 2.0)}, tx.init(params), params)
    np.testing.assert_allclose(
        updates["w"], -2.0 * c.learning_rate, rtol=1e-6
    )  # no clipping, no decay, no moments


def test_adagrad_on_the_batch_mean_makes_glove_c_per_entry_updates():
    from experiments.configs import word2vec

    c = word2vec.get_config("glove").optim
    B = word2vec.get_config("glove").data.batch_size
    tx = optim.make(c, 100)
    params = {"w": jax.numpy.zeros(2)}
    state = tx.init(params)
    G = np.array([3.0, 0.5])  # the summed (per-entry) gradient; the step sees the mean G / B
    u1, state = tx.update({"w": jax.numpy.asarray(G / B)}, state, params)
    u2, _ = tx.update({"w": jax.numpy.asarray(G / B)}, state, params)
    lr = c.learning_rate  # glove.c's per-entry AdaGrad, sum of squares from 1:
    np.testing.assert_allclose(u1["w"], -lr * G / np.sqrt(1 + G**2), rtol=1e-4)
    np.testing.assert_allclose(u2["w"], -lr * G / np.sqrt(1 + 2 * G**2), rtol=1e-4)
