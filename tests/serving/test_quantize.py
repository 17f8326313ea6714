"""int8 weight-only quantisation: per-output-channel scales, bytes, round trip."""

import jax
import numpy as np
from flax import nnx

from experiments.configs import shakespeare_char
from lmjax import config as base_config
from lmjax import models
from lmjax.serving import quantize


def decoder_params(**model):
    c = base_config.base().model
    c.update(vocab_size=96, d_model=64, num_heads=4, num_layers=2, **model)
    return nnx.state(models.build(c, nnx.Rngs(0)), nnx.Param).to_pure_dict()


def test_each_output_channel_has_its_own_scale_and_the_round_trip_error_is_half_a_step():
    params = decoder_params(activation="swiglu", tie_embeddings=False)
    q = quantize.quantize(params)
    attn = q["blocks"][0]["attn"]
    assert attn["query_DHK"]["int8"].dtype == np.int8 and attn["query_DHK"]["scale"].shape == (1, 4, 16)
    assert attn["out_HKD"]["scale"].shape == (1, 1, 64)
    assert q["embed_VD"]["scale"].shape == (96, 1) and q["head_DV"]["scale"].shape == (1, 96)
    assert q["blocks"][0]["mlp"]["gate"]["kernel"]["scale"].shape == (1, 256)
    assert q["final_norm"]["scale"].dtype == np.float32  # norms stay as trained
    back = quantize.dequantize(q)
    for (path, w), w2 in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(back), strict=True):
        err = np.abs(np.asarray(w) - np.asarray(w2))
        assert err.max() <= np.abs(np.asarray(w)).max() / 127 / 2 + 1e-7, path


def test_the_demo_models_int8_weights_take_under_three_tenths_of_the_float32_bytes():
    demo = shakespeare_char.get_config("").model
    demo.vocab_size = 65
    params = nnx.state(models.build(demo, nnx.Rngs(0)), nnx.Param).to_pure_dict()
    ratio = quantize.nbytes(quantize.quantize(params)) / quantize.nbytes(params)
    assert ratio <= 0.3, ratio


def test_scanned_stacks_keep_a_scale_per_layer():
    q = quantize.quantize(decoder_params(scan_layers=True))
    assert q["blocks"]["attn"]["query_DHK"]["scale"].shape == (2, 1, 4, 16)
    assert q["blocks"]["mlp"]["up"]["kernel"]["scale"].shape == (2, 1, 256)
