"""The second MiniLM search of benchmarks/RESULTS.md (after minilm_rt.py, whose batches of 32 stayed below
84% test): all-MiniLM-L6-v2 on Rotten Tomatoes (experiments/configs/finetune_minilm.py) with the smaller
batches and learning rates of Hugging Face's usual recipe, 25,600 texts each (2.5 epochs of the 10,216
training snippets), chosen on validation accuracy.

  python -m experiments.sweep --sweep=experiments/sweeps/minilm_rt_small_batch.py --outdir=sweeps/minilm_rt_sb

4 runs: 16 texts a batch for 1,600 steps at lr 5e-5 or 1e-4, 8 texts for 3,200 steps at 2e-5 or 5e-5
(validation every 8,560 texts and at the end).
"""


def get_sweep():
    keys = ("task.batch_size", "train.num_steps", "train.eval_every", "optim.learning_rate")
    return dict(
        config="experiments/configs/finetune_minilm.py",
        grid={
            keys: [
                (16, 1600, 535, 5e-5),
                (16, 1600, 535, 1e-4),
                (8, 3200, 1067, 2e-5),
                (8, 3200, 1067, 5e-5),
            ]
        },
        x="optim.learning_rate",
        metrics=("validation/accuracy", "test/accuracy", "seconds"),
        overrides={"task.pack": False, "task.trim_multiple": 16},  # its RESULTS entry's padded batches
    )
