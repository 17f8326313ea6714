import jax
import numpy as np
from flax import nnx

from experiments.configs import shakespeare_char
from lmjax import models, optim


def test_schedule_warms_up_then_decays_to_min():
    c = shakespeare_char.get_config().optim
    sched = optim.schedule(c, 2000)
    np.testing.assert_allclose([sched(0), sched(50), sched(100), sched(2000)], [0.0, 5e-4, 1e-3, 1e-4], rtol=1e-5)
    assert sched(1000) < sched(500) < sched(100)


def test_weight_decay_mask_skips_norms_biases_and_embeddings():
    c = shakespeare_char.get_config("tiny")
    c.model.update(vocab_size=11, use_bias=True, tie_embeddings=False, positions="learned")
    params = nnx.state(models.build(c.model, nnx.Rngs(0)), nnx.Param)
    flat = {".".join(map(str, path)): v.value for path, v in optim.decay_mask(params, False).flat_state()}
    assert flat["blocks.0.mlp.up.kernel"] and flat["blocks.0.attn.query_DHK"] and flat["head_DV"]
    assert not flat["blocks.0.mlp.up.bias"] and not flat["blocks.0.attn_norm.scale"] and not flat["blocks.0.attn.bias_3HK"]
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
