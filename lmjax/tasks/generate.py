"""Evaluation by generation for the generation kinds of task files (seq2seq, chat): each row of a split
generates its answer from its prompt (a decoder: prompts.prompt_ids; an encoder-decoder: from the source),
greedily (task.num_beams=1) or by beam search, at most task.max_new_tokens tokens, up to EOS. Rows go in
batches of task.generate_batch_size (0: task.batch_size), all prompts of a split padded to one length, so a
split compiles once.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from lmjax import models
from lmjax.errors import InputError
from lmjax.models import decode
from lmjax.tasks import prompts
from lmjax.tasks.catalog import Task


def inputs_of(rows: list, tok, config: ConfigDict) -> list[np.ndarray]:
    """Each row's prompt (a decoder: its last tokens that leave room for the answer) or its source with EOS
    (an encoder-decoder: at most task.seq_len tokens)."""
    if config.model.family == "encoder_decoder":
        room = min(config.task.seq_len, config.model.max_len) - 1
        return [np.append(tok.encode(row["source"])[:room], tok.eos_id).astype(np.int32) for row in rows]
    room = config.model.max_len - config.task.max_new_tokens
    if room < 1:
        raise InputError(
            f"task.max_new_tokens={config.task.max_new_tokens} leaves no room for a prompt in the model's "
            f"{config.model.max_len} positions; ask for fewer tokens"
        )
    return [prompts.prompt_ids(tok, config.task.prompt, row)[-room:] for row in rows]


def generate(config: ConfigDict, backbone: nnx.State, task: Task, tok, split: str) -> list[str]:
    """The generated text of every row of `split`, in order (`backbone`: the model.* parameters, LoRA
    merged)."""
    settings = config.task
    B = settings.generate_batch_size or settings.batch_size
    graphdef = models.graphdef(config.model)
    rows = inputs_of(task.sources[split], tok, config)
    kw = dict(
        num_tokens=settings.max_new_tokens, eos_id=tok.eos_id, pad_id=tok.pad_id, pad_to=max(map(len, rows))
    )
    encoder_decoder = config.model.family == "encoder_decoder"
    texts = []
    for begin in range(0, len(rows), B):
        batch = rows[begin : begin + B]
        batch += [batch[0]] * (B - len(batch))  # one batch shape a split
        prompts_, inputs = (None, batch) if encoder_decoder else (batch, None)
        if settings.num_beams > 1:
            out = decode.beam_search(
                graphdef, backbone, prompts_, inputs=inputs, num_beams=settings.num_beams, **kw
            )[0]
        else:
            key = jax.random.PRNGKey(0)
            out = decode.generate(graphdef, backbone, prompts_, key, inputs=inputs, temperature=0.0, **kw)
        texts += [tok.decode(until_eos(row, tok.eos_id)) for row in out[: len(rows) - begin]]
    return texts


def until_eos(ids: np.ndarray, eos_id: int) -> np.ndarray:
    ends = np.flatnonzero(ids == eos_id)
    return ids[: ends[0]] if ends.size else ids
