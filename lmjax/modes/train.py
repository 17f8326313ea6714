"""--config.mode=train: pretraining (from scratch or train.init), resuming the workdir's latest checkpoint.

python -m lmjax.main --config=experiments/configs/shakespeare_char.py --workdir=workdirs/run1
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, metrics, parallel, storage
from lmjax.data import mixture, tokenizers
from lmjax.evaluation import harness
from lmjax.models import decode
from lmjax.tasks import vectors
from lmjax.training import distill, loop, objectives, prepare, pretrain, pretrained, start

VECTORS_FILE = "vectors.txt"


def periodic(engine: loop.Engine, tok: tokenizers.Tokenizer) -> Callable[[int, nnx.State, bool], dict]:
    """What the run evaluates beside its validation loss: train.harness_tasks (lmjax/evaluation/harness.py)
    and a decoder's sample of train.sample_tokens tokens, as text."""
    config = engine.config
    harness_every = harness.periodic(config, tok, engine.graphdef)
    samples = config.model.family == "decoder" and config.train.sample_tokens

    def evaluate(step: int, params: nnx.State, final: bool) -> dict:
        result = harness_every(step, params, final)
        if samples:
            key = jax.random.PRNGKey(step)
            result["sample"] = decode.sample_text(
                engine.graphdef, params, tok, config.sample, config.train.sample_tokens, key
            )
        return result

    return evaluate


def run(
    config: ConfigDict, workdir: str | epath.PathLike, devices=None, overrides: Mapping[str, object] = {}
) -> dict:
    """Trains (from train.init or from scratch; resuming from the workdir's latest checkpoint if any); returns
    the final evaluation metrics.

    On SIGTERM (preemption) it saves a checkpoint at the next step boundary and returns {"preempted_at":
    step}; running it again resumes there. A finished run also writes them to results.json. `workdir` is a
    local path or a gs:// URL; `devices` (default: all) is for tests that want a smaller mesh; `overrides`:
    the command line's --config.* values (a model override must not contradict train.init).
    """
    workdir = storage.workdir(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = mixture.load_corpus(config.data)
    config, tok, pre = start.resolve_pretraining(config, workdir, corpus, overrides)
    teacher = None
    if distill.enabled(config):  # on the mesh that setup builds from the same devices
        teacher = pretrained.load_teacher(config, tok, parallel.make_layout(config.mesh, devices))
    engine, objective = pretrain.setup(config, devices, teacher), objectives.get(config.train.objective)
    train_iter = prepare.train_data(config, corpus, tok, objective)
    with loop.Run(config, workdir) as run:
        state = run.restore(engine, train_iter) if run.start else start.pretraining_state(engine, pre)
        origin = f"from train.init={config.train.init!r}" if pre else "from scratch"
        resuming = f"resuming at step {run.start}" if run.start else origin
        run.log(
            f"lmjax: {engine.num_params:,} parameters, mesh {dict(engine.mesh.shape)}, corpus {corpus.name}, "
            f"{tok.kind} tokenizer ({tok.vocab_size} tokens), {resuming}"
        )
        shares = {}
        if engine.teacher is not None:
            run.log(pretrain.teacher_report(engine))
            shares["teacher"] = engine.teacher.forward_seconds

        def train_step(state):
            return engine.train_step(state, engine.device_batch(next(train_iter)))

        def save(step: int, state) -> None:
            checkpoint.save(run.mngr, step, engine.from_engine(state), train_iter)

        tokens = config.data.batch_size * objective.tokens_per_row(config.data)
        evaluate = pretrain.make_evaluate(engine, corpus, tok, periodic(engine, tok))
        state, result = run.loop(
            engine.to_engine(state), train_step, evaluate, save, tokens, pretrain.step_flops(config), shares
        )
    if "preempted_at" not in result:  # after the Run closed: the metrics file is complete
        _finish(run, engine, engine.from_engine(state).params, tok, objective, result)
    return result


def _finish(
    run: loop.Run,
    engine: loop.Engine,
    params: nnx.State,
    tok: tokenizers.Tokenizer,
    objective: objectives.Objective,
    result: dict,
) -> None:
    """The loss plot, the word vectors of a word-vector model, results.json and the closing line."""
    if not run.lead:
        return
    plot = metrics.plot_losses(run.workdir)
    if objective.word_vectors:
        wv = vectors.WordVectors.from_model(nnx.merge(engine.graphdef, params), tok)
        wv.save_word2vec_format(run.workdir / VECTORS_FILE)
        outcome = ", ".join(
            f"{k[5:]} {result[k]:.4f}" for k in ("eval/wordsim353", "eval/simlex999", "eval/analogy")
        )
        outcome += f"; vectors in {VECTORS_FILE} (word2vec text format)"
    else:
        outcome = f"final validation loss {result.get('eval/loss', float('nan')):.4f}"
    run.write_results(
        result,
        f"{outcome}; workdir {run.workdir} (checkpoints, {metrics.JSONL}, "
        f"{metrics.TB_DIR}/, {plot.name}, {checkpoint.RESULTS_FILE})",
    )
