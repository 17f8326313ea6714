"""Runs a sweep: the grid of a sweep file, one run after another, then one results table and plots.

  python -m experiments.sweep --sweep=experiments/sweeps/lambda_bert_mlm.py --outdir=sweeps/lambda_bert_mlm
  python -m experiments.sweep --sweep=... --outdir=... --launch=print   # the per-run commands
  python -m experiments.sweep --sweep=... --outdir=gs://BUCKET/sweeps/x --launch=tpu --tpu=vm1,vm2 --zone=ZONE

A sweep file defines get_sweep(arg) (`--sweep=FILE:ARG` picks a variant, as configs do) -> dict(
    config="experiments/configs/<exp>.py[:arg]",
    grid={"finetune.pretrain_lambda": [0.0, 0.1], "seed": [0, 1],           # every combination ...
          ("finetune.pretrain_lambda", "finetune.l2sp"): [(0.1, 0.0), (0.0,
          0.1)]},  # ... keys that move together
    x="finetune.pretrain_lambda",            # the plots' x axis
    metrics=("test/accuracy", "pretrain/heldout_loss"),  # table columns and plot panels
    overrides={"train.num_steps": 300})      # optional, for every run
Each run has its own workdir under --outdir (a local path or gs://); a run whose results.json exists is
finished and skipped, so a stopped sweep continues where it was. results.csv / results.md (every run, and
means over seeds) and results.png (each metric against x) are written to --outdir.

--launch=tpu runs each unfinished run through `tpu_scripts/tpu.py launch --wait` on the named TPU VMs (set up
with `tpu.py setup` first), one run at a time per VM, the VMs in parallel; --outdir must then be gs://, where
the VMs write. A preempted run (exit 75) is left unfinished: the same sweep command resumes it.
"""

from __future__ import annotations

import ast
import csv
import difflib
import importlib.util
import io
import itertools
import json
import math
import queue
import shlex
import subprocess
import sys
import threading
from pathlib import Path

from absl import app, flags, logging
from etils import epath

from lmjax import checkpoint, storage
from lmjax import config as config_lib
from lmjax.errors import EXIT_PREEMPTED, InputError, MissingInput

