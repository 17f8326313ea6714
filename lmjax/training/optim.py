"""The optax chain: AdamW (or plain SGD / AdaGrad, as word2vec and GloVe train) with warmup + cosine or linear
decay, global-norm clipping and a weight-decay mask; for fine-tuning also frozen parameters, layer-wise
learning-rate decay and a learning rate of its own for new heads."""

from __future__ import annotations

import re
from typing import Any

import jax
import optax
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError

OPTIMIZERS = ("adamw", "sgd", "adagrad")
SCHEDULES = ("cosine", "linear")


def check(optim_config: ConfigDict) -> None:
    """The optim section against the optimizers and schedules there are."""
    if optim_config.name not in OPTIMIZERS or optim_config.schedule not in SCHEDULES:
        raise InputError(
            f"optim.name={optim_config.name!r} / optim.schedule={optim_config.schedule!r}: use a name in "
            f"{OPTIMIZERS} and a schedule in {SCHEDULES}"
        )


def schedule(optim_config: ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to optim.learning_rate, then cosine (or linear) decay to optim.min_learning_rate
    at num_steps."""
    if optim_config.schedule == "linear":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, optim_config.learning_rate, optim_config.warmup_steps),
                optax.linear_schedule(
                    optim_config.learning_rate,
                    optim_config.min_learning_rate,
                    max(num_steps - optim_config.warmup_steps, 1),
                ),
            ],
            [optim_config.warmup_steps],
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_config.learning_rate,
        warmup_steps=optim_config.warmup_steps,
        decay_steps=max(num_steps, optim_config.warmup_steps + 1),
        end_value=optim_config.min_learning_rate,
    )


def path_str(path: tuple) -> str:
    """'backbone/blocks/0/attn/query_DHK' for a pytree path (what optim.freeze patterns match)."""
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    return "/".join(keys[:-1] if keys and keys[-1] == ".value" else keys)  # a Variable's array: its own path


def decays(path: tuple, decay_embeddings: bool) -> bool:
    """Weight decay applies to matrices; never to norm scales or biases; to embeddings only if asked."""
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "scale" or "bias" in name:
        return False
    if "embed" in name:  # token, position, segment tables and T5's relative-bias table
        return decay_embeddings
    return True


def per_param(params: Any, fn) -> Any:
    """fn(path) for every parameter, in the structure of `params` (nnx Variables or plain arrays)."""

    def one(path, x):
        return x.replace(fn(path)) if isinstance(x, nnx.Variable) else fn(path)

    return jax.tree_util.tree_map_with_path(one, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


def decay_mask(params: Any, decay_embeddings: bool) -> Any:
    return per_param(params, lambda path: decays(path, decay_embeddings))


def frozen(optim_config: ConfigDict, path: tuple) -> bool:
    """optim.freeze: comma-separated regular expressions matched at the start of a parameter's path; with
    LoRA on (optim.lora_rank > 0), the whole backbone too (its adapters, under lora/, train)."""
    name = path_str(path)
    if optim_config.get("lora_rank", 0) > 0 and name.startswith("backbone/"):
        return True
    return any(re.match(p.strip(), name) for p in optim_config.freeze.split(",") if p.strip())


def frozen_mask(optim_config: ConfigDict, params: Any) -> Any:
    return per_param(params, lambda path: frozen(optim_config, path))


def depth(path: tuple, num_layers: int, decoder_offset: int = 0) -> int:
    """0 for embeddings, i + 1 for the i-th block (decoder blocks after the decoder_offset encoder blocks),
    num_layers + 1 for everything above the blocks."""
    keys = path_str(path).split("/")
    for i, k in enumerate(keys[:-1]):
        if k in ("blocks", "encoder_blocks", "decoder_blocks"):
            return int(keys[i + 1]) + 1 + (decoder_offset if k == "decoder_blocks" else 0)
    return (
        0 if any("embed" in k for k in keys) else num_layers + 1
    )  # tables, their norm, relative-position bias


def _label(optim_config: ConfigDict, num_layers: int, decoder_offset: int, path: tuple) -> str:
    if frozen(optim_config, path):
        return "frozen"
    if path_str(path).startswith("head/"):
        return "head"
    return f"depth{depth(path, num_layers, decoder_offset)}"


def make(
    optim_config: ConfigDict, num_steps: int, model: ConfigDict | None = None
) -> optax.GradientTransformation:
    """With layer-wise decay a parameter's learning rate is scaled by layer_decay ** (N + 1 - depth), N the
    model's blocks (encoder + decoder); new heads (parameters under head/) take head_learning_rate; frozen
    parameters get no update and no optimizer state."""
    base = schedule(optim_config, num_steps)
    decoder_offset = model.num_layers if model is not None else 0
    num_layers = decoder_offset + (
        (model.num_decoder_layers or model.num_layers)
        if model is not None and model.family == "encoder_decoder"
        else 0
    )

    def adamw(scale: float, rate: optax.Schedule = base) -> optax.GradientTransformation:
        """The optimizer at `scale` times the rate schedule."""
        if optim_config.name == "sgd":  # word2vec's update; weight decay does not apply
            return optax.sgd(lambda step: scale * rate(step))
        if optim_config.name == "adagrad":  # GloVe's
            return optax.adagrad(
                lambda step: scale * rate(step),
                initial_accumulator_value=optim_config.initial_accumulator,
                eps=optim_config.eps,
            )
        return optax.adamw(
            lambda step: scale * rate(step),
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
            mask=lambda p: decay_mask(p, optim_config.decay_embeddings),
        )

    clip = optax.clip_by_global_norm(optim_config.grad_clip) if optim_config.grad_clip else optax.identity()
    plain = not optim_config.freeze and not optim_config.get("lora_rank", 0)
    if plain and optim_config.layer_decay == 1.0 and not optim_config.head_learning_rate:
        return optax.chain(clip, adamw(1.0))
    groups = {
        f"depth{d}": adamw(optim_config.layer_decay ** (num_layers + 1 - d)) for d in range(num_layers + 2)
    }
    # the head's schedule has the backbone's shape at head_learning_rate (the backbone's rate may be 0)
    lr, head_lr = optim_config.learning_rate, optim_config.head_learning_rate or optim_config.learning_rate
    head_min = optim_config.min_learning_rate * head_lr / lr if lr else 0.0
    head_config = ConfigDict(
        optim_config.to_dict() | {"learning_rate": head_lr, "min_learning_rate": head_min}
    )
    groups |= {"head": adamw(1.0, schedule(head_config, num_steps)), "frozen": optax.set_to_zero()}

    def labels(p):
        return per_param(p, lambda path: _label(optim_config, num_layers, decoder_offset, path))

    return optax.chain(
        optax.masked(optax.set_to_zero(), lambda p: frozen_mask(optim_config, p)),
        clip,
        optax.multi_transform(groups, labels),
    )
