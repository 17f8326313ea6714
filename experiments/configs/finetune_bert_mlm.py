"""Fine-tune the BERT that experiments/configs/bert_mlm.py pretrains (run that first) on Rotten Tomatoes, with
its own MLM loss on held-out Wikipedia text as the regulariser: L_FT = L_task + lambda * L_MLM.

  python -m lmjax.main --config=experiments/configs/bert_mlm.py --workdir=workdirs/bert_mlm
  python -m lmjax.main --config=experiments/configs/finetune_bert_mlm.py --workdir=workdirs/ft_bert_mlm \
      --config.finetune.pretrain_lambda=0.3
  python -m experiments.sweep --sweep=experiments/sweeps/lambda_bert_mlm.py --outdir=sweeps/lambda_bert_mlm

The pretraining stream is the bert_mlm run's: gensim's Wikipedia sample, 128-token masked sequences (without
NSP pairs here: the regulariser is the MLM loss). Its held-out loss (the corpus's validation articles, which
neither run trains on) is reported before and after fine-tuning: what the task costs the language model.

Arguments: '' the CPU run (300 steps, about one epoch); 'smoke' a few tiny steps (finetune.init must then be
set to a small pretrained workdir, as the tests do).
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.mode = "finetune"
    config.model.update(dropout=0.1)
    config.task.update(name="rotten_tomatoes", pooling="cls", seq_len=64, batch_size=32, head_dropout=0.1)
    config.finetune.update(init="workdirs/bert_mlm", pretrain_lambda=0.0)
    config.data.update(
        corpus="wiki_sample",
        tokenizer="sentencepiece",
        vocab_size=4000,
        seq_len=128,
        batch_size=32,
        nsp=False,
    )
    config.optim.update(
        learning_rate=3e-4,
        min_learning_rate=0.0,
        warmup_steps=30,
        weight_decay=0.01,
        b2=0.98,
        head_learning_rate=1e-3,
    )
    config.train.update(
        objective="mlm", num_steps=300, eval_every=100, eval_batches=20, checkpoint_every=300, log_every=25
    )
    if arg == "smoke":
        config.task.update(seq_len=32, batch_size=32)
        config.data.update(seq_len=32, batch_size=8)
        config.train.update(
            num_steps=3, eval_every=100, eval_batches=2, checkpoint_every=3, log_every=1, progress=False
        )
        config.optim.update(warmup_steps=1)
    elif arg:
        raise InputError(f"finetune_bert_mlm.py takes '' or 'smoke', not {arg!r}")
    return config
