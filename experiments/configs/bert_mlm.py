"""BERT-style encoder pretrained with masked LM + next-sentence prediction on gensim's Wikipedia sample.

  python -m lmjax.main --config=experiments/configs/bert_mlm.py --workdir=workdirs/bert_mlm

A post-LayerNorm encoder (BERT's architecture: embedding LayerNorm, segment embeddings, exact GELU, MLM
transform + tied decoder + bias, tanh pooler + NSP classifier), 4 layers x 128, on 128-token sentence
pairs with a sentencepiece vocabulary of 4,000 trained on the corpus. The evaluation reports MLM accuracy
next to eval/unigram_accuracy (always predicting the most frequent masked token) and NSP accuracy.

Arguments (`--config=...bert_mlm.py:ARG`): '' the CPU run above; 'smoke' a tiny run for the tests.
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
        max_len=128,
        positions="learned",
        norm="layernorm",
        norm_position="post",
        norm_eps=1e-12,
        activation="gelu",
        embed_norm=True,
        type_vocab_size=2,
        encoder_heads="mlm_nsp",
        dropout=0.1,
    )
    config.data.update(
        corpus="wiki_sample",
        tokenizer="sentencepiece",
        vocab_size=4000,
        seq_len=128,
        batch_size=32,
        nsp=True,
        mask_rate=0.15,
        whole_word=False,
    )
    config.optim.update(
        learning_rate=1e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.98, weight_decay=0.01
    )
    config.train.update(
        objective="mlm",
        num_steps=800,
        eval_every=200,
        eval_batches=20,
        checkpoint_every=400,
        log_every=50,
        sample_tokens=0,
    )
    if arg == "smoke":
        config.model.update(num_layers=1, num_heads=2, d_model=32, d_ff=64, max_len=32, dropout=0.0)
        config.data.update(seq_len=32, batch_size=8, vocab_size=600, tokenizer_train_examples=20)
        config.optim.update(warmup_steps=2)
        config.train.update(
            num_steps=4, eval_every=4, eval_batches=2, checkpoint_every=4, log_every=2, progress=False
        )
    elif arg:
        raise InputError(f"bert_mlm.py takes '' or 'smoke', not {arg!r}")
    return config
