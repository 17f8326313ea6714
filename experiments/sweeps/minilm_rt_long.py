"""The third and fourth MiniLM searches of benchmarks/RESULTS.md: all-MiniLM-L6-v2 on Rotten Tomatoes
(experiments/configs/finetune_minilm.py, packed batches of 16 texts), chosen on validation accuracy.

  python -m experiments.sweep --sweep=experiments/sweeps/minilm_rt_long.py --outdir=sweeps/minilm_rt_long
  python -m experiments.sweep --sweep=experiments/sweeps/minilm_rt_long.py:low_lr --outdir=sweeps/minilm_low

'' (third search, 6 runs): learning rate 5e-5 or 1e-4 x 1,600, 2,560 or 3,840 steps (2.5, 4 or 6 epochs of
the 10,216 training snippets); the 2.5 epochs of minilm_rt_small_batch.py's pick left validation accuracy
still rising at the end. 'low_lr' (fourth search, 2 runs): its pick (5e-5, 3,840 steps) sat at the grid's
lowest rate and longest run, so learning rates 2e-5 and 3e-5 for 3,840 steps. Validation every 320 steps
(half an epoch) and at the end.
"""

from lmjax.errors import InputError

GRIDS = {
    "": {"optim.learning_rate": [5e-5, 1e-4], "train.num_steps": [1600, 2560, 3840]},
    "low_lr": {"optim.learning_rate": [2e-5, 3e-5], "train.num_steps": [3840]},
}


def get_sweep(arg: str | None = None):
    if (arg or "") not in GRIDS:
        raise InputError(f"minilm_rt_long.py takes {' or '.join(map(repr, GRIDS))}, not {arg!r}")
    return dict(
        config="experiments/configs/finetune_minilm.py",
        grid=GRIDS[arg or ""],
        x="optim.learning_rate",
        metrics=("validation/accuracy", "validation/loss", "test/accuracy", "seconds"),
        overrides={"train.eval_every": 320, "train.progress": False},
    )
