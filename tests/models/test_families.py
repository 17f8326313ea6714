"""Properties every family shares: padding never changes real tokens' outputs; bidirectional vs causal;
remat."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import config as base_config
from lmjax import models
from lmjax.models import layers

V, L = 23, 10
VARIANTS = {
    "decoder": dict(family="decoder", positions="rotary"),
    "bert": dict(
        family="encoder", norm_position="post", embed_norm=True, activation="gelu", encoder_heads="mlm_nsp"
    ),
    "encoder_relative": dict(family="encoder", positions="relative", norm="rmsnorm", encoder_heads="mlm"),
    "t5": dict(
        family="encoder_decoder",
        positions="relative",
        norm="rmsnorm",
        use_bias=False,
        scale_attention=False,
        activation="geglu",
        scale_output=True,
    ),
    "transformer": dict(
        family="encoder_decoder",
        positions="sinusoidal",
        norm_position="post",
        activation="relu",
        share_embeddings=False,
        tie_embeddings=False,
    ),
}


def model_config(variant: str | None = None, **overrides):
    """A tiny model config of a variant (the decoder by default) with `overrides`."""
    c = base_config.base().model
    tiny = dict(vocab_size=V, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=L)
    c.update(tiny | (VARIANTS[variant] if variant else {}) | overrides)
    return c


def build(variant):
    return models.build(model_config(variant), nnx.Rngs(0))


def run(model, tokens, mask, **kw):
    batch = {
        "inputs": jnp.asarray(tokens),
        "input_mask": jnp.asarray(mask),
        "segments": jnp.zeros_like(tokens),
        "decoder_inputs": jnp.asarray(tokens[:, :6]),
        "nsp_labels": jnp.zeros(len(tokens), jnp.int32),
    }
    return model.forward(batch, **kw)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_outputs_at_real_tokens_ignore_padding_content_and_amount(variant):
    model = build(variant)
    rng = np.random.default_rng(0)
    real = rng.integers(1, V, 6)
    outs = []
    for pad_len, seed in ((0, 1), (2, 2), (4, 3)):
        tokens = np.concatenate([real, np.random.default_rng(seed).integers(0, V, pad_len)])[None]
        mask = (np.arange(tokens.shape[1]) < 6)[None].astype(np.int32)
        outs.append(
            jax.tree.map(
                lambda x: np.asarray(x)[:, :6] if x.ndim == 3 else np.asarray(x), run(model, tokens, mask)
            )
        )
    for other in outs[1:]:
        for k in outs[0]:
            np.testing.assert_allclose(other[k], outs[0][k], atol=1e-5, rtol=1e-5, err_msg=k)


def test_encoder_is_bidirectional_and_decoder_of_encoder_decoder_is_causal():
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, V, (1, L)))
    enc = build("bert")
    x = enc.encode(tokens)
    changed = enc.encode(tokens.at[0, -1].set((tokens[0, -1] + 1) % V))
    assert not np.allclose(x[0, 0], changed[0, 0])  # the first token sees the last
    t5 = build("t5")
    a = t5(tokens, tokens)
    b = t5(tokens, tokens.at[0, -1].set((tokens[0, -1] + 1) % V))
    np.testing.assert_allclose(a[0, :-1], b[0, :-1], atol=1e-6)  # earlier decoder positions do not see it


def test_unknown_choices_fail_clearly():
    c = base_config.base().model
    c.update(vocab_size=V, norm="batchnorm")
    with pytest.raises(ValueError, match="model.norm='batchnorm' is unknown"):
        models.build(c, nnx.Rngs(0))
    c.update(norm="layernorm", family="encoder", encoder_heads="qa")
    with pytest.raises(ValueError, match="model.encoder_heads='qa' is unknown"):
        models.build(c, nnx.Rngs(0))
    c.update(family="decoder", remat="everything")
    with pytest.raises(ValueError, match="model.remat='everything' is unknown"):
        models.build(c, nnx.Rngs(0))


def _grads(variant, remat):
    c = model_config(variant, dropout=0.1, attention_dropout=0.1, remat=remat)
    tokens = np.random.default_rng(0).integers(1, V, (2, L))
    mask = np.ones_like(tokens)

    def loss(m, rngs):
        out = run(m, tokens, mask, deterministic=False, rngs=rngs)
        return sum(jnp.mean(jnp.square(x)) for x in jax.tree.leaves(out))

    return nnx.grad(loss)(models.build(c, nnx.Rngs(0)), nnx.Rngs(dropout=1))


@pytest.mark.parametrize("variant", ["decoder", "bert", "t5"])
@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_gradients_dropout_included(variant, remat):
    expected = jax.tree.leaves(_grads(variant, "none"))
    for a, b in zip(expected, jax.tree.leaves(_grads(variant, remat)), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
def test_remat_wraps_each_block_with_its_policy(remat):
    """What the compiler gets: one checkpoint per block with the named policy (on accelerators it keeps less
    for the backward pass; XLA:CPU's schedule keeps the same temporaries either way,
    benchmarks/RESULTS.md)."""
    c = base_config.base().model
    c.update(vocab_size=V, num_layers=3, num_heads=2, d_model=16, max_len=L, remat=remat)
    graphdef, params = nnx.split(models.build(c, nnx.Rngs(0)))
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p)(jnp.ones((2, L), jnp.int32)))(params)
    policies = [
        e.params["policy"] for e in jaxpr.eqns if e.primitive.name.startswith(("remat", "checkpoint"))
    ]
    assert policies == ([] if remat == "none" else [layers.REMAT_POLICIES[remat]] * 3)


DOCS = [np.arange(3, 3 + n, dtype=np.int32) for n in (7, 5, 9)]  # three documents
ROW = 24  # one packed row holds all three (21 tokens) and padding


def packed_decoder_row() -> dict:
    """The three documents packed into one LM row by the pipeline's own steps."""
    import grain

    from lmjax.data import pipeline

    docs = grain.MapDataset.source([{"tokens": d} for d in DOCS]).to_iter_dataset()
    windows = grain.experimental.ConcatThenSplitIterDataset(docs, length_struct={"tokens": ROW + 1})
    rows = [pipeline.to_lm_example(w) for w in windows]
    assert len(rows) == 1 and rows[0]["document_ids"].max() == 3
    return {k: jnp.asarray(v)[None] for k, v in rows[0].items()}


