"""KV-cache decoding for decoder-only and encoder-decoder models: greedy, temperature / top-k / top-p
sampling, and beam search with a length penalty; EOS and maximum-length handling; batched prompts of
different lengths (left-padded, each row with its own positions).

The cache has one slot per token of prompt + continuation; each step writes one slot and attends over
the filled ones. Everything runs in one jitted while-loop per call, which stops once every row is done.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.models.encoder_decoder import EncoderDecoderLM

NEG_INF = -1e30


def top_p_filter(logits_BV: jax.Array, top_p: float | jax.Array) -> jax.Array:
    """The logits with every token outside the top-p nucleus at -inf: the smallest set of most likely tokens
    whose probability reaches top_p (a number, or one per row as top_p_B1)."""
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    cutoff_B1 = jnp.min(jnp.where(before_BV < top_p, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits_BV < cutoff_B1, -jnp.inf, logits_BV)


def sample_logits(
    key: jax.Array, logits_BV: jax.Array, temperature: float, top_k: int = 0, top_p: float = 1.0
) -> jax.Array:
    """Greedy at temperature 0; else a draw from softmax(logits / T) cut to the top k and the top-p
    nucleus."""
    if temperature == 0.0:
        return jnp.argmax(logits_BV, axis=-1)
    logits_BV = logits_BV.astype(jnp.float32) / temperature
    if top_k and top_k < logits_BV.shape[-1]:
        kth_B1 = jax.lax.top_k(logits_BV, top_k)[0][:, -1:]
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p < 1.0:
        logits_BV = top_p_filter(logits_BV, top_p)
    return jax.random.categorical(key, logits_BV, axis=-1)


def pad(
    prompts: Sequence[Sequence[int]] | np.ndarray, pad_id: int = 0, *, left: bool = True, length: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences of different lengths -> (tokens_BP, mask_BP), P the longest's length or `length` if more.
    Left padding right-aligns prompts, so every row's next slot is P; encoder inputs are right-padded."""
    prompts = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
    if not prompts or min(p.size for p in prompts) < 1:
        raise InputError("a prompt is empty; give at least one token (e.g. a newline)")
    P = max(max(p.size for p in prompts), length)
    tokens = np.full((len(prompts), P), pad_id, np.int32)
    mask = np.zeros((len(prompts), P), bool)
    for i, p in enumerate(prompts):
        cols = slice(P - p.size, P) if left else slice(0, p.size)
        tokens[i, cols], mask[i, cols] = p, True
    return tokens, mask


# ---------------------------------------------------------------------------------------------
# One interface over both model kinds: prefill the cache, then step one token at a time.


def _prefill(model, prefix_BP, prefix_mask_BP, total: int, enc_inputs_BS, enc_mask_BS):
    """Runs the prefix (the prompt; for an encoder-decoder, the start token after encoding the inputs)."""
    B, P = prefix_BP.shape
    key_mask_BS = jnp.zeros((B, total), bool).at[:, :P].set(prefix_mask_BP)
    positions_BP = jnp.maximum(jnp.cumsum(prefix_mask_BP, axis=1) - 1, 0)
    kw = {}
    if isinstance(model, EncoderDecoderLM):
        kw = dict(enc_mask_BS=enc_mask_BS, enc_BSD=model.encode(enc_inputs_BS, mask_BS=enc_mask_BS))
    logits_BPV, caches = model.decode(
        prefix_BP,
        model.init_cache(B, total),
        index=jnp.asarray(0),
        key_mask_BS=key_mask_BS,
        positions_BL=positions_BP,
        **kw,
    )
    state = {"caches": caches, "key_mask": key_mask_BS, "next_pos": positions_BP[:, -1] + 1}
    return logits_BPV[:, -1], state


