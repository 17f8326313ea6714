"""A decoder as the server drives it: prefill and step (lmjax/serving/functions.py's contract) compiled once
per shape, over weights held on the device. The same class runs the live model and an exported one."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _insert(caches: list, new: list, row: jax.Array) -> list:
    return [
        jax.lax.dynamic_update_index_in_dim(c, n[0], row, axis=0) for c, n in zip(caches, new, strict=True)
    ]


@dataclasses.dataclass
class Runner:
    prefill_fn: Callable  # (weights, tokens_BP, lengths_B) -> (logits_BV, caches, prompt scores...)
    step_fn: Callable  # (weights, tokens_B, caches, lengths_B) -> (logits_BV, caches)
    weights: list
    cache_shape: tuple[int, ...]  # one row's cache array: (S, kv heads, head size)
    cache_dtype: str
    num_caches: int
    tokenizer: object
    name: str

    def __post_init__(self):
        self._prefill = jax.jit(self.prefill_fn)
        self._step = jax.jit(self.step_fn, donate_argnums=(2,))
        self._insert = jax.jit(_insert, donate_argnums=(0,))

    @property
    def cache_len(self) -> int:
        return self.cache_shape[0]

    def prefill(self, tokens_BP, lengths_B) -> tuple:
        """Next-token logits after each right-padded prompt, the prompts' caches, and the prompts' scores
        (functions.py: logprobs_BP, top_values_BPK, top_ids_BPK)."""
        return self._prefill(
            self.weights, jnp.asarray(tokens_BP, jnp.int32), jnp.asarray(lengths_B, jnp.int32)
        )

    def step(self, tokens_B, caches: list, lengths_B) -> tuple[jax.Array, list]:
        """Writes tokens_B at slots lengths_B (the caches are consumed) -> next-token logits, new caches."""
        return self._step(
            self.weights, jnp.asarray(tokens_B, jnp.int32), caches, jnp.asarray(lengths_B, jnp.int32)
        )

    def empty_caches(self, batch: int) -> list:
        return [jnp.zeros((batch, *self.cache_shape), self.cache_dtype) for _ in range(self.num_caches)]

    def insert(self, caches: list, one: list, row: int) -> list:
        """caches with row `row` replaced by a batch-of-one prefill's caches (the old ones are consumed)."""
        return self._insert(caches, one, jnp.asarray(row, jnp.int32))

    def logits(self, prompts: list) -> np.ndarray:
        """Next-token logits after each prompt (token id lists of any lengths), as float32[B, V]."""
        lengths = np.asarray([len(p) for p in prompts], np.int32)
        tokens = np.zeros((len(prompts), int(lengths.max())), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = p
        return np.asarray(self.prefill(tokens, lengths)[0])
