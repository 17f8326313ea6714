"""word2vec (skip-gram or CBOW with negative sampling) and GloVe on the same trainer.

  python -m lmjax.main --config=experiments/configs/word2vec.py --workdir=workdirs/skipgram
  python -m lmjax.main --config=experiments/configs/word2vec.py:cbow --workdir=workdirs/cbow
  python -m lmjax.main --config=experiments/configs/word2vec.py:glove --workdir=workdirs/glove

The vectors are written to WORKDIR/vectors.txt (word2vec text format) and scored on WordSim-353, SimLex-999
and the Google analogies at every evaluation. Default corpus: gensim's Wikipedia sample
(data.corpus=wiki_sample); benchmarks/word2vec_vs_gensim.py trains on Wikipedia + Shakespeare + the KJV and
compares with gensim.

Arguments (`--config=...word2vec.py:ARG`):
  ''/'skipgram'  skip-gram, gensim's defaults: 100 dims, window 5, 5 negatives, min_count 5, sample 1e-3, SGD
                 with the learning rate decaying linearly (word2vec's 0.025 per example x the update's
                 examples, see below); steps of 64 sparse updates of 1,024 examples each; groups of 32
                 examples share their noise words (model.share_negatives, BlazingText's negative sharing;
                 CBOW keeps word2vec.c's noise words per example)
  'cbow'         CBOW (mean of the window), word2vec.c's CBOW learning rate 0.05 per example
  'glove'        GloVe: window 10, x_max 10 (GloVe's demo.sh value for small corpora; the paper's 100 suits
                 billions of words), alpha 0.75, AdaGrad 0.25 on batches of 4,096 entries, vectors W + W~
  'smoke'        the test suite's: 16 dims, a few steps ('smoke_cbow', 'smoke_glove' likewise)

Updates touch only the rows a batch reads (lmjax/training/sparse.py); a step of data.batch_size examples makes
optim.updates_per_step updates one after another. Learning rate: an update's gradient is the mean over its
examples, so a per-example rate r (word2vec's alpha) is optim.learning_rate = r x data.batch_size /
optim.updates_per_step; GloVe's AdaGrad, whose accumulator glove.c starts at 1
for per-entry gradients, starts at 1 / data.batch_size^2 (the same first update for the mean). A batch moves
each row once where glove.c moves it once per entry, so GloVe's rate is 0.25 rather than glove.c's 0.05: on
the benchmark corpus 0.05 still gave WordSim-353 0.05 after 12 epochs, 0.25 gives 0.27 after 4
(benchmarks/RESULTS.md)."""

from lmjax import config as base_config
from lmjax.errors import InputError

EXAMPLE_RATE = {"skipgram": 0.025, "cbow": 0.05}


def get_config(arg: str | None = None):
    arg = arg or "skipgram"
    smoke = arg.startswith("smoke")
    kind = arg.removeprefix("smoke").removeprefix("_") or "skipgram"
    if kind not in ("skipgram", "cbow", "glove"):
        raise InputError(
            f"word2vec.py takes '', 'skipgram', 'cbow', 'glove' or 'smoke[_cbow|_glove]', not {arg!r}"
        )
    config = base_config.base()
    config.data.update(
        corpus="wiki_sample",
        tokenizer="word",
        min_count=5,
        validation_fraction=0.01,
        window=5,
        negatives=5,
        sample=1e-3,
        batch_size=1024,
    )
    config.model.update(family="glove" if kind == "glove" else "word2vec", d_model=100)
    config.train.update(objective=kind, num_steps=200, eval_every=100, checkpoint_every=100, log_every=10)
    if kind == "glove":
        # glove.c's AdaGrad per entry (sum of squares from 1), on the batch-mean gradient: from 1 / B^2
        config.data.update(window=10, batch_size=4096)
        config.train.update(
            glove_x_max=10.0, num_steps=3000, eval_every=1000, checkpoint_every=1000, log_every=100
        )
        config.optim.update(
            name="adagrad",
            learning_rate=0.25,
            min_learning_rate=0.25,
            warmup_steps=0,
            grad_clip=0.0,
            weight_decay=0.0,
            initial_accumulator=1.0 / config.data.batch_size**2,
            eps=1e-20,
        )
    else:  # sum-of-examples SGD as word2vec, linear decay to 0.0001 per example
        # 64 updates of 1,024 examples per step: 50 steps make 3.3 M examples
        r, update, updates = EXAMPLE_RATE[kind], 1024, 64
        config.data.batch_size = updates * update
        config.model.share_negatives = 32 if kind == "skipgram" else 1  # measured for skip-gram (RESULTS.md)
        config.train.update(num_steps=50, eval_every=25, checkpoint_every=25, log_every=5)
        config.optim.update(
            name="sgd",
            schedule="linear",
            updates_per_step=updates,
            learning_rate=r * update,
            min_learning_rate=1e-4 * update,
            warmup_steps=0,
            grad_clip=0.0,
            weight_decay=0.0,
        )
    if smoke:
        config.data.update(min_count=2, batch_size=64)
        config.optim.updates_per_step = 1
        config.model.share_negatives = 4 if kind == "skipgram" else 1  # 64 examples over up to 8 devices
        config.optim.initial_accumulator = 1.0 / 64**2 if kind == "glove" else 0.0
        config.model.update(d_model=16)
        config.train.update(num_steps=6, eval_every=3, checkpoint_every=3, log_every=3, progress=False)
        if kind != "glove":
            config.optim.update(learning_rate=EXAMPLE_RATE[kind] * 64, min_learning_rate=1e-4 * 64)
    return config