def _step(model, tokens_B, state, index, enc_mask_BS):
    key_mask_BS = jax.lax.dynamic_update_index_in_dim(
        state["key_mask"], jnp.ones_like(tokens_B, bool), index, axis=1
    )
    kw = dict(enc_mask_BS=enc_mask_BS) if isinstance(model, EncoderDecoderLM) else {}
    logits_B1V, caches = model.decode(
        tokens_B[:, None],
        state["caches"],
        index=index,
        key_mask_BS=key_mask_BS,
        positions_BL=state["next_pos"][:, None],
        **kw,
    )
    return logits_B1V[:, 0], {"caches": caches, "key_mask": key_mask_BS, "next_pos": state["next_pos"] + 1}


def _prefix(model, prompts, inputs, start_id: int, pad_id: int, num_tokens: int, length: int = 0):
    """(prefix_BP, prefix_mask_BP, enc_inputs_BS, enc_mask_BS) as arrays, after checking lengths; prompts (or
    inputs) padded to `length` at least."""
    if isinstance(model, EncoderDecoderLM):
        if inputs is None:
            raise InputError("an encoder-decoder model decodes from `inputs`; pass the source token ids")
        enc, enc_mask = pad(inputs, pad_id, left=False, length=length)
        if enc.shape[1] > model.max_len:
            raise InputError(
                f"input length {enc.shape[1]} is longer than the model's positions "
                f"(model.max_len={model.max_len}); shorten the input"
            )
        prefix = np.full((enc.shape[0], 1), start_id, np.int32)
        mask = np.ones_like(prefix, bool)
    else:
        prefix, mask = pad(prompts, pad_id, length=length)
        enc = enc_mask = None
    if prefix.shape[1] + num_tokens > model.max_len:
        raise InputError(
            f"prompt ({prefix.shape[1]} tokens) + {num_tokens} new tokens do not fit the cache of "
            f"model.max_len={model.max_len} slots; shorten the prompt or ask for fewer tokens"
        )
    return prefix, mask, enc, enc_mask


@functools.partial(
    jax.jit, static_argnames=("graphdef", "num_tokens", "temperature", "top_k", "top_p", "eos_id", "pad_id")
)
def _sample(
    graphdef,
    params,
    prefix_BP,
    prefix_mask_BP,
    enc_BS,
    enc_mask_BS,
    key,
    *,
    num_tokens,
    temperature,
    top_k,
    top_p,
    eos_id,
    pad_id,
):
    model = nnx.merge(graphdef, params)
    B, P = prefix_BP.shape
    logits_BV, state = _prefill(model, prefix_BP, prefix_mask_BP, P + num_tokens, enc_BS, enc_mask_BS)

    def cond(carry):
        i, _, _, _, done_B = carry
        return (i < num_tokens) & ~jnp.all(done_B)

    def body(carry):
        i, logits_BV, state, out_BN, done_B = carry
        tok_B = sample_logits(jax.random.fold_in(key, i), logits_BV, temperature, top_k, top_p).astype(
            jnp.int32
        )
        tok_B = jnp.where(done_B, pad_id, tok_B)
        out_BN = jax.lax.dynamic_update_index_in_dim(out_BN, tok_B, i, axis=1)
        if eos_id is not None:
            done_B = done_B | (tok_B == eos_id)
        logits_BV, state = _step(model, tok_B, state, P + i, enc_mask_BS)
        return i + 1, logits_BV, state, out_BN, done_B

    out_BN = jnp.full((B, num_tokens), pad_id, jnp.int32)
    carry = (jnp.asarray(0), logits_BV, state, out_BN, jnp.zeros((B,), bool))
    return jax.lax.while_loop(cond, body, carry)[3]


