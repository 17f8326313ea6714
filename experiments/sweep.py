"""Runs a sweep: the grid of a sweep file, one run after another, then one results table and plots.

  python -m experiments.sweep --sweep=experiments/sweeps/lambda_bert_mlm.py --outdir=sweeps/lambda_bert_mlm
  python -m experiments.sweep --sweep=... --outdir=... --launch=print   # the per-run commands, e.g. for a TPU VM

A sweep file defines get_sweep() -> dict(
    config="experiments/configs/<exp>.py[:arg]",
    grid={"finetune.pretrain_lambda": [0.0, 0.1], "seed": [0, 1],           # every combination ...
          ("finetune.pretrain_lambda", "finetune.l2sp"): [(0.1, 0.0), (0.0, 0.1)]},  # ... keys that move together
    x="finetune.pretrain_lambda",            # the plots' x axis
    metrics=("test/accuracy", "pretrain/heldout_loss"),  # table columns and plot panels
    overrides={"train.num_steps": 300})      # optional, for every run
Each run has its own workdir under --outdir; a run whose results.json exists is finished and skipped, so a
stopped sweep continues where it was. results.csv / results.md (every run, and means over seeds) and
results.png (each metric against x) are written to --outdir.
"""
from __future__ import annotations

import ast
import csv
import difflib
import importlib.util
import itertools
import json
import math
import shlex
import sys
from pathlib import Path

from absl import app, flags, logging

from lmjax import config as config_lib

flags.DEFINE_string("sweep", None, "Sweep file (get_sweep()).")
flags.DEFINE_string("outdir", None, "Directory for the runs' workdirs and the results.")
flags.DEFINE_enum("launch", "local", ["local", "print"], "local: run here one after another; print: print commands.")
flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to every run (after the sweep's overrides).")
flags.mark_flags_as_required(["sweep", "outdir"])
FLAGS = flags.FLAGS

RESULTS = "results.json"


def load_sweep(path: str) -> dict:
    if not Path(path).is_file():
        raise FileNotFoundError(f"sweep file {path!r} does not exist; give --sweep=experiments/sweeps/<name>.py")
    spec = importlib.util.spec_from_file_location("sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    unknown = set(sweep) - {"config", "grid", "x", "metrics", "overrides"}
    if unknown or "config" not in sweep or "grid" not in sweep:
        raise ValueError(f"sweep file {path!r}: get_sweep() needs 'config' and 'grid' and takes x, metrics, overrides "
                         f"(unknown: {sorted(unknown)})")
    return sweep


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("experiment_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg)


def flat_keys(c) -> list[str]:
    return list(config_lib._flat_keys(c))


def check_keys(keys, config) -> None:
    known = flat_keys(config)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise ValueError(f"unknown sweep key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                             + " (keys are config paths such as finetune.pretrain_lambda)")


def expand(grid: dict) -> list[dict]:
    """Every combination of the grid's entries; a tuple key sets several keys from one tuple value."""
    axes = []
    for key, values in grid.items():
        keys = key if isinstance(key, tuple) else (key,)
        axes.append([dict(zip(keys, v if isinstance(key, tuple) else (v,))) for v in values])
    return [{k: v for d in combo for k, v in d.items()} for combo in itertools.product(*axes)]


def run_name(point: dict) -> str:
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in point.items()).replace("/", "_")


def apply(config, values: dict):
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) else value
    return config


def parse_sets(sets: list[str]) -> dict:
    out = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} is not KEY=VALUE")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def command(config_spec: str, workdir: Path, values: dict) -> str:
    args = [f"--config.{k}={v}" for k, v in values.items()]
    return shlex.join(["python", "-m", "lmjax.main", f"--config={config_spec}", f"--workdir={workdir}", *args])


def run_one(config, workdir: Path) -> dict:
    from lmjax import finetune, train

    config_lib.validate(config)
    if config.mode == "finetune":
        return finetune.run(config, workdir)
    result = train.train_and_evaluate(config, workdir)
    (workdir / RESULTS).write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def summarize(rows: list[dict], keys: list[str], metrics: list[str], outdir: Path, x: str | None) -> None:
    """results.csv, results.md (per run and the mean +- sd over seeds), results.png."""
    columns = keys + metrics
    with (outdir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    group_keys = [k for k in keys if k != "seed"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in group_keys), []).append(r)

    def stat(values: list[float]) -> str:
        values = [v for v in values if v is not None and math.isfinite(v)]
        if not values:
            return "-"
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
        return f"{mean:.4f} ± {sd:.4f}" if len(values) > 1 else f"{mean:.4f}"

    lines = ["| " + " | ".join(group_keys + metrics + ["runs"]) + " |", "|" + "---|" * (len(group_keys) + len(metrics) + 1)]
    for key, members in groups.items():
        cells = [str(v) for v in key] + [stat([m.get(k) for m in members]) for k in metrics] + [str(len(members))]
        lines.append("| " + " | ".join(cells) + " |")
    per_run = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    per_run += ["| " + " | ".join(f"{r.get(c):.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in columns)
                + " |" for r in rows]
    (outdir / "results.md").write_text("## Mean over seeds (± sample sd)\n\n" + "\n".join(lines)
                                       + "\n\n## Every run\n\n" + "\n".join(per_run) + "\n")
    if x:
        plot(rows, x, metrics, outdir / "results.png")


def plot(rows: list[dict], x: str, metrics: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    xs = sorted({r[x] for r in rows})
    for ax, metric in zip(axes[0], metrics):
        points = [(r[x], r[metric]) for r in rows if r.get(metric) is not None]
        ax.scatter(*zip(*points), alpha=0.5, s=14, label="runs")
        means = [(v, sum(p for u, p in points if u == v) / max(1, sum(u == v for u, _ in points))) for v in xs]
        ax.plot(*zip(*means), marker="o", label="mean")
        ax.set_xscale("symlog", linthresh=min([v for v in xs if v > 0], default=1.0))
        ax.set_xlabel(x)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    sweep = load_sweep(FLAGS.sweep)
    outdir = Path(FLAGS.outdir)
    base = load_config(sweep["config"])
    points = expand(sweep["grid"])
    keys = list(points[0])
    overrides = sweep.get("overrides", {}) | parse_sets(FLAGS.set)
    check_keys(keys + list(overrides), base)
    metrics = list(sweep.get("metrics", ()))
    rows = []
    for i, point in enumerate(points):
        workdir = outdir / run_name(point)
        values = overrides | point
        if FLAGS.launch == "print":
            if not (workdir / RESULTS).exists():
                print(command(sweep["config"], workdir, values))
            continue
        if (workdir / RESULTS).exists():
            print(f"[{i + 1}/{len(points)}] {workdir.name}: finished, skipped", flush=True)
        else:
            print(f"[{i + 1}/{len(points)}] {workdir.name}", flush=True)
            config = apply(load_config(sweep["config"]), values)
            config.train.progress = False
            run_one(config, workdir)
        rows.append(point | json.loads((workdir / RESULTS).read_text()))
    if rows:
        metrics = metrics or sorted(k for k in rows[0] if k.startswith("test/"))
        summarize(rows, keys, metrics, outdir, sweep.get("x"))
        print((outdir / "results.md").read_text())


def run():
    try:
        app.run(main)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
