"""What a run is checked and prepared with before its engine is built: the config against the registries, the
tokenizer (the workdir's own, data.tokenizer_path's or trained), the model config against the workdir's
checkpoint, the batch shapes against the mesh, the fine-tuning model, and the training batches."""

from __future__ import annotations

from typing import Any, Callable

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, models, parallel, sharding
from lmjax import config as config_lib
from lmjax.data import corpora, pipeline, tokenizers
from lmjax.errors import InputError
from lmjax.models import heads
from lmjax.training import distill, lora, objectives, optim


def check_config(config: ConfigDict) -> None:
    """Every check of a config before a run: its values on their own (lmjax.config.validate), then against the
    registries (optimizers, meshes, model families and objectives). The model of a fine-tuning run that starts
    from finetune.init or train.init is checked once it is loaded (check_model)."""
    config_lib.validate(config)
    optim.check(config.optim)
    parallel.check(config.mesh)
    if distill.enabled(config):
        distill.check(config)
    if not ((config.mode in ("finetune", "eval") and config.finetune.init) or config.train.init):
        check_model(config)


def check_model(config: ConfigDict) -> None:
    models.check(config)
    objectives.check(config)


# model settings a run keeps from its own config when it takes a pretrained model's architecture, and may
# change on a checkpoint of the same architecture (resume, fine-tuning)
RUN_SETTINGS = ("dropout", "attention_dropout", "remat", "attention", "share_negatives")


def prepare_tokenizer(
    config: ConfigDict, workdir: epath.Path, corpus: corpora.Corpus
) -> tokenizers.Tokenizer:
    """The run's tokenizer: the workdir's own if it has one, else loaded from data.tokenizer_path or
    trained."""
    saved_dir = workdir / checkpoint.TOKENIZER_DIR
    if saved_dir.is_dir():
        tok = tokenizers.load(saved_dir)
        if tok.kind != config.data.tokenizer and not config.data.tokenizer_path:
            raise InputError(
                f"{workdir} was trained with a {tok.kind} tokenizer but data.tokenizer="
                f"{config.data.tokenizer!r}; use a new --workdir for another tokenizer"
            )
        if config.data.tokenizer_path and (other := tokenizers.differing(config.data.tokenizer_path, tok)):
            raise InputError(
                f"data.tokenizer_path={config.data.tokenizer_path!r} ({other.kind}, {other.vocab_size} "
                f"tokens) does not match the vocabulary this workdir was trained with ({tok.kind}, "
                f"{tok.vocab_size} tokens); drop data.tokenizer_path or use a new --workdir"
            )
        return tok
    if config.data.tokenizer_path:
        tok = tokenizers.load(epath.Path(config.data.tokenizer_path))
    else:
        texts = pipeline.tokenizer_texts(corpus, config.data.tokenizer_train_examples)
        tok = tokenizers.train(config.data.tokenizer, texts, config.data.vocab_size, config.data.min_count)
    if jax.process_index() == 0:
        tok.save(saved_dir)
    return tok


def resolve_model_config(config: ConfigDict, tok: tokenizers.Tokenizer, workdir: epath.Path) -> ConfigDict:
    """Fills model.vocab_size from the tokenizer and checks the workdir holds no other architecture."""
    config = ConfigDict(config.to_dict())  # unlocked copy
    if not config.model.vocab_size:
        config.model.vocab_size = tok.vocab_size
    elif config.model.vocab_size < tok.vocab_size:
        raise InputError(
            f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
            f"{tok.vocab_size} tokens; set model.vocab_size=0 to take the tokenizer's size"
        )
    saved = checkpoint.load_config(workdir)
    if saved is not None and checkpoint.saved_steps(workdir):
        mine = config.model.to_dict()
        diff = {
            k: (saved["model"][k], mine[k])
            for k in mine
            if k not in RUN_SETTINGS and k in saved["model"] and saved["model"][k] != mine[k]
        }
        if diff:
            desc = ", ".join(
                f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in sorted(diff.items())
            )
            raise InputError(
                f"{workdir} holds a checkpoint of a different architecture ({desc}); "
                f"use a new --workdir or the run's own config"
            )
    return config


def train_data(
    config: ConfigDict, corpus: corpora.Corpus, tok: tokenizers.Tokenizer, objective: objectives.Objective
) -> Any:
    """This process's share of the training batches, an iterator whose state checkpoints save."""
    shard = dict(shard_index=jax.process_index(), shard_count=jax.process_count())
    batch_size = config.data.batch_size // jax.process_count()
    return iter(
        pipeline.train_dataset(
            corpus, tok, config.data, objective=objective, seed=config.seed, batch_size=batch_size, **shard
        )
    )


def scores_pretraining(model_config: ConfigDict) -> bool:
    """Whether the backbone has a head for its pretraining objective (an encoder may have been saved
    without)."""
    return model_config.family != "encoder" or model_config.encoder_heads != "none"


def check_divisible(
    key: str, batch_size: int, layout: sharding.Layout, parts: int = 1, what: str = ""
) -> None:
    """`key`=batch_size must split over the batch shards (mesh data x fsdp) x `parts` (`what` they are)."""
    if batch_size % (layout.batch_shards * parts):
        by = f"the batch shards of mesh {dict(layout.mesh.shape)} ({layout.batch_shards})" + (
            f" x {parts} {what}" if parts > 1 else ""
        )
        raise InputError(f"{key}={batch_size} is not divisible by {by}; change the batch size")


def task_model(config: ConfigDict, num_labels: int, head: str) -> Callable[[nnx.Rngs], nnx.Module]:
    """build(rngs) of a fine-tuning run's model: the backbone of model.* under a new `head`, with LoRA's
    adapters attached when optim.lora_rank is set."""

    def build(rngs: nnx.Rngs) -> nnx.Module:
        model = heads.TaskModel(
            models.build(config.model, rngs),
            head=head,
            num_labels=num_labels,
            pooling=config.task.pooling,
            dropout=config.task.head_dropout,
            rngs=rngs,
        )
        return lora.attach(model, config.optim, rngs) if lora.enabled(config.optim) else model

    return build
