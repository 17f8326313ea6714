import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax import config as base_config
from lmjax import models
from lmjax.models import decode

V = 13


def build(family="decoder", **kw):
    c = base_config.base().model
    c.update(
        dict(family=family, vocab_size=V, num_layers=2, num_heads=2, d_model=16, d_ff=32, max_len=16) | kw
    )
    return models.build(c, nnx.Rngs(0))


# The references are compiled (one program each, not one per operation and shape), as decoding is.
prefill = nnx.jit(decode._prefill, static_argnums=3)
step = nnx.jit(decode._step)
forward = nnx.jit(lambda model, *args, **kw: model(*args, **kw))


def full_logits(model, tokens):
    """The causal model's logits at each of `tokens`, computed on the row right-padded to model.max_len (one
    shape for every length: a position sees only the tokens before it)."""
    row = np.zeros((1, model.max_len), np.int32)
    row[0, : len(tokens)] = tokens
    return forward(model, jnp.asarray(row))[0, : len(tokens)]


def cached_logits(model, prompts, continuation_BN):
    """Prefill left-padded prompts, then feed known tokens one by one: the logits after each step."""
    prefix, mask = decode.pad(prompts)
    P, N = prefix.shape[1], continuation_BN.shape[1]
    logits, state = prefill(model, jnp.asarray(prefix), jnp.asarray(mask), P + N, None, None)
    out = [logits]
    for i in range(N - 1):
        logits, state = step(model, jnp.asarray(continuation_BN[:, i]), state, P + i, None)
        out.append(logits)
    return np.stack(out, axis=1)


@pytest.mark.parametrize(
    "positions, kw",
    [
        ("learned", {}),
        ("sinusoidal", {}),
        ("rotary", {}),
        ("relative", {}),
        ("rotary", dict(num_heads=4, num_kv_heads=2, use_bias=False, rope_theta=1e5)),  # grouped-query
        ("rotary", dict(num_heads=4, num_kv_heads=1, use_bias=False)),  # multi-query
        ("rotary", dict(num_heads=4, num_kv_heads=2, use_bias=False, qkv_bias=True)),  # Qwen2's biases
    ],
)
def test_kv_cache_decoding_matches_the_full_forward_for_prompts_of_different_lengths(positions, kw):
    model = build(positions=positions, **kw)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, V, 3), rng.integers(1, V, 6), rng.integers(1, V, 1)]
    cont = rng.integers(1, V, (3, 5)).astype(np.int32)
    got = cached_logits(model, prompts, cont)
    for b, p in enumerate(prompts):
        full = full_logits(model, np.concatenate([p, cont[b]]))
        np.testing.assert_allclose(got[b], full[p.size - 1 : p.size + 4], atol=1e-5, rtol=1e-5)


def test_encoder_decoder_cached_decoding_matches_the_full_forward():
    model = build(
        "encoder_decoder", positions="relative", norm="rmsnorm", use_bias=False, scale_attention=False
    )
    rng = np.random.default_rng(1)
    inputs = [rng.integers(1, V, 7), rng.integers(1, V, 4)]
    targets = rng.integers(1, V, (2, 6)).astype(np.int32)
    enc, enc_mask = decode.pad(inputs, left=False)
    dec_in = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
    full = forward(model, jnp.asarray(enc), jnp.asarray(dec_in), mask_BS=jnp.asarray(enc_mask))
    start = jnp.zeros((2, 1), jnp.int32)
    logits, state = prefill(model, start, jnp.ones((2, 1), bool), 6, jnp.asarray(enc), jnp.asarray(enc_mask))
    got = [logits]
    for i in range(5):
        logits, state = step(model, jnp.asarray(targets[:, i]), state, 1 + i, jnp.asarray(enc_mask))
        got.append(logits)
    np.testing.assert_allclose(np.stack(got, 1), full, atol=1e-5, rtol=1e-5)


def greedy_reference(model, prompt, n, eos=None):
    tokens = list(prompt)
    for _ in range(n):
        nxt = int(jnp.argmax(full_logits(model, tokens)[-1]))
        tokens.append(nxt)
        if nxt == eos:
            break
    return tokens[len(prompt) :]


