"""Tables and plots of the continued-pretraining and distillation experiments (benchmarks/RESULTS.md), read
from their workdirs' results.json and metrics.jsonl.

  python -m experiments.report replay --runs=runs/continued --out=replay.png
  python -m experiments.report distill --runs=runs/distill --out=distill.png

replay: RUNS holds test_<arm> and val_<arm> (mode=eval of each arm: base, 0, 10, 30, ...); the table gives
each arm's Shakespeare and Wikipedia perplexities and their change from the base model, the plot Wikipedia
perplexity lost against Shakespeare perplexity gained. distill: RUNS holds one workdir per arm; the plot gives
each arm's validation perplexity against steps and against training seconds (evaluation excluded): steps
times the median seconds a step in the log.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from lmjax import metrics


def _ppl(result: dict, prefix: str) -> float:
    (key,) = [k for k in result if k.startswith(f"eval/{prefix}") and k.endswith("/loss")]
    return math.exp(result[key])


def replay(runs: Path, out: Path) -> str:
    arms = sorted(
        (p.name.removeprefix("test_") for p in runs.glob("test_*")),
        key=lambda a: -1 if a == "base" else int(a),
    )
    rows = {}
    for arm in arms:
        for split in ("val", "test"):
            result = json.loads((runs / f"{split}_{arm}" / "results.json").read_text())
            rows[arm, split] = (_ppl(result, "shakespeare"), _ppl(result, "wiki"))
    head = "| replay | Shakespeare val / test | Wikipedia val / test | Shakespeare gained | Wikipedia lost |"
    lines = [head, "|---|---|---|---|---|"]
    base = rows["base", "test"]
    for arm in arms:
        (sv, wv), (st, wt) = rows[arm, "val"], rows[arm, "test"]
        name = "base model" if arm == "base" else f"{arm}%"
        gained, lost = base[0] - st, wt - base[1]
        lines.append(f"| {name} | {sv:.2f} / {st:.2f} | {wv:.2f} / {wt:.2f} | {gained:+.2f} | {lost:+.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    for arm in arms:
        if arm == "base":
            continue
        st, wt = rows[arm, "test"]
        ax.scatter(base[0] - st, wt - base[1])
        ax.annotate(f"{arm}% replay", (base[0] - st, wt - base[1]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("Shakespeare test perplexity gained")
    ax.set_ylabel("Wikipedia test perplexity lost")
    ax.set_title("SmolLM2-135M continued on Shakespeare")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return "\n".join(lines)


def curve(workdir: Path) -> tuple[list[int], list[float], list[float]]:
    """(steps, training seconds, validation perplexity) at each evaluation of a run; the seconds are steps
    times the median seconds a step over the log's intervals (the first, which compiles, left out), so that
    an interval slowed by another process on the machine does not count."""
    rows = list(metrics.read_jsonl(workdir))
    config = json.loads((workdir / "config.json").read_text())
    tokens = config["data"]["batch_size"] * config["data"]["seq_len"]
    per_step = [tokens / r["train/tokens_per_s"] for r in rows if "train/tokens_per_s" in r][1:]
    step_seconds = float(np.median(per_step))
    evals = [r for r in rows if "eval/perplexity" in r]
    steps = [r["step"] for r in evals]
    return steps, [s * step_seconds for s in steps], [r["eval/perplexity"] for r in evals]


def distill(runs: Path, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    lines = ["| arm | validation ppl at each evaluation (step: ppl) | training seconds |", "|---|---|---|"]
    for workdir in sorted(p for p in runs.iterdir() if (p / "metrics.jsonl").is_file()):
        steps, seconds, ppl = curve(workdir)
        by_step.plot(steps, ppl, marker="o", label=workdir.name)
        by_time.plot(seconds, ppl, marker="o", label=workdir.name)
        points = ", ".join(f"{s}: {p:.1f}" for s, p in zip(steps, ppl, strict=True))
        lines.append(f"| {workdir.name} | {points} | {seconds[-1]:.0f} |")
    for ax, label in ((by_step, "step"), (by_time, "training seconds")):
        ax.set_xlabel(label)
        ax.set_yscale("log")
        ax.legend()
    by_step.set_ylabel("validation perplexity")
    fig.suptitle("A 6 x 384 student of SmolLM2-135M on Shakespeare")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("replay", "distill"))
    parser.add_argument("--runs", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    print((replay if args.kind == "replay" else distill)(args.runs, args.out))


if __name__ == "__main__":
    main()
