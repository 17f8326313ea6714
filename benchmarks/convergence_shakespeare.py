"""Trains the baby config (experiments/configs/shakespeare_char.py) on a text file; reports validation loss
and time.

  .venv/bin/python benchmarks/convergence_shakespeare.py PATH/TO/tinyshakespeare.txt [--seeds 0,1,2]
  [--variant nanogpt]

The validation split is the last 10% of the file (as nanoGPT's prepare.py); the loss is measured on all
of it after the last step. Each seed trains in a fresh temporary workdir unless --workdir is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import logging  # noqa: E402

from experiments.configs import shakespeare_char  # noqa: E402
from lmjax.modes import train as train_mode  # noqa: E402


def run(data_path: str, variant: str, seed: int, steps: int, workdir: Path) -> dict:
    config = shakespeare_char.get_config(variant)
    config.seed = seed
    config.data.text_files = data_path
    config.train.update(num_steps=steps, eval_batches=0, eval_every=steps, progress=False)
    start = time.perf_counter()
    result = train_mode.run(config, workdir)
    return {"seed": seed, "val_loss": result["eval/loss"], "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("data_path", help="a text file, e.g. the char-rnn tinyshakespeare.txt")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, one run each")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument(
        "--variant", default="", help="get_config argument: '' (rotary positions) or 'nanogpt'"
    )
    parser.add_argument(
        "--workdir", default="", help="parent directory for the runs' workdirs (default: a temp dir)"
    )
    args = parser.parse_args()
    if not Path(args.data_path).is_file():
        sys.exit(f"error: {args.data_path} is not a file; pass the path of a text file")
    logging.set_verbosity(logging.WARNING)
    parent = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lmjax_convergence_"))
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        workdir = parent / f"seed{seed}"
        if (workdir / "checkpoints").exists():
            sys.exit(
                f"error: {workdir} already holds a run; pass another --workdir so nothing is overwritten"
            )
        rows.append(run(args.data_path, args.variant, seed, args.steps, workdir))
        print(json.dumps(rows[-1]))
    losses = [r["val_loss"] for r in rows]
    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; variant {args.variant or 'default'}; "
        f"steps {args.steps}; workdirs under {parent}"
    )
    print("| seed | validation loss | wall time (s) |\n|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['val_loss']:.4f} | {r['wall_s']:.0f} |")
    print(
        f"| median | {statistics.median(losses):.4f} | {statistics.median(r['wall_s'] for r in rows):.0f} |"
    )


if __name__ == "__main__":
    main()
