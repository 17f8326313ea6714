"""--config.mode=finetune: L_FT = L_task + lambda(step) * L_pretrain (+ L2-SP) from finetune.init, resumed
from the workdir's latest checkpoint; results.json holds the validation and test metrics and the held-out
pretraining loss before and after.

  python -m lmjax.main --config=experiments/configs/finetune_minilm.py --workdir=workdirs/minilm_rt
"""

from __future__ import annotations

import time
from typing import Mapping

import jax
import jax.numpy as jnp
from etils import epath
from ml_collections import ConfigDict

from lmjax import checkpoint, models, parallel, storage
from lmjax.evaluation import harness
from lmjax.tasks import files as task_files
from lmjax.tasks import resolve as task_resolve
from lmjax.training import distill, finetune, loop, pretrained, start, task_eval


def run(config: ConfigDict, workdir: str | epath.PathLike, overrides: Mapping[str, object] = {}) -> dict:
    """Fine-tunes (resuming from the workdir's latest checkpoint); returns the final metrics, also written to
    results.json: validation and test task metrics, and the held-out pretraining loss before and after."""
    started, workdir = time.perf_counter(), storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config, tok, pre, corpus = start.resolve_finetuning(config, workdir, overrides)
    task, head = task_resolve.task_and_head(config)
    task = task_files.for_tokenizer(task, tok, config.task)
    teacher = None
    if distill.enabled(config):  # on the mesh that setup builds from the same devices
        layout = parallel.make_layout(config.mesh)
        teacher = pretrained.load_task_teacher(config, tok, layout, head, task.num_labels)
    engine = finetune.setup(config, task.num_labels, head, teacher=teacher)
    task_iter, pretrain_iter = finetune.streams(engine, task, head, tok, corpus)
    with loop.Run(config, workdir) as run:
        state, fresh = start.finetuning_state(run, engine, pre, task_iter, pretrain_iter)
        anchor = jax.tree.map(jnp.copy, fresh.params["backbone"]) if config.finetune.l2sp else None
        before = {}
        if engine.backbone_eval_step:
            before = task_eval.evaluate_pretraining(engine, fresh.params, corpus, tok)
        del fresh
        run.log(finetune.header(config, engine, task, head, run.start))
        shares = {}
        if engine.teacher is not None:
            run.log(finetune.teacher_report(engine, task, tok, head))
            shares["teacher"] = engine.teacher.forward_seconds
        if before:
            run.writer.scalars(run.start, {f"{k}_before": v for k, v in before.items()})

        def train_step(state):
            batches = [
                None if it is None else engine.device_batch(next(it)) for it in (task_iter, pretrain_iter)
            ]
            return engine.train_step(state, *batches, anchor)

        def save(step: int, state) -> None:
            checkpoint.save(run.mngr, step, state, pretrain_iter, task_data=task_iter)

        backbone_harness = harness.periodic(config, tok, models.graphdef(config.model))
        evaluate = task_eval.make_evaluate(engine, task, tok, head, corpus, workdir, backbone_harness)
        tokens = finetune.tokens_per_step(config)
        state, result = run.loop(state, train_step, evaluate, save, tokens, None, shares)
    if "preempted_at" not in result:
        result |= {f"{k}_before": v for k, v in before.items()}
        result |= {"step": config.train.num_steps, "seconds": time.perf_counter() - started}
        tests = " ".join(f"{k}={v:.4f}" for k, v in sorted(result.items()) if k.startswith("test/"))
        run.write_results(result, f"{tests}; {workdir / checkpoint.RESULTS_FILE}")
    return result
