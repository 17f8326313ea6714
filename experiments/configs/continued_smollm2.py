"""Continued pretraining: SmolLM2-135M-Instruct (train.init) trained further on Shakespeare, with Wikipedia
replayed at a share of the rows (data.mixture), the pretraining counterpart of fine-tuning's lambda: how much
replay keeps of what the model knew, and what it costs on the new domain.

  python -m experiments.data.replay_texts --out=data/replay
  python -m lmjax.main --config=experiments/configs/continued_smollm2.py:30,data/replay \
      --workdir=workdirs/continued_r30
  python -m lmjax.main --config=experiments/configs/continued_smollm2.py:30,data/replay \
      --workdir=workdirs/continued_r30_test --config.mode=eval --config.finetune.init=workdirs/continued_r30 \
      --config.data.mixture=data/replay/shakespeare_test.txt:1,data/replay/wiki_test.txt:1

Arguments 'REPLAY[,DIR]': REPLAY the percentage of Wikipedia rows (0: Shakespeare only, Wikipedia still
evaluated); DIR the files of experiments/data/replay_texts.py (without it: the built-in corpora, shakespeare
and wiki_sample). 'smoke' is a two-step run on the built-in corpora. Every source is validated on its own
(eval/<source>/loss). Sized for a 2-core CPU: 100 steps of 8 x 128-token rows.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    replay, _, data_dir = (arg or "30").partition(",")
    smoke = replay == "smoke"
    if not smoke and not (replay.isdigit() and int(replay) <= 100):
        raise InputError(f"continued_smollm2.py takes 'REPLAY[,DIR]' (REPLAY 0-100) or 'smoke', not {arg!r}")
    share = 30 if smoke else int(replay)
    if data_dir:
        sources = (f"{data_dir}/shakespeare_train.txt", f"{data_dir}/wiki_train.txt")
    else:
        sources = ("shakespeare", "wiki_sample")
    config = base_config.base()
    config.train.update(
        init="smollm2-135m-instruct",
        objective="causal_lm",
        num_steps=100,
        eval_every=1000,
        eval_batches=16,
        checkpoint_every=100,
        log_every=10,
        sample_tokens=0,
    )
    config.model.update(dropout=0.0, attention_dropout=0.0)
    config.data.update(
        mixture=f"{sources[0]}:{100 - share},{sources[1]}:{share}",
        seq_len=128,
        batch_size=4,
        shuffle_window=64,
    )
    config.optim.update(
        learning_rate=1e-4, min_learning_rate=1e-5, warmup_steps=10, weight_decay=0.0, b2=0.999, grad_clip=1.0
    )
    config.mesh.update(data=1)
    if smoke:
        config.data.update(seq_len=32, batch_size=2)
        config.train.update(num_steps=2, eval_batches=1, checkpoint_every=2, log_every=1, progress=False)
        config.optim.update(warmup_steps=1)
    return config
