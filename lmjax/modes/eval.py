"""--config.mode=eval: a pretrained model's loss and perplexity on a corpus's validation split, no training.

The model is finetune.init (an lmjax workdir, a Hugging Face directory, a GGUF file or a shipped model's name:
pretrained.SHIPPED), scored with train.objective on the data.* corpus tokenized by the model's own tokenizer;
the figures go to results.json. With --config.serve.quantize=int8 the weights are first rounded as int8
serving stores them (lmjax/serving/quantize.py).

  python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/eval \
      --config.mode=eval --config.finetune.init=path/to/hf_dir
"""

from __future__ import annotations

import time
from typing import Mapping

import jax
from etils import epath
from ml_collections import ConfigDict

from lmjax import checkpoint, storage
from lmjax.errors import InputError
from lmjax.serving import quantize
from lmjax.training import evaluator, pretrain, pretrained, start


def run(config: ConfigDict, workdir: str | epath.PathLike, overrides: Mapping[str, object] = {}) -> dict:
    """Evaluates finetune.init: {'eval/loss', 'eval/perplexity', ...}, also written to results.json."""
    if not config.finetune.init:
        raise InputError(
            "mode=eval scores a pretrained model; set --config.finetune.init (an lmjax workdir, a Hugging "
            f"Face directory, a GGUF file or one of {sorted(pretrained.SHIPPED)})"
        )
    started, workdir = time.perf_counter(), storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config, tok, pre, corpus = start.resolve_finetuning(config, workdir, overrides)
    engine = pretrain.setup(config)
    params = pre.params()
    if config.serve.quantize == "int8":
        params = quantize.rounded(params)
    params = jax.device_put(params, engine.state_shardings.params)
    result = evaluator.evaluate(engine, params, corpus, tok)
    result |= {"seconds": time.perf_counter() - started}
    if jax.process_index() == 0:
        path = checkpoint.write_results(workdir, result)
        scores = " ".join(f"{k}={v:.4f}" for k, v in result.items() if k.startswith("eval/"))
        print(
            f"{config.finetune.init} on {corpus.name} ({config.train.objective}): {scores}; {path}",
            flush=True,
        )
    return result
