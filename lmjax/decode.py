"""Sampling from a decoder LM: temperature and top-k, one jitted loop over a fixed-size token buffer.

Without a KV cache each new token reruns the model on the last `max_len` tokens (the window
slides once the text outgrows the model's positions, as nanoGPT does).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sample_logits(key: jax.Array, logits_BV: jax.Array, temperature: float, top_k: int) -> jax.Array:
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1)
    logits_BV = logits_BV / temperature
    if top_k and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    return jax.random.categorical(key, logits_BV, axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "prompt_len", "num_tokens", "temperature", "top_k"))
def _generate(graphdef, params, prompt_BP, key, *, prompt_len, num_tokens, temperature, top_k):
    model = nnx.merge(graphdef, params)
    B = prompt_BP.shape[0]
    window = min(model.max_len, prompt_len + num_tokens)
    tokens_BT = jnp.zeros((B, prompt_len + num_tokens), jnp.int32).at[:, :prompt_len].set(prompt_BP)

    def step(t, tokens_BT):  # t: index of the token to produce
        start = jnp.maximum(t - window, 0)
        ctx_BW = jax.lax.dynamic_slice_in_dim(tokens_BT, start, window, axis=1)
        logits_BWV = model(ctx_BW)
        logits_BV = jax.lax.dynamic_index_in_dim(logits_BWV, t - start - 1, axis=1, keepdims=False)
        new_B = sample_logits(jax.random.fold_in(key, t), logits_BV, temperature, top_k)
        return jax.lax.dynamic_update_index_in_dim(tokens_BT, new_B.astype(jnp.int32), t, axis=1)

    return jax.lax.fori_loop(prompt_len, prompt_len + num_tokens, step, tokens_BT)


def generate(graphdef, params, prompt_BP: jax.Array, key: jax.Array, *, num_tokens: int,
             temperature: float = 1.0, top_k: int = 0) -> jax.Array:
    """Returns int32[B, P + num_tokens]: the prompts followed by sampled continuations."""
    if prompt_BP.shape[1] < 1:
        raise ValueError("the prompt is empty; give at least one token (e.g. a newline)")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} is negative; use 0 (greedy) or a positive value")
    return _generate(graphdef, params, jnp.asarray(prompt_BP, jnp.int32), key, prompt_len=prompt_BP.shape[1],
                     num_tokens=num_tokens, temperature=float(temperature), top_k=int(top_k))


def sample_text(graphdef: nnx.GraphDef, params: nnx.State, tok, prompt: str, num_tokens: int, temperature: float,
                top_k: int, key: jax.Array, num_samples: int = 1) -> str:
    """`num_samples` continuations of `prompt` (each with the prompt first), joined by a '=====' line."""
    prompt_ids = tok.encode(prompt)
    if prompt_ids.size == 0:
        raise ValueError("sample.prompt is empty; give some text (e.g. a newline)")
    out = generate(graphdef, params, np.tile(prompt_ids[None], (num_samples, 1)), key, num_tokens=num_tokens,
                   temperature=temperature, top_k=top_k)
    return "\n=====\n".join(tok.decode(np.asarray(row)) for row in out)
