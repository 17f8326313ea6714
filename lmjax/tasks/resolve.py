"""Which task a fine-tuning run trains on and with which head: a named task or task.kind from files, and the
head its model family fine-tunes it with."""

from __future__ import annotations

from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.tasks import catalog
from lmjax.tasks import files as task_files


def task_and_head(config: ConfigDict) -> tuple[catalog.Task, str]:
    """The run's task dataset (a named one, or task.kind from task.train_file...) and the head it fine-tunes
    with (encoder-decoders: text to text; the generation kinds: the model's own LM head)."""
    if config.task.train_file:
        task = task_files.load(config.task)
    else:
        task = catalog.load(ConfigDict(config.task.to_dict() | {"cache_dir": config.data.cache_dir}))
    family = config.model.family
    if task.spec.head == "generation":
        can = {"decoder": "language_model"} | (
            {"encoder_decoder": "text_to_text"} if task.kind == "seq2seq" else {}
        )
        if family not in can:
            raise InputError(
                f"task.kind={task.kind!r} generates text, which a model.family={family!r} model cannot; "
                f"start from a {' or '.join(can)} model (finetune.init, e.g. smollm2-135m-instruct)"
            )
        return task, can[family]
    if family != "encoder_decoder":
        return task, task.spec.head
    if task.spec.head != "classification" or task.kind:
        raise InputError(
            f"model.family='encoder_decoder' fine-tunes on the named classification tasks only, not "
            f"{f'task.kind={task.kind!r}' if task.kind else task.name}; start from an encoder or a decoder "
            "(finetune.init)"
        )
    return task, "text_to_text"
