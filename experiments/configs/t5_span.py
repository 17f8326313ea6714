"""T5-style encoder-decoder pretrained with span corruption on gensim's Wikipedia sample.

  python -m lmjax.main --config=experiments/configs/t5_span.py --workdir=workdirs/t5_span

T5's architecture (pre-RMSNorm without biases, relative position buckets, unscaled attention, shared and
tied embeddings with the decoder output scaled by d_model**-0.5), 3 + 3 layers x 128. Inputs are 128
tokens: packed 141-token windows whose 15% noise (mean span 3) becomes sentinels; targets are 29 tokens.
The evaluation reports target-token accuracy next to eval/unigram_accuracy.

Arguments (`--config=...t5_span.py:ARG`): '' the CPU run above; 'smoke' a tiny run for the tests.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.model.update(
        family="encoder_decoder",
        num_layers=3,
        num_decoder_layers=3,
        num_heads=4,
        d_model=128,
        d_ff=512,
        max_len=128,
        positions="relative",
        norm="rmsnorm",
        norm_position="pre",
        norm_eps=1e-6,
        activation="relu",
        use_bias=False,
        scale_attention=False,
        share_embeddings=True,
        tie_embeddings=True,
        scale_output=True,
        dropout=0.1,
    )
    config.data.update(
        corpus="wiki_sample",
        tokenizer="sentencepiece",
        vocab_size=4000,
        seq_len=128,
        batch_size=32,
        noise_density=0.15,
        mean_span=3.0,
    )
    config.optim.update(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.98, weight_decay=0.01
    )
    config.train.update(
        objective="span_corruption",
        num_steps=800,
        eval_every=200,
        eval_batches=20,
        checkpoint_every=400,
        log_every=50,
        sample_tokens=0,
    )
    if arg == "smoke":
        config.model.update(
            num_layers=1, num_decoder_layers=1, num_heads=2, d_model=32, d_ff=64, max_len=32, dropout=0.0
        )
        config.data.update(seq_len=32, batch_size=8, vocab_size=600, tokenizer_train_examples=20)
        config.optim.update(warmup_steps=2)
        config.train.update(
            num_steps=4, eval_every=4, eval_batches=2, checkpoint_every=4, log_every=2, progress=False
        )
    elif arg:
        raise InputError(f"t5_span.py takes '' or 'smoke', not {arg!r}")
    return config