def generate(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts,
    key: jax.Array,
    *,
    num_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    inputs=None,
    start_id: int = 0,
    pad_to: int = 0,
) -> np.ndarray:
    """Sampled (or, at temperature 0, greedy) continuations: int32[B, num_tokens], pad_id after a row's EOS.

    Decoder-only models continue `prompts` (a list of token sequences of any lengths, or an int array
    [B, P]); encoder-decoder models decode from `inputs` (same forms), starting from `start_id`. Prompts
    (or inputs) are padded to `pad_to` tokens at least: calls of one length compile once.
    """
    if temperature < 0:
        raise InputError(f"temperature={temperature} is negative; use 0 (greedy) or a positive value")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p={top_p} is outside (0, 1]; use 1.0 to turn nucleus sampling off")
    prefix, mask, enc, enc_mask = _prefix(
        nnx.merge(graphdef, params), prompts, inputs, start_id, pad_id, num_tokens, pad_to
    )
    out = _sample(
        graphdef,
        params,
        prefix,
        mask,
        enc,
        enc_mask,
        key,
        num_tokens=num_tokens,
        temperature=float(temperature),
        top_k=int(top_k),
        top_p=float(top_p),
        eos_id=eos_id,
        pad_id=pad_id,
    )
    return np.asarray(out)


@functools.partial(
    jax.jit, static_argnames=("graphdef", "num_beams", "num_tokens", "length_penalty", "eos_id", "pad_id")
)
def _beam_search(
    graphdef,
    params,
    prefix_BP,
    prefix_mask_BP,
    enc_BS,
    enc_mask_BS,
    *,
    num_beams,
    num_tokens,
    length_penalty,
    eos_id,
    pad_id,
):
    model = nnx.merge(graphdef, params)
    B, P = prefix_BP.shape
    K, N = num_beams, num_tokens

    def repeat(x):
        return None if x is None else jnp.repeat(x, K, axis=0)  # rows b*K + k

    logits_RV, state = _prefill(
        model, repeat(prefix_BP), repeat(prefix_mask_BP), P + N, repeat(enc_BS), repeat(enc_mask_BS)
    )
    V = logits_RV.shape[-1]

    # score = logp / length**alpha
    def penalty(n):
        return jnp.asarray(n, jnp.float32) ** length_penalty

    def cond(carry):
        i, _, _, alive_logp_BK, _, _, fin_score_BK = carry
        best_possible_B = alive_logp_BK.max(-1) / penalty(N)  # alive log-probs only fall as beams grow
        return (i < N) & ~jnp.all(fin_score_BK[:, 0] >= best_possible_B)

    def body(carry):
        i, logits_RV, state, alive_logp_BK, alive_BKN, fin_BKN, fin_score_BK = carry
        logp_BKV = jax.nn.log_softmax(logits_RV, axis=-1).reshape(B, K, V)
        cand_BC, idx_BC = jax.lax.top_k((alive_logp_BK[..., None] + logp_BKV).reshape(B, K * V), 2 * K)
        beam_BC, tok_BC = idx_BC // V, (idx_BC % V).astype(jnp.int32)
        seq_BCN = jnp.take_along_axis(alive_BKN, beam_BC[..., None], axis=1)
        seq_BCN = jax.lax.dynamic_update_index_in_dim(seq_BCN, tok_BC, i, axis=2)
        is_eos_BC = (tok_BC == eos_id) if eos_id is not None else jnp.zeros_like(tok_BC, bool)
        # Finished: the best K of those finished before and the candidates that end now, if they rank in the
        # top K (as in Hugging Face's beam search; so one beam is greedy decoding).
        ends_BC = is_eos_BC & (jnp.arange(2 * K) < K)
        scores = jnp.concatenate(
            [fin_score_BK, jnp.where(ends_BC, cand_BC / penalty(i + 1), NEG_INF)], axis=1
        )
        fin_score_BK, top = jax.lax.top_k(scores, K)
        fin_BKN = jnp.take_along_axis(jnp.concatenate([fin_BKN, seq_BCN], axis=1), top[..., None], axis=1)
        # Alive: the best K candidates that did not end.
        alive_logp_BK, top = jax.lax.top_k(jnp.where(is_eos_BC, NEG_INF, cand_BC), K)
        alive_BKN = jnp.take_along_axis(seq_BCN, top[..., None], axis=1)
        rows_R = (jnp.arange(B)[:, None] * K + jnp.take_along_axis(beam_BC, top, axis=1)).reshape(-1)
        state = jax.tree.map(lambda x: x[rows_R], state)
        tok_R = jnp.take_along_axis(tok_BC, top, axis=1).reshape(-1)
        logits_RV, state = _step(model, tok_R, state, P + i, repeat(enc_mask_BS))
        return i + 1, logits_RV, state, alive_logp_BK, alive_BKN, fin_BKN, fin_score_BK

    alive_logp_BK = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (K - 1)), (B, 1))  # one live beam to start
    empty_BKN = jnp.full((B, K, N), pad_id, jnp.int32)
    carry = (jnp.asarray(0), logits_RV, state, alive_logp_BK, empty_BKN, empty_BKN, jnp.full((B, K), NEG_INF))
    i, _, _, alive_logp_BK, alive_BKN, fin_BKN, fin_score_BK = jax.lax.while_loop(cond, body, carry)
    scores = jnp.concatenate([fin_score_BK, alive_logp_BK / penalty(i)], axis=1)
    best_B = jnp.argmax(scores, axis=1)
    seqs = jnp.concatenate([fin_BKN, alive_BKN], axis=1)
    return jnp.take_along_axis(seqs, best_B[:, None, None], axis=1)[:, 0], jnp.max(scores, axis=1)


