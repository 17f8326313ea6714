"""The third MiniLM search of benchmarks/RESULTS.md: all-MiniLM-L6-v2 on Rotten Tomatoes
(experiments/configs/finetune_minilm.py, packed batches of 16 texts) at 2.5, 4 and 6 epochs; the 2.5 of
minilm_rt_small_batch.py's pick left validation accuracy still rising at the end. Chosen on validation
accuracy.

  python -m experiments.sweep --sweep=experiments/sweeps/minilm_rt_long.py --outdir=sweeps/minilm_rt_long

6 runs: learning rate 5e-5 or 1e-4 x 1,600, 2,560 or 3,840 steps (2.5, 4 or 6 epochs of the 10,216
training snippets), validation every 320 steps (half an epoch) and at the end.
"""


def get_sweep():
    return dict(
        config="experiments/configs/finetune_minilm.py",
        grid={"optim.learning_rate": [5e-5, 1e-4], "train.num_steps": [1600, 2560, 3840]},
        x="optim.learning_rate",
        metrics=("validation/accuracy", "validation/loss", "test/accuracy", "seconds"),
        overrides={"train.eval_every": 320, "train.progress": False},
    )