def test_greedy_generation_matches_step_by_step_argmax_and_stops_at_eos():
    model = build()
    graphdef, params = nnx.split(model)
    prompts = [[1, 5, 7], [4]]
    eos = greedy_reference(model, [4], 4)[2]  # a token row 1 emits third: its output must stop there
    out = decode.generate(
        graphdef, params, prompts, jax.random.PRNGKey(0), num_tokens=8, temperature=0.0, eos_id=eos
    )
    for row, p in zip(out, prompts, strict=True):
        ref = greedy_reference(model, p, 8, eos)
        assert list(row[: len(ref)]) == ref and np.all(row[len(ref) :] == 0)
    assert list(out[1]).index(eos) <= 2


def test_beam_search_with_one_beam_is_greedy_and_more_beams_score_at_least_as_well():
    model = build()
    graphdef, params = nnx.split(model)
    prompts = [[1, 5, 7], [2, 3], [9]]
    for eos in (None, 3):
        greedy = decode.generate(
            graphdef, params, prompts, jax.random.PRNGKey(0), num_tokens=8, temperature=0.0, eos_id=eos
        )
        beam1, _ = decode.beam_search(graphdef, params, prompts, num_beams=1, num_tokens=8, eos_id=eos)
        np.testing.assert_array_equal(beam1, greedy)
    _, score1 = decode.beam_search(graphdef, params, prompts, num_beams=1, num_tokens=8)
    _, score4 = decode.beam_search(graphdef, params, prompts, num_beams=4, num_tokens=8)
    assert np.all(score4 >= score1 - 1e-5)


def test_beam_search_for_encoder_decoder_runs_with_eos_and_length_penalty():
    model = build("encoder_decoder")
    graphdef, params = nnx.split(model)
    seqs, scores = decode.beam_search(
        graphdef,
        params,
        None,
        inputs=[[3, 4, 5], [6]],
        num_beams=3,
        num_tokens=6,
        length_penalty=1.0,
        eos_id=2,
    )
    assert seqs.shape == (2, 6) and np.all(np.isfinite(scores))
    greedy = decode.generate(
        graphdef,
        params,
        None,
        jax.random.PRNGKey(0),
        inputs=[[3, 4, 5], [6]],
        num_tokens=6,
        temperature=0.0,
        eos_id=2,
    )
    beam1, _ = decode.beam_search(
        graphdef, params, None, inputs=[[3, 4, 5], [6]], num_beams=1, num_tokens=6, eos_id=2
    )
    np.testing.assert_array_equal(beam1, greedy)


def test_top_k_and_top_p_limit_the_choices():
    logits = jnp.log(jnp.asarray([[0.05, 0.05, 0.1, 0.3, 0.5]]))

    def draws(**kw):
        return {int(decode.sample_logits(jax.random.PRNGKey(i), logits, 1.0, **kw)[0]) for i in range(300)}

    assert draws(top_k=2) == {3, 4}
    assert draws(top_p=0.75) == {3, 4}  # 0.5 + 0.3 reaches 0.75
    assert draws(top_p=0.5) == {4}
    assert draws(top_p=0.85) == {2, 3, 4}


def test_bad_decoding_requests_fail_clearly():
    graphdef, params = nnx.split(build())
    with pytest.raises(ValueError, match="prompt is empty"):
        decode.generate(graphdef, params, [[]], jax.random.PRNGKey(0), num_tokens=2)
    with pytest.raises(ValueError, match="temperature=-1.0 is negative"):
        decode.generate(graphdef, params, [[1]], jax.random.PRNGKey(0), num_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match=r"do not fit the cache of model.max_len=16 slots"):
        decode.generate(graphdef, params, [list(range(1, 13))], jax.random.PRNGKey(0), num_tokens=5)
    with pytest.raises(ValueError, match="decodes from `inputs`"):
        decode.beam_search(*nnx.split(build("encoder_decoder")), None, num_beams=2, num_tokens=3)
