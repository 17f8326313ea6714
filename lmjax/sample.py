"""Sampling from a trained workdir, with the run's own config, tokenizer and latest parameters."""
from __future__ import annotations

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax import checkpoint, decode, storage, train
from lmjax import config as config_lib
from lmjax.data import tokenizers
from lmjax.errors import InputError, MissingInput


def load_trained(workdir: str | epath.PathLike) -> tuple[train.Setup, nnx.State, tokenizers.Tokenizer, int]:
    """The latest parameters of a workdir, with the run's own config and tokenizer."""
    workdir = storage.workdir(workdir)
    saved = checkpoint.load_config(workdir)
    steps = checkpoint.saved_steps(workdir)
    if saved is None or not steps:
        raise MissingInput(f"{workdir} holds no trained run (no {checkpoint.CONFIG_FILE} and checkpoint); "
                           "train first or point --workdir at a run")
    config = config_lib.from_saved(saved)
    tok = tokenizers.load(workdir / checkpoint.TOKENIZER_DIR)
    if tok.vocab_size > config.model.vocab_size:
        raise InputError(f"the tokenizer in {workdir / checkpoint.TOKENIZER_DIR} has {tok.vocab_size} tokens but the "
                         f"checkpoint's model has {config.model.vocab_size}; restore the run's own tokenizer")
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    s = train.setup(config)
    abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
    state = checkpoint.restore(checkpoint.manager(workdir, keep=1), steps[-1], abstract, None)
    return s, state.params, tok, steps[-1]


def sample(config: ConfigDict, workdir: str | epath.PathLike) -> str:
    """Prints and returns config.sample.num_samples continuations of config.sample.prompt."""
    s, params, tok, step = load_trained(workdir)
    c = config.sample
    if s.config.model.family != "decoder":
        raise InputError(f"{workdir} holds a model.family={s.config.model.family!r} model; sampling text needs a "
                         "decoder (use lmjax.decode.generate / beam_search with inputs for encoder-decoders)")
    text = decode.sample_text(s.graphdef, params, tok, c, c.num_tokens, jax.random.PRNGKey(c.seed))
    print(f"--- {c.num_samples} sample(s) from {workdir} at step {step} (temperature {c.temperature}, top-k {c.top_k}, "
          f"top-p {c.top_p}) ---")
    print(text)
    return text
