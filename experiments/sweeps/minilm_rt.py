"""The hyperparameter search of benchmarks/RESULTS.md for all-MiniLM-L6-v2 on Rotten Tomatoes
(experiments/configs/finetune_minilm.py): backbone learning rate x training length, chosen on validation
accuracy; the chosen run's test accuracy is the one reported.

  python -m experiments.sweep --sweep=experiments/sweeps/minilm_rt.py --outdir=sweeps/minilm_rt

6 runs: learning rate in {5e-5, 1e-4, 2e-4} x 640 or 960 steps of 32 texts (2 or 3 epochs). The config's
defaults are the pick of this search and of minilm_rt_small_batch.py together.
"""


def get_sweep():
    return dict(
        config="experiments/configs/finetune_minilm.py",
        grid={"optim.learning_rate": [5e-5, 1e-4, 2e-4], "train.num_steps": [640, 960]},
        x="optim.learning_rate",
        metrics=("validation/accuracy", "test/accuracy", "seconds"),
        # the batching of its RESULTS entry: padded rows cut to a multiple of 16 tokens
        overrides={
            "task.batch_size": 32,
            "train.eval_every": 320,
            "task.pack": False,
            "task.trim_multiple": 16,
        },
    )
