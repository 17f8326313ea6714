"""--config.mode=sample: text from a trained workdir (its own config, tokenizer and latest parameters) or from
finetune.init (an lmjax workdir or a Hugging Face directory); sample.chat puts one user message through the
model's chat template and prints the answer."""

from __future__ import annotations

import jax
from etils import epath
from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.models import decode
from lmjax.training import pretrained


def chat(graphdef: nnx.GraphDef, params: nnx.State, tok, settings: ConfigDict) -> str:
    """The model's answer to settings.chat (one user turn), up to its end-of-sequence token."""
    if not hasattr(tok, "apply_chat_template"):
        raise InputError(
            f"sample.chat needs a chat template, which a {tok.kind} tokenizer trained here has not; use "
            "sample.prompt, or finetune.init with a Hugging Face chat model"
        )
    prompt_ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": settings.chat}]))
    answer = decode.generate(
        graphdef,
        params,
        [prompt_ids],
        jax.random.PRNGKey(settings.seed),
        num_tokens=settings.num_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        eos_id=tok.eos_id,
        pad_id=tok.pad_id,
    )
    return tok.decode(answer[0])


def run(config: ConfigDict, workdir: str | epath.PathLike) -> str:
    """Prints and returns config.sample.num_samples continuations of config.sample.prompt, or the answer to
    config.sample.chat."""
    graphdef, params, tok, source = pretrained.load_decoder(config, workdir)
    settings = config.sample
    if settings.chat:
        text = chat(graphdef, params, tok, settings)
    else:
        key = jax.random.PRNGKey(settings.seed)
        text = decode.sample_text(graphdef, params, tok, settings, settings.num_tokens, key)
    what = "an answer" if settings.chat else f"{settings.num_samples} sample(s)"
    print(
        f"--- {what} from {source} (temperature {settings.temperature}, top-k {settings.top_k}, "
        f"top-p {settings.top_p}) ---"
    )
    print(text)
    return text
