"""Input pipeline against the trainer, and the training loop's overhead over its compiled step.

  .venv/bin/python benchmarks/input_pipeline.py --text PATH/TO/tinyshakespeare.txt [--presets baby,medium]

For each preset (benchmarks/throughput.py's sizes, character tokens of the given text):
  pipeline tokens/s  the grain training pipeline of lmjax.data.pipeline alone (what train.py iterates),
                     batches of the preset's shape drawn back to back after the first;
  step tokens/s      the compiled train step alone, dispatched back to back on one device batch (no input, no
                     metrics read): the fastest the trainer can consume;
  loop tokens/s      lmjax.modes.train.run itself (pipeline, host-to-device copy, the step, the
                     metrics read one step behind dispatch, logging), its own train/tokens_per_s over the
                     logged intervals after the first (evaluation and checkpoint time excluded, as the loop
                     reports it).
pipeline / step >= 10 means the input pipeline is not what limits training; loop / step near 1 means the loop
adds no per-step host synchronisation (a blocking read each step would serialise host work with the device's;
the pipeline prepares the next batch on a thread of its own while the step runs). The process is set up as
lmjax.main sets it up (lmjax.host.tune_allocator). Medians of --rounds."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import throughput  # noqa: E402
from absl import logging  # noqa: E402

from lmjax import host, metrics
from lmjax.data import mixture, pipeline  # noqa: E402
from lmjax.modes import train as train_mode
from lmjax.training import (
    objectives,
    prepare,  # noqa: E402
)


def pipeline_tokens_per_s(config, batches: int) -> tuple[float, int]:
    """Tokens/s of the training pipeline, and the tokenizer's vocabulary size."""
    corpus = mixture.load_corpus(config.data)
    with tempfile.TemporaryDirectory() as workdir:
        tok = prepare.prepare_tokenizer(config, Path(workdir), corpus)
    it = iter(
        pipeline.train_dataset(
            corpus,
            tok,
            config.data,
            objective=objectives.get(config.train.objective),
            batch_size=config.data.batch_size,
            seed=config.seed,
        )
    )
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * config.data.batch_size * config.data.seq_len / (
        time.perf_counter() - start
    ), tok.vocab_size


def step_tokens_per_s(config, steps: int) -> float:
    run = throughput.LmjaxRun(config)
    state = run.state
    for _ in range(5):
        state, m = run.step(state, run.batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
        state, m = run.step(state, run.batch)
    jax.block_until_ready((state, m))
    return steps * config.data.batch_size * config.data.seq_len / (time.perf_counter() - start)


def loop_tokens_per_s(config, steps: int, log_every: int) -> float:
    config = config.copy_and_resolve_references()
    config.train.update(
        num_steps=steps,
        log_every=log_every,
        eval_every=steps,
        checkpoint_every=steps,
        eval_batches=1,
        sample_tokens=0,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as workdir:
        train_mode.run(config, workdir)
        rates = [r["train/tokens_per_s"] for r in metrics.read_jsonl(workdir) if "train/tokens_per_s" in r]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--text", required=True, help="a text file (e.g. tinyshakespeare.txt), character tokens"
    )
    parser.add_argument("--presets", default="baby,medium")
    parser.add_argument(
        "--steps", type=int, default=200, help="loop steps per round (logged every steps / 10)"
    )
    parser.add_argument("--batches", type=int, default=2000, help="pipeline batches per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    host.tune_allocator()  # as lmjax.main does
    if not Path(args.text).is_file():
        sys.exit(f"error: --text {args.text} is not a file; pass the path of a text corpus")
    unknown = [p for p in args.presets.split(",") if p not in throughput.PRESETS]
    if unknown:
        sys.exit(f"error: unknown preset(s) {unknown}; choose from {sorted(throughput.PRESETS)}")
    logging.set_verbosity(logging.WARNING)
    rows = []
    for preset in args.presets.split(","):
        config = throughput.make_config(preset, "float32")
        config.data.update(text_files=args.text, tokenizer="char")
        runs = []
        for _ in range(args.rounds):
            pipe, config.model.vocab_size = pipeline_tokens_per_s(config, args.batches)
            runs.append(
                (
                    pipe,
                    step_tokens_per_s(config, args.steps),
                    loop_tokens_per_s(config, args.steps, max(args.steps // 10, 1)),
                )
            )
        pipe, step, loop = (statistics.median(r[i] for r in runs) for i in range(3))
        row = {
            "preset": preset,
            "pipeline_tokens_per_s": pipe,
            "step_tokens_per_s": step,
            "loop_tokens_per_s": loop,
            "pipeline_over_step": pipe / step,
            "loop_over_step": loop / step,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        f"\ndevice: {jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__}); "
        f"median of {args.rounds} rounds"
    )
    print(
        "| preset | pipeline tokens/s | step alone tokens/s | training loop tokens/s | pipeline / step "
        "| loop / step |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['pipeline_tokens_per_s']:,.0f} | {r['step_tokens_per_s']:,.0f} | "
            f"{r['loop_tokens_per_s']:,.0f} | {r['pipeline_over_step']:.1f}x | {r['loop_over_step']:.3f} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