@pytest.mark.parametrize("positions", ["learned", "rotary", "sinusoidal"])
def test_a_packed_decoder_row_gives_each_document_its_logits_and_loss_alone(positions):
    from lmjax.training import losses

    model = models.build(model_config(max_len=ROW, positions=positions), nnx.Rngs(0))
    row = packed_decoder_row()
    packed = np.asarray(model.forward(row)["logits"][0])
    loss_sum = 0.0
    for i, doc in enumerate(DOCS, start=1):
        alone = {"inputs": jnp.asarray(doc[:-1])[None], "targets": jnp.asarray(doc[1:])[None]}
        alone["weights"] = jnp.ones(alone["inputs"].shape, jnp.float32)
        logits = model.forward(alone)["logits"]
        in_row = np.asarray(row["document_ids"][0] == i)
        np.testing.assert_allclose(packed[in_row][:-1], logits[0], rtol=1e-5, atol=1e-5)
        loss_sum += float(losses.language_model({"logits": logits}, alone)[0])
    packed_loss, stats = losses.language_model({"logits": jnp.asarray(packed)[None]}, row)
    assert float(stats["weight"]) == sum(len(d) - 1 for d in DOCS)  # no prediction across documents
    np.testing.assert_allclose(float(packed_loss), loss_sum, rtol=1e-5)


