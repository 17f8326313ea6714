"""Character-level GPT on Shakespeare: nanoGPT's CPU "baby" run (4 layers x 4 heads x 128, context 64).

  python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/shakespeare_char
  python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/shakespeare_char \
      --config.mode=sample --config.sample.prompt="ROMEO:"

Arguments (`--config=...shakespeare_char.py:ARG`):
  ''        the baby run: nanoGPT's hyperparameters, with rotary positions
  'nanogpt' the same with learned positions, i.e. nanoGPT's architecture exactly
  'tiny'    the test suite's 2-layer model

nanoGPT's command: train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
--log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0 (lr 1e-3, warmup 100, cosine to 1e-4, beta2 0.99, weight decay 0.1 on
every matrix including the embeddings, clip 1.0, no biases). On tinyshakespeare (whole validation split,
benchmarks/RESULTS.md) rotary positions reach 1.79, learned positions 1.91.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.model.update(
        num_layers=4, num_heads=4, d_model=128, max_len=64, dropout=0.0, use_bias=False, positions="rotary"
    )
    config.data.update(tokenizer="char", seq_len=64, batch_size=12)
    config.optim.update(
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_steps=100,
        b2=0.99,
        weight_decay=0.1,
        decay_embeddings=True,
        grad_clip=1.0,
    )
    config.train.update(num_steps=2000, eval_every=250, eval_batches=50, checkpoint_every=500, log_every=50)
    if arg == "nanogpt":
        config.model.positions = "learned"
    elif arg == "tiny":
        config.model.update(num_layers=2, num_heads=2, d_model=32, max_len=32)
        config.data.update(seq_len=32, batch_size=8)
        config.optim.update(warmup_steps=5)
        config.train.update(
            num_steps=20,
            eval_every=10,
            eval_batches=2,
            checkpoint_every=10,
            log_every=5,
            sample_tokens=16,
            progress=False,
        )
    elif arg:
        raise InputError(f"shakespeare_char.py takes '', 'nanogpt' or 'tiny', not {arg!r}")
    return config
