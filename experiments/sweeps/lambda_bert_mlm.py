"""The lambda x seed sweep of benchmarks/RESULTS.md: the lmjax BERT fine-tuned on Rotten Tomatoes with its own
MLM loss as regulariser, L_FT = L_task + lambda * L_MLM (experiments/configs/finetune_bert_mlm.py).

  python -m lmjax.main --config=experiments/configs/bert_mlm.py --workdir=workdirs/bert_mlm
  python -m experiments.sweep --sweep=experiments/sweeps/lambda_bert_mlm.py --outdir=sweeps/lambda_bert_mlm

Arguments (`--sweep=...lambda_bert_mlm.py:ARG`): '' the 10 runs of RESULTS.md (lambda in {0, 0.1, 0.3, 1, 3}
x seeds {0, 1}, 300 steps each); 'smoke' two tiny runs (the tests; give --set=finetune.init=A_BERT_WORKDIR).
"""

from lmjax.errors import InputError


def get_sweep(arg: str = ""):
    if arg == "smoke":
        return dict(
            config="experiments/configs/finetune_bert_mlm.py:smoke",
            grid={"finetune.pretrain_lambda": [0.0, 0.3], "seed": [0]},
            x="finetune.pretrain_lambda",
            metrics=("test/accuracy", "pretrain/heldout_loss"),
        )
    if arg:
        raise InputError(f"lambda_bert_mlm.py takes '' or 'smoke', not {arg!r}")
    return dict(
        config="experiments/configs/finetune_bert_mlm.py",
        grid={"finetune.pretrain_lambda": [0.0, 0.1, 0.3, 1.0, 3.0], "seed": [0, 1]},
        x="finetune.pretrain_lambda",
        metrics=("test/accuracy", "test/macro_f1", "pretrain/heldout_loss"),
    )
