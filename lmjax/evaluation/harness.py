"""lm-evaluation-harness in lmjax: --config.mode=harness (lmjax/modes/harness.py) scores a model
(finetune.init, or the workdir's run) on harness.tasks with `evaluate`; train.harness_tasks does the same
every train.harness_every steps of a run (pretraining or fine-tuning a decoder, `periodic`), into
metrics.jsonl and TensorBoard as harness/<task>/<metric>. Tasks come from the harness's catalogue (which
needs a network for their data) or from YAML files in harness.include_path (experiments/harness/ ships some
that run offline).

  python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/harness \
      --config.mode=harness --config.finetune.init=smollm2-135m-instruct \
      --config.harness.include_path=experiments/harness --config.harness.tasks=rt_sentiment,analogies

The harness is an optional extra: pip install 'lmjax[eval]'.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Callable

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError, MissingInput

EXTRA = "pip install 'lmjax[eval]' (lm-eval with its API extra; make test installs it)"


def require(what: str) -> None:
    if importlib.util.find_spec("lm_eval") is None:
        raise MissingInput(f"{what} needs lm-evaluation-harness: {EXTRA}")


def tasks_of(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


@functools.cache
def task_manager(include_path: str | None):
    """The harness's task index (its catalogue and include_path's YAML files): built once, it reads every
    task file the harness ships."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path)


def evaluate(lm, settings: ConfigDict, tasks: list[str]) -> dict[str, float]:
    """harness/<task>/<metric> of `lm` (lmjax.evaluation.lm.LmjaxLM) on `tasks`."""
    import lm_eval

    include = settings.include_path or None
    if include and not epath.Path(include).is_dir():
        raise MissingInput(f"harness.include_path={include!r} is not a directory of task YAML files")
    manager = task_manager(include)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise InputError(
            f"harness task {unknown[0]!r} is unknown to lm-evaluation-harness"
            + (
                ""
                if include
                else "; set harness.include_path for YAML tasks of your own (experiments/harness)"
            )
        )
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        limit=settings.limit or None,
        num_fewshot=None if settings.num_fewshot < 0 else settings.num_fewshot,
        bootstrap_iters=0,
        log_samples=False,
    )
    return {
        f"harness/{task}/{name.split(',')[0]}": float(value)
        for task, metrics in out["results"].items()
        for name, value in metrics.items()
        if isinstance(value, (int, float)) and "stderr" not in name and name not in ("alias", "sample_len")
    }


def make_lm(graphdef: nnx.GraphDef, params: nnx.State, tok, max_len: int, settings: ConfigDict):
    from lmjax.evaluation.lm import LmjaxLM

    return LmjaxLM(graphdef, params, tok, max_len=max_len, batch_size=settings.batch_size)


def periodic(config: ConfigDict, tok, graphdef: nnx.GraphDef) -> Callable[[int, nnx.State, bool], dict]:
    """The training loop's harness evaluation: (step, decoder parameters, final) -> harness/... at every
    train.harness_every steps (0: at the end only) and at the end; {} without train.harness_tasks."""
    tasks = tasks_of(config.train.harness_tasks)
    if not tasks:
        return lambda step, params, final: {}
    require("train.harness_tasks")
    if config.model.family != "decoder":
        raise InputError(
            f"train.harness_tasks scores decoders; this run trains a {config.model.family} model"
        )
    if jax.process_count() > 1:
        raise InputError("train.harness_tasks runs in one process; score the run's workdir with mode=harness")
    lm = None

    def run(step: int, params: nnx.State, final: bool) -> dict:
        nonlocal lm
        every = config.train.harness_every
        if not (final or (every and step % every == 0)):
            return {}
        if lm is None:
            lm = make_lm(graphdef, params, tok, config.model.max_len, config.harness)
        lm.set_params(params)
        return evaluate(lm, config.harness, tasks)

    return run
