"""A fine-tuning run's evaluation: task metrics over whole splits (from predictions for tasks from files,
written to predictions/<split>.jsonl), and the backbone's held-out pretraining loss (what forgetting
costs)."""

from __future__ import annotations

from typing import Callable

import jax
from etils import epath
from flax import nnx

from lmjax import sharding
from lmjax.data import corpora, tokenizers
from lmjax.models import heads
from lmjax.tasks import catalog, qa_windows
from lmjax.tasks import generate as task_generate
from lmjax.tasks import pipeline as task_pipeline
from lmjax.tasks import predictions as task_metrics
from lmjax.training import evaluator, finetune, loop, lora, losses


def evaluate_task(
    engine: loop.Engine,
    params: nnx.State,
    task: catalog.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    split: str,
    workdir: epath.Path | None = None,
) -> dict:
    """Task metrics over the whole split (accuracy and macro-F1; exact match and F1 for span QA). A task from
    files is scored from its predictions instead (task_metrics: its loss stays), which go to
    workdir/predictions/<split>.jsonl."""
    if task.kind:
        return predict_task(engine, params, task, tok, head, split, workdir)
    totals = None
    for batch in task_pipeline.eval_batches(task, tok, split, **finetune.task_batching(engine, tok, head)):
        stats = engine.eval_step(params, sharding.global_batch(batch, engine.layout))
        totals = evaluator.add(totals, stats)
    return {f"{split}/{k}": float(v) for k, v in losses.summarize(totals).items() if k != "perplexity"}


def predict_task(
    engine: loop.Engine,
    params: nnx.State,
    task: catalog.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    split: str,
    workdir: epath.Path | None,
) -> dict:
    """The loss and the library metrics of every prediction of a task from files, in the split's order (the
    generation kinds: the loss teacher-forced, the predictions generated)."""
    batching = finetune.task_batching(engine, tok, head)
    source = task.sources[split]
    rows = task_pipeline.eval_rows(len(source), batching["batch_size"], batching["shard_count"])
    encode = task_pipeline.Encode(task, tok, batching["seq_len"], head)
    totals, predictions = None, {}
    for batch, global_rows in zip(
        task_pipeline.eval_batches(task, tok, split, **batching), rows, strict=True
    ):
        batch = sharding.global_batch(batch, engine.layout)
        if head in heads.GENERATES:  # the outputs are logits over the vocabulary: left on the device
            stats = engine.eval_step(params, batch)
        else:
            stats, outputs = jax.device_get(engine.predict_step(params, batch))
            for row, i in enumerate(map(int, global_rows)):
                if i < len(source):
                    row_outputs = {k: v[row] for k, v in outputs.items()}
                    predictions[i] = task_metrics.predict(task, encode, source[i], row_outputs)
        totals = evaluator.add(totals, stats)
    if head in heads.GENERATES:
        backbone = lora.merge(params, engine.config.optim)["backbone"]
        predicted = task_generate.generate(engine.config, backbone, task, tok, split)
    else:
        predicted = [predictions[i] for i in range(len(source))]
    predicted, references = qa_windows.by_row(source, predicted)
    if workdir is not None and jax.process_index() == 0:
        task_metrics.write(workdir, split, predicted, references)
    result = {"loss": float(losses.summarize(totals)["loss"])}
    result |= task_metrics.score(task.kind, predicted, references)
    return {f"{split}/{k}": v for k, v in result.items()}


def evaluate_pretraining(
    engine: loop.Engine, params: nnx.State, corpus: corpora.Corpus, tok: tokenizers.Tokenizer
) -> dict:
    """The backbone's pretraining loss on held-out text (the corpus's validation split): what forgetting
    costs."""
    backbone = lora.merge(params, engine.config.optim)["backbone"]
    result = evaluator.evaluate_lm(
        engine.backbone_eval_step, engine.layout, engine.config, backbone, corpus, tok
    )
    return {k.replace("eval/", "pretrain/heldout_"): v for k, v in result.items() if "perplexity" not in k}


def make_evaluate(
    engine: loop.Engine,
    task: catalog.Task,
    tok: tokenizers.Tokenizer,
    head: str,
    corpus: corpora.Corpus | None,
    workdir: epath.Path,
    periodic: Callable[[int, nnx.State, bool], dict] = lambda step, backbone, final: {},
) -> Callable[[int, loop.TrainState, bool], dict]:
    """The loop's evaluation: the task's validation split (and its test split at the end), the backbone's
    held-out pretraining loss, and what the mode hands in as `periodic(step, backbone, final)` (the harness
    on a decoder's backbone, LoRA merged)."""

    def evaluate(step: int, state: loop.TrainState, final: bool) -> dict:
        result = {}
        for split in ("validation", "test") if final else ("validation",):
            if split in task.sources:
                result |= evaluate_task(engine, state.params, task, tok, head, split, workdir)
        if engine.backbone_eval_step:
            result |= evaluate_pretraining(engine, state.params, corpus, tok)
        if engine.config.train.harness_tasks:
            result |= periodic(step, lora.merge(state.params, engine.config.optim)["backbone"], final)
        return result

    return evaluate