@pytest.mark.parametrize("variant", ["t5", "transformer"])
def test_a_packed_encoder_decoder_row_gives_each_document_its_logits_and_loss_alone(variant):
    """Three span-corrupted documents packed into one row (the pipeline's corruption and first-fit packing):
    each document's decoder logits equal those of its example alone."""
    import grain

    from lmjax.data import spans
    from lmjax.training import losses

    class Tok:
        eos_id = 1

        def special_id(self, name):  # sentinel i: V - 1 - i (documents use ids below V - 4)
            return (V - 1 - int(name.strip("<>").split("_")[-1])) % V

    model = models.build(model_config(variant, max_len=ROW), nnx.Rngs(0))
    docs = grain.MapDataset.source([{"tokens": d} for d in DOCS])
    examples = docs.random_map(spans.SpanCorruption(Tok(), 0.3, 2.0), seed=0).to_iter_dataset()
    alone = list(examples)
    lengths = {"inputs": ROW, "decoder_inputs": ROW, "targets": ROW, "weights": ROW}
    rows = grain.experimental.FirstFitPackIterDataset(
        examples, length_struct=lengths, num_packing_bins=1, shuffle_bins=False
    )
    rows = [spans.packed_example(r) for r in rows]
    assert len(rows) == 1 and rows[0]["input_document_ids"].max() == 3
    row = {k: jnp.asarray(v)[None] for k, v in rows[0].items()}
    packed = np.asarray(model.forward(row)["logits"][0])
    loss_sum = 0.0
    for i, ex in enumerate(alone, start=1):
        batch = {k: jnp.asarray(v)[None] for k, v in ex.items()}
        batch["input_mask"] = jnp.ones_like(batch["inputs"])
        logits = model.forward(batch)["logits"]
        in_row = np.asarray(row["decoder_document_ids"][0] == i)
        np.testing.assert_allclose(packed[in_row], logits[0], rtol=1e-5, atol=1e-5)
        loss_sum += float(losses.language_model({"logits": logits}, batch)[0])
    np.testing.assert_allclose(
        float(losses.language_model({"logits": packed[None]}, row)[0]), loss_sum, rtol=1e-5
    )


@pytest.mark.parametrize("remat", ["none", "full"])
@pytest.mark.parametrize("variant", ["decoder", "bert", "t5"])
def test_scanned_layers_give_the_unrolled_models_outputs_and_gradients(variant, remat):
    """model.scan_layers: the same parameters, stacked, give the same logits and gradients; the layouts
    convert both ways without loss."""
    plain_config = model_config(variant, remat=remat)
    plain = models.build(plain_config, nnx.Rngs(0))
    scan_config, scan_params = models.with_layout(plain_config, nnx.state(plain, nnx.Param), scanned=True)
    scanned = models.build(scan_config, nnx.Rngs(1))
    nnx.update(scanned, scan_params)
    stacks = [v for k, v in scan_params.to_pure_dict().items() if k in layers.STACKS]
    assert stacks and all(x.shape[0] == 2 for x in jax.tree.leaves(stacks))  # a leading layers axis
    back = models.with_layout(scan_config, scan_params, scanned=False)[1]
    jax.tree.map(np.testing.assert_array_equal, back, nnx.state(plain, nnx.Param))

    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, L), 3, V)
    mask = np.ones((2, L), np.int32)
    mask[1, 7:] = 0

    def outputs(model):  # logits (decoders, T5) or sentence embeddings (an encoder given no targets)
        return next(iter(run(model, tokens, mask).values()))

    def loss(model):
        return jnp.sum(outputs(model) ** 2 * 1e-3)

    np.testing.assert_allclose(outputs(scanned), outputs(plain), atol=1e-5)
    grads_scanned = nnx.grad(loss)(scanned)
    grads_plain = nnx.grad(loss)(plain)
    grads_back = models.with_layout(scan_config, nnx.State(grads_scanned.to_pure_dict()), scanned=False)[1]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_back, grads_plain)
