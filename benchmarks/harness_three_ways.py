"""lm-evaluation-harness on one model three ways, side by side: the harness's own `hf` backend (transformers
reading the same weights), its `local-completions` model against lmjax's server (--config.mode=serve, the
tokenizer detected through the server's endpoints), and lmjax's in-process LM (lmjax/evaluation/lm.py). For
each task: the scores of each route, the largest difference of a sample's log-likelihood (choices of a
multiple-choice task, whole documents of a perplexity task) between each route and `hf`, how many generated
answers differ, and each route's wall time (loading and compiling included; the server's start excluded).

  python benchmarks/harness_three_ways.py --init=smollm2-135m-instruct --max-len=512 \
      --tasks=rt_sentiment,shakespeare_ppl,analogies --limit=100

Every route reads the same windows: the harness gives API models max_length - 1 positions, and the in-process
LM cuts rolling windows as they do; so the server (serve.max_len = --max-len) is given max_length
--max-len + 1, the in-process LM max_len --max-len, and the hf backend max_length --max-len - 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.serving import Server  # noqa: E402


def run(lm, tasks: list[str], limit: int) -> tuple[dict, float]:
    import lm_eval

    from lmjax.evaluation import harness

    start = time.perf_counter()
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=harness.task_manager(str(REPO / "experiments" / "harness")),
        limit=limit,
        bootstrap_iters=0,
        log_samples=True,
    )
    return out, time.perf_counter() - start


def per_sample(out: dict, task: str) -> list:
    """Each sample's responses in document order: log-likelihoods (per choice) or generated texts."""
    rows = []
    for s in sorted(out["samples"][task], key=lambda s: s["doc_id"]):
        rows.extend(r[0][0] if isinstance(r[0], (list, tuple)) else r[0] for r in s["resps"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", default="smollm2-135m-instruct")
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--tasks", default="rt_sentiment,shakespeare_ppl,analogies")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    tasks = args.tasks.split(",")

    from lm_eval.api.registry import get_model

    from lmjax import models
    from lmjax.evaluation.lm import LmjaxLM
    from lmjax.training import pretrained

    path = pretrained.init_path(args.init)
    hf_args = dict(pretrained=str(path.parent), gguf_file=path.name) if path.suffix == ".gguf" else {}
    hf_args = hf_args or dict(pretrained=str(path))
    outs, seconds = {}, {}
    start = time.perf_counter()
    hf = get_model("hf")(  # max_len - 1: the rolling windows the two API-style routes cut
        **hf_args, dtype="float32", device="cpu", max_length=args.max_len - 1, batch_size=args.batch_size
    )
    outs["hf"] = run(hf, tasks, args.limit)[0]
    seconds["hf"] = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(f"{tmp}/serve", args.init, f"--config.serve.max_len={args.max_len}")
        try:
            api = get_model("local-completions")(
                model=server.health["model"],
                base_url=f"{server.url}/v1/completions",
                max_length=args.max_len + 1,
                num_concurrent=1,
                max_retries=1,
            )
            outs["server"], seconds["server"] = run(api, tasks, args.limit)
        finally:
            server.stop()
    start = time.perf_counter()
    pre = pretrained.load(args.init)
    model_config = pretrained.model_config_of(pre)
    graphdef = models.graphdef(model_config)
    lm = LmjaxLM(graphdef, pre.params(), pre.tokenizer, max_len=args.max_len, batch_size=args.batch_size)
    outs["in-process"] = run(lm, tasks, args.limit)[0]
    seconds["in-process"] = time.perf_counter() - start  # loading the weights included, as hf's

    print(
        "| task | metric | hf (transformers) | lmjax server | lmjax in process | largest sample difference |"
    )
    print("|---|---|---|---|---|---|")
    for task in tasks:
        ref = per_sample(outs["hf"], task)
        diffs = []
        for route in ("server", "in-process"):
            got = per_sample(outs[route], task)
            if ref and isinstance(ref[0], str):
                diffs.append(f"{route}: {sum(a != b for a, b in zip(got, ref, strict=True))} texts differ")
            else:
                diffs.append(f"{route}: {np.max(np.abs(np.asarray(got) - np.asarray(ref))):.2e}")
        for metric, value in outs["hf"]["results"][task].items():
            if "stderr" in metric or not isinstance(value, (int, float)) or metric.startswith("sample_len"):
                continue
            row = [f"{outs[r]['results'][task][metric]:.4f}" for r in ("hf", "server", "in-process")]
            print(f"| {task} | {metric.split(',')[0]} | {' | '.join(row)} | {'; '.join(diffs)} |")
    print(json.dumps({f"seconds/{k}": round(v, 1) for k, v in seconds.items()}))


if __name__ == "__main__":
    main()
