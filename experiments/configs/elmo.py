"""ELMo: character-CNN tokens + 2-layer bidirectional LSTM LM on gensim's Wikipedia sample, then its frozen
layers, mixed by a learned scalar mix, feed a classifier on Rotten Tomatoes.

  python -m lmjax.main --config=experiments/configs/elmo.py --workdir=workdirs/elmo
  python -m lmjax.main --config=experiments/configs/elmo.py:rotten_tomatoes --workdir=workdirs/elmo_rt \
      --config.finetune.init=workdirs/elmo

Pretraining: sentencepiece vocabulary of 4,000 (each piece's characters are the model's input), 64-token
windows, batch 32, the forward and backward LM losses summed. Fine-tuning freezes the whole ELMo
('backbone/'), and trains only the scalar mix gamma * sum_j softmax(s)_j h_j over its 3 layers and a linear
head on the mean-pooled mix.

Arguments: '' pretraining; 'rotten_tomatoes' the frozen-feature classifier; 'smoke' / 'smoke_rotten_tomatoes'
tiny versions for the tests (the latter needs finetune.init set to a small pretrained workdir). """

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    arg = arg or ""
    if arg not in ("", "rotten_tomatoes", "smoke", "smoke_rotten_tomatoes"):
        raise InputError(
            f"elmo.py takes '', 'rotten_tomatoes', 'smoke' or 'smoke_rotten_tomatoes', not {arg!r}"
        )
    config = base_config.base()
    config.model.update(
        family="elmo",
        num_layers=2,
        d_model=256,
        dropout=0.1,
        char_dim=16,
        char_filters="1:32,2:32,3:64,4:128,5:256",
        highway_layers=2,
    )
    config.data.update(
        corpus="wiki_sample",
        tokenizer="sentencepiece",
        vocab_size=4000,
        seq_len=64,
        batch_size=32,
        max_chars=20,
    )
    config.optim.update(
        learning_rate=2e-3, min_learning_rate=1e-4, warmup_steps=100, b2=0.99, weight_decay=0.0
    )
    config.train.update(
        objective="bilm",
        num_steps=1000,
        eval_every=500,
        eval_batches=20,
        checkpoint_every=500,
        log_every=50,
        sample_tokens=0,
    )
    if arg.endswith("rotten_tomatoes"):
        config.mode = "finetune"
        config.task.update(
            name="rotten_tomatoes", pooling="mean", seq_len=64, batch_size=32, head_dropout=0.1
        )
        config.finetune.update(init="workdirs/elmo")
        config.optim.update(freeze="backbone/", learning_rate=3e-3, min_learning_rate=1e-4, warmup_steps=30)
        config.train.update(num_steps=400, eval_every=200, checkpoint_every=400, log_every=25)
    if arg.startswith("smoke"):
        config.model.update(d_model=16, char_dim=4, char_filters="1:4,2:4,3:8", highway_layers=1)
        config.data.update(seq_len=16, batch_size=8, vocab_size=600, tokenizer_train_examples=20, max_chars=8)
        config.task.update(seq_len=16, batch_size=8)
        config.optim.update(warmup_steps=1)
        config.train.update(
            num_steps=3, eval_every=3, eval_batches=2, checkpoint_every=3, log_every=1, progress=False
        )
    return config
