"""The two functions a server runs and mode=export serialises, over a decoder's weights as one flat list:

  prefill(weights, tokens_BP, lengths_B) -> (logits_BV, caches, logprobs_BP, top_values_BPK, top_ids_BPK)
      prompts right-padded to P, row b's real tokens 0..lengths_B[b]-1 written to cache slots 0..; logits
      after each row's last real token; the prompt's scores: log P(token p | tokens < p) at p >= 1 (0 at p =
      0) and the K = TOP_LOGPROBS most likely next tokens after each position (what echo and logprobs
      answer: the same pass scores a prompt and starts its generation)
  step(weights, tokens_B, caches, lengths_B) -> (logits_BV, caches)    one token per row, written at its
      own slot lengths_B[b] (rows are independent sequences: continuous batching over cache slots)

caches is a flat list [k_BSGK, v_BSGK] * layers of S = cache_len slots. The weights are the pure parameter
dict (int8-quantised or not) flattened by jax.tree: the functions unflatten it and multiply int8 matrices back
where the model reads them, so an export holds no model code."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from lmjax.serving import quantize

TOP_LOGPROBS = 20  # the most alternatives a request may ask for at each position (OpenAI's limit)


def token_scores(logits_BLV: jax.Array, next_BL: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(log P(next_BL) under logits_BLV, the top TOP_LOGPROBS log-probabilities and their token ids), each
    position's distribution normalised over the model's whole vocabulary."""
    logp_BLV = jax.nn.log_softmax(logits_BLV.astype(jnp.float32), axis=-1)
    chosen_BL = jnp.take_along_axis(logp_BLV, next_BL[..., None], axis=-1)[..., 0]
    values_BLK, ids_BLK = jax.lax.top_k(logp_BLV, TOP_LOGPROBS)
    return chosen_BL, values_BLK, ids_BLK.astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DecoderFunctions:
    graphdef: nnx.GraphDef
    treedef: jax.tree_util.PyTreeDef  # of the (quantised) pure parameter dict
    cache_len: int

    def model(self, weights: list):
        return nnx.merge(self.graphdef, quantize.at_use(jax.tree.unflatten(self.treedef, weights)))

    def prefill(self, weights: list, tokens_BP: jax.Array, lengths_B: jax.Array):
        model = self.model(weights)
        B, P = tokens_BP.shape
        key_mask_BS = jnp.arange(self.cache_len)[None, :] < lengths_B[:, None]
        logits_BPV, caches = model.decode(
            tokens_BP,
            model.init_cache(B, self.cache_len),
            index=0,
            key_mask_BS=key_mask_BS,
            positions_BL=jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32), (B, P)),
        )
        last_BV = jnp.take_along_axis(logits_BPV, (lengths_B - 1)[:, None, None], axis=1)[:, 0]
        # position p's distribution scores token p + 1: shifted, so logprobs_BP[:, p] belongs to token p
        chosen_BP, top_values_BPK, top_ids_BPK = token_scores(logits_BPV, jnp.roll(tokens_BP, -1, axis=1))
        logprobs_BP = jnp.pad(chosen_BP[:, :-1], ((0, 0), (1, 0)))
        return last_BV, flat_caches(caches), logprobs_BP, top_values_BPK, top_ids_BPK

    def step(self, weights: list, tokens_B: jax.Array, caches: list, lengths_B: jax.Array):
        model = self.model(weights)
        logits_B1V, caches = model.decode(
            tokens_B[:, None],
            nested_caches(caches),
            index=lengths_B,
            key_mask_BS=jnp.arange(self.cache_len)[None, :] <= lengths_B[:, None],
            positions_BL=lengths_B[:, None],
        )
        return logits_B1V[:, 0], flat_caches(caches)


def flat_caches(caches: list) -> list:
    """The model's per-block ((k, v), cross) caches as [k, v, k, v, ...]."""
    return [x for (k, v), _ in caches for x in (k, v)]


def nested_caches(flat: list) -> list:
    return [((flat[i], flat[i + 1]), None) for i in range(0, len(flat), 2)]


def build(graphdef: nnx.GraphDef, params, cache_len: int, quantized: bool) -> tuple[DecoderFunctions, list]:
    """(the functions, their flat weights) for a decoder's parameters (nnx.State), int8 when `quantized`."""
    pure = params.to_pure_dict() if hasattr(params, "to_pure_dict") else params
    pure = quantize.quantize(jax.device_get(pure)) if quantized else pure
    weights, treedef = jax.tree.flatten(pure)
    return DecoderFunctions(graphdef, treedef, cache_len), [jnp.asarray(w) for w in weights]


def cache_spec(model, cache_len: int) -> tuple[tuple[int, ...], str, int]:
    """(per-row cache shape (S, G, K), dtype, number of cache arrays) of a decoder."""
    flat = flat_caches(jax.eval_shape(lambda: model.init_cache(1, cache_len)))
    return tuple(flat[0].shape[1:]), str(flat[0].dtype), len(flat)
