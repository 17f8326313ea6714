"""Unsupervised SimCSE: a Transformer encoder trained with InfoNCE over in-batch negatives, the positive of a
text being the same text under another dropout mask (temperature 0.05), on gensim's Wikipedia sample.

  python -m lmjax.main --config=experiments/configs/simcse.py --workdir=workdirs/simcse

Each row is one paragraph-sized piece of an article (its first 64 sentencepiece tokens); sentence embeddings
are the mean of the encoder's hidden states. eval/accuracy: how often a validation text picks its own second
view among the batch's (dropout stays on for the two views in evaluation too, or the task would be trivial).

Arguments: '' the CPU run; 'smoke' a tiny run for the tests.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.model.update(
        family="encoder",
        num_layers=4,
        num_heads=4,
        d_model=128,
        d_ff=512,
        max_len=64,
        positions="learned",
        norm_position="pre",
        encoder_heads="none",
        dropout=0.1,
    )
    config.data.update(
        corpus="wiki_sample", tokenizer="sentencepiece", vocab_size=4000, seq_len=64, batch_size=64
    )
    config.optim.update(learning_rate=3e-4, min_learning_rate=3e-5, warmup_steps=50, weight_decay=0.01)
    config.train.update(
        objective="contrastive",
        temperature=0.05,
        num_steps=500,
        eval_every=250,
        eval_batches=5,
        checkpoint_every=500,
        log_every=25,
        sample_tokens=0,
    )
    if arg == "smoke":
        config.model.update(num_layers=1, num_heads=2, d_model=32, d_ff=64, max_len=16)
        config.data.update(seq_len=16, batch_size=8, vocab_size=600, tokenizer_train_examples=20)
        config.optim.update(warmup_steps=1)
        config.train.update(
            num_steps=3, eval_every=3, eval_batches=2, checkpoint_every=3, log_every=1, progress=False
        )
    elif arg:
        raise InputError(f"simcse.py takes '' or 'smoke', not {arg!r}")
    return config