flags.DEFINE_string("sweep", None, "Sweep file (get_sweep(arg)), optionally FILE:ARG.")
flags.DEFINE_string("outdir", None, "Directory (or gs:// URL) for the runs' workdirs and the results.")
flags.DEFINE_enum(
    "launch",
    "local",
    ["local", "print", "tpu"],
    "local: run here one after another; print: print the commands; tpu: run them on TPU VMs.",
)
flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to every run (after the sweep's overrides).")
flags.DEFINE_list("tpu", [], "--launch=tpu: the TPU VMs' names (tpu.py create / setup them first).")
flags.DEFINE_string("zone", "", "--launch=tpu: the VMs' zone.")
flags.DEFINE_string("project", "", "--launch=tpu: the Google Cloud project (default: gcloud's).")
flags.DEFINE_bool("dry-run", False, "--launch=tpu: print the tpu.py commands, run nothing (as tpu.py's).")
flags.mark_flags_as_required(["sweep", "outdir"])
FLAGS = flags.FLAGS

RESULTS = checkpoint.RESULTS_FILE
TPU_SCRIPT = Path(__file__).resolve().parents[1] / "tpu_scripts" / "tpu.py"


def load_sweep(spec_arg: str) -> dict:
    path, _, arg = spec_arg.partition(":")
    if not Path(path).is_file():
        raise MissingInput(f"sweep file {path!r} does not exist; give --sweep=experiments/sweeps/<name>.py")
    spec = importlib.util.spec_from_file_location("sweep_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep(arg) if arg else module.get_sweep()
    unknown = set(sweep) - {"config", "grid", "x", "metrics", "overrides"}
    if unknown or "config" not in sweep or "grid" not in sweep:
        raise InputError(
            f"sweep file {path!r}: get_sweep() needs 'config' and 'grid' and takes x, metrics, overrides "
            f"(unknown: {sorted(unknown)})"
        )
    return sweep


def flat_keys(config) -> list[str]:
    return list(config_lib._flat_keys(config))


def check_keys(keys, config) -> None:
    known = flat_keys(config)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            raise InputError(
                f"unknown sweep key {key!r}"
                + (f"; did you mean {close[0]!r}?" if close else "")
                + " (keys are config paths such as finetune.pretrain_lambda)"
            )


def expand(grid: dict) -> list[dict]:
    """Every combination of the grid's entries; a tuple key sets several keys from one tuple value."""
    axes = []
    for key, values in grid.items():
        keys = key if isinstance(key, tuple) else (key,)
        axes.append([dict(zip(keys, v if isinstance(key, tuple) else (v,), strict=True)) for v in values])
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
            raise InputError(f"--set {item!r} is not KEY=VALUE")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def command(config_spec: str, workdir: Path, values: dict) -> str:
    args = [f"--config.{k}={v}" for k, v in values.items()]
    return shlex.join(
        ["python", "-m", "lmjax.main", f"--config={config_spec}", f"--workdir={workdir}", *args]
    )


def run_one(config, workdir: epath.Path) -> dict:
    """One run here; pretraining and fine-tuning both leave results.json in the workdir when finished."""
    from lmjax.modes import finetune as finetune_mode
    from lmjax.modes import train as train_mode
    from lmjax.training import prepare

    prepare.check_config(config)
    return (finetune_mode.run if config.mode == "finetune" else train_mode.run)(config, workdir)


def tpu_command(vm: str, config_spec: str, workdir: epath.Path, values: dict) -> list[str]:
    """The tpu.py call that runs one sweep point on every worker of `vm` and waits for it."""
    where = [f"--name={vm}", f"--zone={FLAGS.zone}"]
    where += [f"--project={FLAGS.project}"] if FLAGS.project else []
    return [
        sys.executable,
        str(TPU_SCRIPT),
        "launch",
        *where,
        "--wait",
        f"--workdir={workdir}",
        "--",
        f"--config={config_spec}",
        *(f"--config.{k}={v}" for k, v in values.items()),
    ]


def launch_on_tpus(jobs: list[tuple[str, epath.Path, dict]], config_spec: str) -> None:
    """Each VM takes the next unfinished run when its last one ends; prints how each ended."""
    if not (FLAGS.tpu and FLAGS.zone):
        raise InputError("--launch=tpu needs --tpu=VM[,VM...] and --zone (the VMs of tpu.py create)")
    if not storage.is_gcs(FLAGS.outdir):
        raise InputError(
            f"--launch=tpu needs a gs:// --outdir (the VMs write the runs there), not {FLAGS.outdir!r}"
        )
    if FLAGS["dry-run"].value:
        for i, (_, workdir, values) in enumerate(jobs):
            vm = FLAGS.tpu[i % len(FLAGS.tpu)]
            print(shlex.join(["python", *tpu_command(vm, config_spec, workdir, values)[1:]]))
        return
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)

    def worker(vm: str) -> None:
        while True:
            try:
                name, workdir, values = todo.get_nowait()
            except queue.Empty:
                return
            print(f"{vm}: {name} started", flush=True)
            command = tpu_command(vm, config_spec, workdir, values)
            code = subprocess.run(command, stdout=subprocess.DEVNULL).returncode
            ended = {0: "finished", EXIT_PREEMPTED: "preempted (rerun the sweep to resume it)"}
            print(f"{vm}: {name} {ended.get(code, f'failed (exit {code})')}", flush=True)

    threads = [threading.Thread(target=worker, args=(vm,)) for vm in FLAGS.tpu]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def summarize(
    rows: list[dict], keys: list[str], metrics: list[str], outdir: epath.Path, x: str | None
) -> None:
    """results.csv, results.md (per run and the mean +- sd over seeds), results.png."""
    columns = keys + metrics
    with (outdir / "results.csv").open("w") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore", lineterminator="\n")
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

    lines = [
        "| " + " | ".join(group_keys + metrics + ["runs"]) + " |",
        "|" + "---|" * (len(group_keys) + len(metrics) + 1),
    ]
    for key, members in groups.items():
        cells = (
            [str(v) for v in key] + [stat([m.get(k) for m in members]) for k in metrics] + [str(len(members))]
        )
        lines.append("| " + " | ".join(cells) + " |")
    per_run = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else "-" if v is None else str(v)

    per_run += [
        "| " + " | ".join([str(r[k]) for k in keys] + [cell(r.get(m)) for m in metrics]) + " |" for r in rows
    ]
    (outdir / "results.md").write_text(
        "## Mean over seeds (± sample sd)\n\n"
        + "\n".join(lines)
        + "\n\n## Every run\n\n"
        + "\n".join(per_run)
        + "\n"
    )
    if x:
        plot(rows, x, metrics, outdir / "results.png")


def plot(rows: list[dict], x: str, metrics: list[str], out: epath.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    xs = sorted({r[x] for r in rows})
    for ax, metric in zip(axes[0], metrics, strict=True):
        points = [(r[x], r[metric]) for r in rows if r.get(metric) is not None]
        if not points:  # no run reported it (a misspelt metric, or a mode that does not compute it)
            ax.set_title(f"{metric}: no values")
            continue
        ax.scatter(*zip(*points, strict=True), alpha=0.5, s=14, label="runs")
        means = [
            (v, sum(p for u, p in points if u == v) / sum(u == v for u, _ in points))
            for v in xs
            if any(u == v for u, _ in points)
        ]
        ax.plot(*zip(*means, strict=True), marker="o", label="mean")
        ax.set_xscale("symlog", linthresh=min([v for v in xs if v > 0], default=1.0))
        ax.set_xlabel(x)
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    epath.Path(out).write_bytes(png.getvalue())


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    sweep = load_sweep(FLAGS.sweep)
    outdir = storage.workdir(FLAGS.outdir)
    base = config_lib.load(sweep["config"])
    points = expand(sweep["grid"])
    keys = list(points[0])
    overrides = sweep.get("overrides", {}) | parse_sets(FLAGS.set)
    check_keys(keys + list(overrides), base)
    runs = [(run_name(point), outdir / run_name(point), overrides | point) for point in points]
    unfinished = [run for run in runs if not (run[1] / RESULTS).exists()]
    if FLAGS.launch == "print":
        for _, workdir, values in unfinished:
            print(command(sweep["config"], workdir, values))
        return 0
    if FLAGS.launch == "tpu":
        launch_on_tpus(unfinished, sweep["config"])
        if FLAGS["dry-run"].value:
            return 0
    for i, (name, workdir, values) in enumerate(runs if FLAGS.launch == "local" else []):
        if (workdir / RESULTS).exists():
            print(f"[{i + 1}/{len(runs)}] {name}: finished, skipped", flush=True)
            continue
        print(f"[{i + 1}/{len(runs)}] {name}", flush=True)
        config = apply(config_lib.load(sweep["config"]), values)
        config.train.progress = False
        if "preempted_at" in run_one(config, workdir):
            print(f"sweep: preempted during {name}; the same command resumes it", flush=True)
            return EXIT_PREEMPTED
    rows = [
        point | json.loads((outdir / run_name(point) / RESULTS).read_text())
        for point in points
        if (outdir / run_name(point) / RESULTS).exists()
    ]
    print(f"sweep: {len(rows)} of {len(runs)} runs finished", flush=True)
    if rows:
        metrics = list(sweep.get("metrics", ())) or sorted(k for k in rows[0] if k.startswith("test/"))
        summarize(rows, keys, metrics, outdir, sweep.get("x"))
        print((outdir / "results.md").read_text())
    return 0 if len(rows) == len(runs) else 1


def run():
    try:
        app.run(main)
    except InputError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run()
