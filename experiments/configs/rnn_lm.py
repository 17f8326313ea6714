"""Recurrent language models (LSTM or GRU) on the same data and trainer as the GPT configs.

  python -m lmjax.main --config=experiments/configs/rnn_lm.py --workdir=workdirs/lstm_char
  python -m lmjax.main --config=experiments/configs/rnn_lm.py:gru --workdir=workdirs/gru_char

Arguments (`--config=...rnn_lm.py:ARG`):
  ''/'lstm'  char-level 2-layer LSTM, 224 wide (0.82 M parameters, as the baby GPT's 0.80 M), on the embedded
             Shakespeare with the baby GPT's data and schedule (context 64, batch 12, 2000 steps), lr 3e-3
  'gru'      the same with GRU cells (256 wide: 0.81 M parameters)
  'smoke'    the test suite's: 1 layer x 32, a few steps
For subword tokens: --config.data.tokenizer=sentencepiece --config.data.vocab_size=4000.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.model.update(
        family="rnn",
        cell="gru" if arg == "gru" else "lstm",
        num_layers=2,
        d_model=256 if arg == "gru" else 224,
        dropout=0.0,
        tie_embeddings=True,
    )
    config.data.update(tokenizer="char", seq_len=64, batch_size=12)
    config.optim.update(
        learning_rate=3e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.99, weight_decay=0.0, grad_clip=1.0
    )
    config.train.update(
        num_steps=2000, eval_every=500, eval_batches=50, checkpoint_every=500, log_every=50, sample_tokens=0
    )
    if arg == "smoke":
        config.model.update(num_layers=1, d_model=32)
        config.data.update(seq_len=16, batch_size=8)
        config.optim.update(warmup_steps=1)
        config.train.update(
            num_steps=4, eval_every=4, eval_batches=2, checkpoint_every=4, log_every=2, progress=False
        )
    elif arg not in (None, "", "lstm", "gru"):
        raise InputError(f"rnn_lm.py takes '', 'lstm', 'gru' or 'smoke', not {arg!r}")
    return config
