"""Training objectives, each one registered unit: its loss, the examples and batches its pipeline makes, the
model families it trains, what its evaluation adds and the config checks it needs.

Adding an objective is its own code plus one `register(Objective(...))` (tests/training/test_objectives.py
adds a toy).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from lmjax.data import pipeline
from lmjax.errors import InputError
from lmjax.training import losses

Shapes = dict[str, tuple[tuple[int, ...], type]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """One objective, whole. The model's `forward(batch)` gives the outputs `loss` scores."""

    name: str
    families: tuple[str, ...]  # model families it trains
    make_loss: Callable[[ConfigDict], Callable]  # train config -> loss(outputs, batch) -> (loss_sum, stats)
    batch_shapes: Callable[[ConfigDict, int], Shapes]  # (data config, rows) -> {key: (shape, dtype)}
    # (documents to read, all documents, corpus, tokenizer, data config, seed, training) -> examples (see
    # pipeline)
    examples: Callable | None = None
    batches: Callable | None = None  # (batches, tokenizer, data config) -> batches with what rows cannot hold
    dataset: Callable | None = None  # a whole training dataset instead of examples (word vectors)
    one_per_document: bool = False  # evaluation repeats documents to fill train.eval_batches
    eval_stats: Callable[[dict, dict], dict] | None = (
        None  # (outputs, batch) -> more summable evaluation stats
    )
    eval_dropout: bool = False  # evaluation keeps dropout on, with fixed masks (two dropout views)
    word_vectors: bool = False  # scored on word similarity and analogies, written as vectors.txt
    check: Callable[[ConfigDict], None] | None = None  # checks of a run's config beyond the model family

    def tokens_per_row(self, data: ConfigDict) -> int:
        """What one batch row counts for in the training log's tokens/s (word vectors: examples/s)."""
        return 1 if self.word_vectors else data.seq_len


REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    REGISTRY[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    if name not in REGISTRY:
        raise InputError(f"train.objective={name!r} is unknown; use one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def check(config: ConfigDict) -> None:
    """The objective against the model family and the data settings."""
    objective = get(config.train.objective)
    if config.model.family not in objective.families:
        allowed = [name for name, o in REGISTRY.items() if config.model.family in o.families]
        raise InputError(
            f"train.objective={objective.name!r} does not train a model.family="
            f"{config.model.family!r} model; use {' or '.join(allowed)}"
        )
    if objective.check is not None:
        objective.check(config)
    if objective.word_vectors:  # the sparse-row step (lmjax/training/sparse.py)
        sparse_rules = (
            (
                config.optim.name in ("sgd", "adagrad"),
                f"optim.name={config.optim.name!r}",
                "'sgd' or 'adagrad'",
            ),
            (not config.optim.grad_clip, f"optim.grad_clip={config.optim.grad_clip}", "0"),
            (config.mesh.engine == "jit", f"mesh.engine={config.mesh.engine!r}", "'jit'"),
        )
        for ok, setting, use in sparse_rules:
            if not ok:
                raise InputError(
                    f"{setting}: word vectors train with sparse SGD or AdaGrad updates of the rows a batch "
                    f"reads (lmjax/training/sparse.py); use {use}"
                )
    elif config.optim.updates_per_step != 1:
        raise InputError(
            f"optim.updates_per_step={config.optim.updates_per_step} applies to word vectors' sparse step; "
            "set it to 1 (several batches per update: optim.grad_accum_steps)"
        )


def _smoothed(loss: Callable, **from_train_config: str) -> Callable[[ConfigDict], Callable]:
    """A loss factory: label smoothing and the named train.* settings bound."""

    def make(train_config: ConfigDict) -> Callable:
        extra = {arg: train_config[key] for arg, key in from_train_config.items()}
        return functools.partial(loss, label_smoothing=train_config.label_smoothing, **extra)

    return make


def target_counts(outputs: dict, batch: dict) -> dict:
    """How often each token is a target (of either direction for ELMo): the best constant prediction is the
    unigram baseline (evaluation reports its accuracy as unigram_accuracy)."""
    counts_V = (
        jnp.zeros(outputs["logits"].shape[-1]).at[batch["targets"].ravel()].add(batch["weights"].ravel())
    )
    if "prev_targets" in batch:
        counts_V = counts_V.at[batch["prev_targets"].ravel()].add(batch["prev_weights"].ravel())
    return {"target_counts": counts_V}


def _token_shapes(data: ConfigDict, B: int) -> Shapes:
    L = data.seq_len
    return {"inputs": ((B, L), np.int32), "targets": ((B, L), np.int32), "weights": ((B, L), np.float32)}


def _lm_shapes(data: ConfigDict, B: int) -> Shapes:
    L = data.seq_len
    return _token_shapes(data, B) | {"document_ids": ((B, L), np.int32), "positions": ((B, L), np.int32)}


def _bilm_shapes(data: ConfigDict, B: int) -> Shapes:
    L = data.seq_len
    return _lm_shapes(data, B) | {
        "prev_targets": ((B, L), np.int32),
        "prev_weights": ((B, L), np.float32),
        "chars": ((B, L, data.max_chars), np.int32),
    }


def _mlm_shapes(data: ConfigDict, B: int) -> Shapes:
    L = data.seq_len
    nsp = {"nsp_labels": ((B,), np.int32)} if data.nsp else {}
    return _token_shapes(data, B) | {"segments": ((B, L), np.int32), "input_mask": ((B, L), np.int32)} | nsp


def _span_shapes(data: ConfigDict, B: int) -> Shapes:
    L, T = data.seq_len, pipeline.span_lengths(data)[1]
    return {
        "inputs": ((B, L), np.int32),
        "input_mask": ((B, L), np.int32),
        "input_document_ids": ((B, L), np.int32),
        "input_positions": ((B, L), np.int32),
        "decoder_inputs": ((B, T), np.int32),
        "decoder_document_ids": ((B, T), np.int32),
        "decoder_positions": ((B, T), np.int32),
        "targets": ((B, T), np.int32),
        "weights": ((B, T), np.float32),
    }


def _sentence_shapes(data: ConfigDict, B: int) -> Shapes:
    L = data.seq_len
    return {"inputs": ((B, L), np.int32), "input_mask": ((B, L), np.int32), "weights": ((B,), np.float32)}


def _word_pair_shapes(cbow: bool) -> Callable[[ConfigDict, int], Shapes]:
    def shapes(data: ConfigDict, B: int) -> Shapes:
        W = 2 * data.window
        inputs = (
            {"inputs": ((B, W), np.int32), "input_mask": ((B, W), np.float32)}
            if cbow
            else {"inputs": ((B,), np.int32)}
        )
        return inputs | {
            "targets": ((B,), np.int32),
            "negatives": ((B, data.negatives), np.int32),
            "weights": ((B,), np.float32),
        }

    return shapes


def _glove_shapes(data: ConfigDict, B: int) -> Shapes:
    return {
        "rows": ((B,), np.int32),
        "cols": ((B,), np.int32),
        "counts": ((B,), np.float32),
        "weights": ((B,), np.float32),
    }


def _check_span_lengths(config: ConfigDict) -> None:
    target_len = pipeline.span_lengths(config.data)[1]
    if target_len > config.model.max_len:
        raise InputError(
            f"span corruption of {config.data.seq_len}-token inputs makes {target_len}-token "
            f"targets, longer than model.max_len={config.model.max_len}; raise model.max_len"
        )


def _check_dropout_views(config: ConfigDict) -> None:
    if not config.model.dropout > 0:
        raise InputError(
            "train.objective='contrastive' makes a text's two views by dropout; set model.dropout > 0 "
            "(SimCSE: 0.1)"
        )


def _check_word_tokenizer(config: ConfigDict) -> None:
    if config.data.tokenizer != "word":
        raise InputError(
            f"train.objective={config.train.objective!r} learns vectors of words; set data.tokenizer='word'"
        )


register(
    Objective(
        "causal_lm",
        ("decoder", "rnn"),
        _smoothed(losses.language_model),
        _lm_shapes,
        examples=pipeline.lm_examples,
        eval_stats=target_counts,
    )
)
register(
    Objective(
        "bilm",
        ("elmo",),
        _smoothed(losses.bidirectional_lm),
        _bilm_shapes,
        examples=pipeline.bilm_examples,
        batches=pipeline.with_chars,
        eval_stats=target_counts,
    )
)
register(
    Objective(
        "mlm",
        ("encoder",),
        _smoothed(losses.masked_lm),
        _mlm_shapes,
        examples=pipeline.mlm_examples,
        one_per_document=True,
        eval_stats=target_counts,
    )
)
register(
    Objective(
        "span_corruption",
        ("encoder_decoder",),
        _smoothed(losses.language_model),
        _span_shapes,
        examples=pipeline.span_examples,
        eval_stats=target_counts,
        check=_check_span_lengths,
    )
)
register(
    Objective(
        "contrastive",
        ("encoder",),
        _smoothed(losses.info_nce, temperature="temperature"),
        _sentence_shapes,
        examples=pipeline.sentence_examples,
        eval_dropout=True,
        check=_check_dropout_views,
    )
)
for _cbow in (False, True):
    register(
        Objective(
            "cbow" if _cbow else "skipgram",
            ("word2vec",),
            _smoothed(losses.negative_sampling),
            _word_pair_shapes(_cbow),
            dataset=pipeline.word_pairs(_cbow),
            word_vectors=True,
            check=_check_word_tokenizer,
        )
    )
register(
    Objective(
        "glove",
        ("glove",),
        _smoothed(losses.glove, x_max="glove_x_max", alpha="glove_alpha"),
        _glove_shapes,
        dataset=pipeline.cooccurrences,
        word_vectors=True,
        check=_check_word_tokenizer,
    )
)


def task_loss(
    head: str, label_smoothing: float = 0.0
) -> Callable[[dict, dict], tuple[jax.Array, losses.Stats]]:
    """The loss of a fine-tuning task head (lmjax.models.heads)."""
    return functools.partial(losses.TASK_LOSSES[head], label_smoothing=label_smoothing)
