import numpy as np
from flax import nnx

from lmjax import config as base_config
from lmjax import metrics, models


def model_config(**kw):
    c = base_config.base().model
    c.update(dict(vocab_size=50, num_layers=2, num_heads=2, d_model=16, d_ff=32, use_bias=False) | kw)
    return c


def matmul_params(c):
    """Parameters that take part in matrix products, counted from the built model."""
    params = nnx.state(models.build(c, nnx.Rngs(0)), nnx.Param).flat_state()
    total = 0
    for path, var in params:
        name = str(path[-1])
        if var.value.ndim >= 2 and "embed" not in name or name == "embed_VD":  # the tied head
            total += var.value.size
    return total


def test_decoder_and_encoder_flops_are_6n_plus_attention():
    for family, extra in (("decoder", {}), ("encoder", dict(encoder_heads="mlm", type_vocab_size=0))):
        c = model_config(family=family, **extra)
        flops, tokens = metrics.train_flops(c, seq_len=8)
        assert tokens == 8
        np.testing.assert_allclose(flops, 6 * 8 * matmul_params(c) + 12 * 2 * 16 * 8 * 8)


def test_grouped_query_attention_counts_its_smaller_key_value_projections():
    c = model_config(num_heads=4, num_kv_heads=1, positions="rotary", activation="swiglu")
    flops, _ = metrics.train_flops(c, seq_len=8)
    np.testing.assert_allclose(flops, 6 * 8 * matmul_params(c) + 12 * 2 * 16 * 8 * 8)
    assert (
        flops < metrics.train_flops(model_config(num_heads=4, positions="rotary", activation="swiglu"), 8)[0]
    )


def test_encoder_decoder_flops_count_each_stack_on_its_own_length():
    c = model_config(family="encoder_decoder", num_decoder_layers=3, activation="geglu")
    flops, tokens = metrics.train_flops(c, seq_len=10, target_len=4)
    assert tokens == 14
    D, A, F, V = 16, 16, 32, 50
    layer = 4 * D * A + 3 * D * F
    expected = 6 * (10 * 2 * layer + 4 * 3 * (layer + 2 * D * A) + 10 * 3 * 2 * D * A + 4 * D * V)
    expected += 12 * A * (2 * 100 + 3 * 16 + 3 * 40)
    np.testing.assert_allclose(flops, expected)
    # Same matmul parameters as the built model (encoder + decoder + the tied head).
    enc_dec_params = 2 * layer + 3 * (layer + 4 * D * A) + D * V
    assert matmul_params(c) == enc_dec_params
