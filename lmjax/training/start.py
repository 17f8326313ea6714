"""What a run starts from: its resolved config, tokenizer and pretrained model (train.init, finetune.init),
and its first state (random, the pretrained parameters with a fresh optimizer state, or its own
checkpoint)."""

from __future__ import annotations

from typing import Any, Mapping

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import models
from lmjax.data import corpora, mixture, tokenizers
from lmjax.errors import InputError
from lmjax.training import loop, prepare, pretrained


def resolve_pretraining(
    config: ConfigDict, workdir: epath.Path, corpus: corpora.Corpus, overrides: Mapping[str, object]
) -> tuple[ConfigDict, tokenizers.Tokenizer, pretrained.Pretrained | None]:
    """The run's config, tokenizer and, with train.init, the pretrained model it continues: its architecture
    (the run keeps its own dropout, remat, attention and scan_layers) and its tokenizer."""
    pre = None
    if config.train.init:
        pre = pretrained.load(config.train.init, "train.init")
        keep = (*prepare.RUN_SETTINGS, "scan_layers")
        config = pretrained.adopt(config, pre, "train.init", overrides, keep)
        tok = pretrained.use_tokenizer(config, pre, "train.init", workdir)
    else:
        tok = prepare.prepare_tokenizer(config, workdir, corpus)
    config = prepare.resolve_model_config(config, tok, workdir)
    if pre is not None:
        prepare.check_model(config)
    return config, tok, pre


def fresh_optimizer(engine: loop.Engine, state: loop.TrainState) -> loop.TrainState:
    """`state` with the optimizer state made anew for its parameters (init made it for random ones)."""
    opt_init = jax.jit(engine.tx.init, out_shardings=engine.state_shardings.opt_state)
    return state.replace(opt_state=opt_init(state.params))


def pretraining_state(engine: loop.Engine, pre: pretrained.Pretrained | None) -> loop.TrainState:
    """A new run's state: random, or the pretrained parameters with a fresh optimizer state."""
    state = engine.init(jax.random.PRNGKey(engine.config.seed))
    if pre is None:
        return state
    params = pre.params()
    if engine.config.model.scan_layers:  # pretrained models come in the per-block layout
        params = models.with_layout(pre.model_config, params, scanned=True)[1]
    params = pretrained.place(state.params, params, f"train.init={engine.config.train.init!r}")
    return fresh_optimizer(engine, state.replace(params=params))


def resolve_finetuning(
    config: ConfigDict, workdir: epath.Path, overrides: Mapping[str, object] = {}
) -> tuple[ConfigDict, tokenizers.Tokenizer, pretrained.Pretrained | None, corpora.Corpus | None]:
    """The run's config with the model of finetune.init, its tokenizer (checked against the pretraining
    stream's), the pretrained source and the pretraining corpus (None when nothing reads it). `overrides`:
    the command line's --config.* values, which must not contradict finetune.init's architecture."""
    pre = pretrained.load(config.finetune.init) if config.finetune.init else None
    if pre is not None:
        config = pretrained.adopt(config, pre, "finetune.init", overrides)
    else:
        config = ConfigDict(config.to_dict())
    needs_corpus = (
        config.finetune.pretrain_lambda > 0 or prepare.scores_pretraining(config.model) or pre is None
    )
    corpus = mixture.load_corpus(config.data) if needs_corpus else None
    if pre is None:
        tok = prepare.prepare_tokenizer(config, workdir, corpus)
    else:
        tok = pretrained.use_tokenizer(config, pre, "finetune.init", workdir)
    if config.model.scan_layers:
        raise InputError(
            "model.scan_layers=True is for pretraining; fine-tuning addresses blocks by index (layer-wise "
            "learning rates, freezing, LoRA): set model.scan_layers=False (a scanned finetune.init converts)"
        )
    config = prepare.resolve_model_config(config, tok, workdir)
    prepare.check_model(config)
    return config, tok, pre, corpus


def finetuning_state(
    run: loop.Run,
    engine: loop.Engine,
    pre: pretrained.Pretrained | None,
    task_iter: Any,
    pretrain_iter: Any | None,
):
    """(the state to train from, the starting point): the pretrained backbone under a new head, which anchors
    L2-SP and gives the 'before' pretraining loss; the state is the run's checkpoint when it resumes."""
    fresh = engine.init(jax.random.PRNGKey(engine.config.seed))
    if pre is not None:
        fresh = fresh.replace(params=load_backbone(fresh.params, pre.params()))
    if run.start:
        return run.restore(engine, pretrain_iter, task_data=task_iter), fresh
    if pre is not None:
        return fresh_optimizer(engine, fresh), fresh
    return fresh, fresh


def load_backbone(params: nnx.State, backbone: nnx.State) -> nnx.State:
    """`params` with params['backbone'] replaced by `backbone` (placed like the parameters it replaces)."""
    params["backbone"] = pretrained.place(params["backbone"], backbone)
    return params
