"""Evaluation of a model on held-out text: the eval step of train.objective, summed over the validation
batches of a corpus or a mixture (source by source and weighted), and word-vector benchmarks for word-vector
models."""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from lmjax import sharding
from lmjax.data import corpora, mixture, pipeline, tokenizers
from lmjax.errors import InputError
from lmjax.tasks import vectors
from lmjax.training import (
    loop,
    losses,
    objectives,
)


def make_eval_step(
    graphdef: nnx.GraphDef, objective: objectives.Objective, train_config: ConfigDict
) -> Callable:
    """eval_step(params, batch) -> summable stats: the loss's and what the objective's evaluation adds."""
    loss = objective.make_loss(train_config)

    def eval_step(params: nnx.State, batch: dict) -> dict:
        rngs = nnx.Rngs(dropout=jax.random.PRNGKey(0)) if objective.eval_dropout else None
        outputs = nnx.merge(graphdef, params).forward(
            batch, deterministic=not objective.eval_dropout, rngs=rngs
        )
        stats = loss(outputs, batch)[1]
        return stats | objective.eval_stats(outputs, batch) if objective.eval_stats else stats

    return eval_step


def evaluate(
    engine: loop.Engine, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer
) -> dict[str, float]:
    """Loss, perplexity and accuracy over the validation split (its first train.eval_batches batches), and the
    accuracy of always predicting the most frequent target token (unigram_accuracy), to compare with. Word
    vectors are scored on word similarity (Spearman) and analogies (accuracy) instead
    (lmjax.tasks.vectors)."""
    if objectives.get(engine.config.train.objective).word_vectors:
        wv = vectors.WordVectors.from_model(nnx.merge(engine.graphdef, params), tok)
        return {f"eval/{k}": float(v) for k, v in vectors.evaluate(wv).items()}
    return evaluate_lm(engine.eval_step, engine.layout, engine.config, params, corpus, tok)


def evaluate_lm(
    eval_step: Callable,
    layout: sharding.Layout,
    config: ConfigDict,
    params: nnx.State,
    corpus: corpora.Corpus,
    tok: tokenizers.Tokenizer,
) -> dict[str, float]:
    """`evaluate` for any eval step of the train.objective (fine-tuning scores its backbone with it). A
    mixture is scored source by source (eval/<name>/...) and as the sources' weighted mean (eval/...;
    perplexity: the exponential of the mean log-perplexity)."""
    if isinstance(corpus, mixture.Mixture):
        per = [(s, evaluate_lm(eval_step, layout, config, params, s.corpus, tok)) for s in corpus.sources]
        result = {f"eval/{s.name}/{k[len('eval/') :]}": v for s, r in per for k, v in r.items()}
        for k in per[0][1]:
            log = k == "eval/perplexity"
            mean = sum(s.weight * (math.log(r[k]) if log else r[k]) for s, r in per)
            result[k] = math.exp(mean) if log else mean
        return result
    totals = None
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    for batch in pipeline.eval_batches(
        corpus,
        tok,
        config.data,
        objective=objectives.get(config.train.objective),
        batch_size=config.data.batch_size // jax.process_count(),
        max_batches=config.train.eval_batches,
        **shard,
    ):
        stats = eval_step(params, sharding.global_batch(batch, layout))
        totals = add(totals, stats)
    if totals is None:
        raise InputError(
            "the validation split is too small for one batch; lower data.batch_size or data.seq_len, "
            "or raise data.validation_fraction"
        )
    result = losses.summarize(totals)
    if "target_counts" in totals:
        result["unigram_accuracy"] = totals["target_counts"].max() / jnp.maximum(totals["weight"], 1.0)
    return {f"eval/{k}": float(v) for k, v in result.items()}


def add(totals: dict | None, stats: dict) -> dict:
    """Running sums of summable eval statistics (None: nothing summed yet)."""
    return stats if totals is None else jax.tree.map(jnp.add, totals, stats)
