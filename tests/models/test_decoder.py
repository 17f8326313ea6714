import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import config as base_config
from lmjax import models


def tiny(positions="learned", **kw):
    c = base_config.base().model
    size = dict(
        vocab_size=19, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=12, positions=positions
    )
    c.update(size | kw)
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


def _gqa(num_kv_heads, **kw):
    return tiny("rotary", num_heads=4, num_kv_heads=num_kv_heads, use_bias=False, activation="swiglu", **kw)


def test_grouped_query_attention_equals_attention_with_each_kv_head_repeated_over_its_group():
    gqa, mha = _gqa(2, rope_theta=1e5), _gqa(0, rope_theta=1e5)
    assert gqa.blocks[0].attn.key_DHK.shape == (16, 2, 4) and mha.blocks[0].attn.key_DHK.shape == (16, 4, 4)
    for g_block, m_block in zip(gqa.blocks, mha.blocks, strict=True):  # MHA whose K/V heads come in pairs
        for name in ("query_DHK", "out_HKD"):
            getattr(m_block.attn, name)[...] = getattr(g_block.attn, name)[...]
        for name in ("key_DHK", "value_DHK"):
            getattr(m_block.attn, name)[...] = jnp.repeat(getattr(g_block.attn, name)[...], 2, axis=1)
        for name in ("attn_norm", "mlp_norm", "mlp"):
            nnx.update(getattr(m_block, name), nnx.state(getattr(g_block, name)))
    nnx.update(mha.final_norm, nnx.state(gqa.final_norm))
    mha.embed_VD[...] = gqa.embed_VD[...]
    tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 12), 0, 19)
    np.testing.assert_allclose(np.asarray(gqa(tokens)), np.asarray(mha(tokens)), rtol=1e-5, atol=1e-6)


def test_grouped_query_attention_through_the_fused_api_equals_the_written_out_attention():
    model = _gqa(1)  # multi-query attention
    tokens = jax.random.randint(jax.random.PRNGKey(3), (2, 12), 0, 19)
    mask = jnp.asarray(np.arange(12)[None] < np.array([[12], [7]]))
    written_out = np.asarray(model(tokens, mask_BL=mask))
    for block in model.blocks:
        block.attn.implementation = "xla"
    fused = np.asarray(model(tokens, mask_BL=mask))
    np.testing.assert_allclose(fused[0], written_out[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused[1, :7], written_out[1, :7], rtol=1e-5, atol=1e-5)


def test_num_kv_heads_equal_to_num_heads_is_the_plain_model():
    plain, same = tiny("rotary"), tiny("rotary", num_kv_heads=2)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(plain), nnx.state(same))
    tokens = jax.random.randint(jax.random.PRNGKey(4), (2, 12), 0, 19)
    np.testing.assert_array_equal(np.asarray(plain(tokens)), np.asarray(same(tokens)))


def test_rope_theta_changes_rotary_models_only():
    tokens = jax.random.randint(jax.random.PRNGKey(5), (1, 12), 0, 19)
    assert not np.allclose(tiny("rotary")(tokens), tiny("rotary", rope_theta=1e5)(tokens))
    np.testing.assert_array_equal(tiny("learned")(tokens), tiny("learned", rope_theta=1e5)(tokens))


def test_bad_kv_head_counts_fail_clearly():
    with pytest.raises(ValueError, match="model.num_kv_heads=3 does not divide model.num_heads=4"):
        tiny("rotary", num_heads=4, num_kv_heads=3)
