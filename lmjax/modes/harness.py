"""--config.mode=harness: a decoder (finetune.init, or the workdir's run) on harness.tasks with
lm-evaluation-harness; the scores go to results.json.

  python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/harness \
      --config.mode=harness --config.finetune.init=smollm2-135m-instruct \
      --config.harness.include_path=experiments/harness --config.harness.tasks=rt_sentiment,analogies
"""

from __future__ import annotations

import time
from typing import Mapping

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, storage
from lmjax.errors import InputError
from lmjax.evaluation import harness
from lmjax.training import pretrained


def run(config: ConfigDict, workdir: str | epath.PathLike, overrides: Mapping[str, object] = {}) -> dict:
    """--config.mode=harness: finetune.init (or the workdir's run) on harness.tasks; results.json."""
    harness.require("mode=harness")
    tasks = harness.tasks_of(config.harness.tasks)
    if not tasks:
        raise InputError("mode=harness needs harness.tasks (comma-separated lm-eval task names)")
    started = time.perf_counter()
    graphdef, params, tok, source = pretrained.load_decoder(config, workdir)
    max_len = nnx.merge(graphdef, params).max_len
    lm = harness.make_lm(graphdef, params, tok, max_len, config.harness)
    result = harness.evaluate(lm, config.harness, tasks)
    result["seconds"] = time.perf_counter() - started
    workdir = storage.workdir(workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        path = checkpoint.write_results(workdir, result)
        scores = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("harness/"))
        print(f"{source}: {scores}; {path}", flush=True)
    return result
