"""GPT-1's auxiliary-LM experiment on SmolLM2-135M-Instruct (benchmarks/RESULTS.md): Rotten Tomatoes with
LoRA, L_FT = L_task + lambda * L_LM on Wikipedia text (experiments/configs/finetune_smollm2.py).

  python -m experiments.sweep --sweep=experiments/sweeps/lambda_smollm2.py --outdir=sweeps/lambda_smollm2

Arguments (`--sweep=...lambda_smollm2.py:ARG`): '' the 4 runs of RESULTS.md (lambda in {0, 0.5} x seeds
{0, 1}); 'smoke' two tiny runs.
"""

from lmjax.errors import InputError


def get_sweep(arg: str = ""):
    metrics = ("validation/accuracy", "test/accuracy", "pretrain/heldout_loss")
    if arg == "smoke":
        return dict(
            config="experiments/configs/finetune_smollm2.py:smoke",
            grid={"finetune.pretrain_lambda": [0.0, 0.5], "seed": [0]},
            x="finetune.pretrain_lambda",
            metrics=metrics,
        )
    if arg:
        raise InputError(f"lambda_smollm2.py takes '' or 'smoke', not {arg!r}")
    return dict(
        config="experiments/configs/finetune_smollm2.py",
        grid={"finetune.pretrain_lambda": [0.0, 0.5], "seed": [0, 1]},
        x="finetune.pretrain_lambda",
        metrics=metrics,
    )