def beam_search(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    prompts,
    *,
    num_beams: int,
    num_tokens: int,
    length_penalty: float = 0.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    inputs=None,
    start_id: int = 0,
    pad_to: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """The best of `num_beams` beams per row: (int32[B, num_tokens] with pad_id after EOS, score[B]).

    A beam's score is its log-probability / length**length_penalty (0: no normalisation, which favours
    short outputs; 1: the mean per token). Arguments as in `generate`.
    """
    if num_beams < 1:
        raise InputError(f"num_beams={num_beams}; use 1 or more")
    prefix, mask, enc, enc_mask = _prefix(
        nnx.merge(graphdef, params), prompts, inputs, start_id, pad_id, num_tokens, pad_to
    )
    seqs, scores = _beam_search(
        graphdef,
        params,
        prefix,
        mask,
        enc,
        enc_mask,
        num_beams=num_beams,
        num_tokens=num_tokens,
        length_penalty=float(length_penalty),
        eos_id=eos_id,
        pad_id=pad_id,
    )
    return np.asarray(seqs), np.asarray(scores)


def sample_text(
    graphdef: nnx.GraphDef, params: nnx.State, tok, sample: ConfigDict, num_tokens: int, key: jax.Array
) -> str:
    """`sample.num_samples` continuations of `sample.prompt` (each with the prompt first), joined by '====='
    lines.

    Texts longer than the model's positions are made in chunks: when the cache is full, decoding starts
    again from the last half of the text.
    """
    prompt_ids = tok.encode(sample.prompt)
    if prompt_ids.size == 0:
        raise InputError("sample.prompt is empty; give some text (e.g. a newline)")
    max_len = nnx.merge(graphdef, params).max_len
    if prompt_ids.size >= max_len:
        raise InputError(
            f"sample.prompt is {prompt_ids.size} tokens, as long as the model's positions "
            f"(model.max_len={max_len}); shorten the prompt"
        )
    rows = np.tile(prompt_ids[None].astype(np.int32), (sample.num_samples, 1))
    done = 0
    while done < num_tokens:
        context = rows[:, -(max_len // 2) :] if rows.shape[1] >= max_len else rows
        n = min(num_tokens - done, max_len - context.shape[1])
        new = generate(
            graphdef,
            params,
            context,
            jax.random.fold_in(key, done),
            num_tokens=n,
            temperature=sample.temperature,
            top_k=sample.top_k,
            top_p=sample.top_p,
        )
        rows, done = np.concatenate([rows, new], axis=1), done + n
    return "\n=====\n".join(tok.decode(row) for row in rows)
