"""Model registry: `build(model_config, rngs)` makes the module named by `model_config.family`. Every model's
`forward(batch)` gives the outputs its objectives score (lmjax.training.objectives); encoders, decoders and
recurrent LMs also give `hidden_states(batch)`, which task heads read."""

from __future__ import annotations

from typing import Callable

from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.models.decoder import DecoderLM
from lmjax.models.elmo import ELMo, parse_filters
from lmjax.models.encoder import EncoderLM
from lmjax.models.encoder_decoder import EncoderDecoderLM
from lmjax.models.layers import Spec, restack
from lmjax.models.rnn import RecurrentLM
from lmjax.models.wordvec import GloVe, Word2Vec


def _decoder(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return DecoderLM(
        Spec.from_config(model_config),
        vocab_size=model_config.vocab_size,
        max_len=model_config.max_len,
        tie_embeddings=model_config.tie_embeddings,
        dtype=model_config.dtype,
        rngs=rngs,
    )


def _encoder(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderLM(
        Spec.from_config(model_config),
        vocab_size=model_config.vocab_size,
        max_len=model_config.max_len,
        type_vocab_size=model_config.type_vocab_size,
        embed_norm=model_config.embed_norm,
        heads=model_config.encoder_heads,
        tie_embeddings=model_config.tie_embeddings,
        dtype=model_config.dtype,
        rngs=rngs,
    )


def _encoder_decoder(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderDecoderLM(
        Spec.from_config(model_config),
        vocab_size=model_config.vocab_size,
        max_len=model_config.max_len,
        num_decoder_layers=model_config.num_decoder_layers,
        share_embeddings=model_config.share_embeddings,
        tie_embeddings=model_config.tie_embeddings,
        scale_output=model_config.scale_output,
        dtype=model_config.dtype,
        rngs=rngs,
    )


def _rnn(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return RecurrentLM(
        vocab_size=model_config.vocab_size,
        d_model=model_config.d_model,
        num_layers=model_config.num_layers,
        cell=model_config.cell,
        dropout=model_config.dropout,
        tie_embeddings=model_config.tie_embeddings,
        rngs=rngs,
    )


def _elmo(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return ELMo(
        vocab_size=model_config.vocab_size,
        d_model=model_config.d_model,
        num_layers=model_config.num_layers,
        char_dim=model_config.char_dim,
        char_filters=model_config.char_filters,
        highway_layers=model_config.highway_layers,
        dropout=model_config.dropout,
        rngs=rngs,
    )


REGISTRY: dict[str, Callable[[ConfigDict, nnx.Rngs], nnx.Module]] = {
    "decoder": _decoder,
    "encoder": _encoder,
    "encoder_decoder": _encoder_decoder,
    "rnn": _rnn,
    "elmo": _elmo,
    "word2vec": lambda model_config, rngs: Word2Vec(
        model_config.vocab_size, model_config.d_model, share_negatives=model_config.share_negatives, rngs=rngs
    ),
    "glove": lambda model_config, rngs: GloVe(model_config.vocab_size, model_config.d_model, rngs=rngs),
}


def build(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    try:
        factory = REGISTRY[model_config.family]
    except KeyError:
        raise InputError(
            f"model.family={model_config.family!r} is unknown; use one of {sorted(REGISTRY)}"
        ) from None
    return factory(model_config, rngs)


def graphdef(model_config: ConfigDict) -> nnx.GraphDef:
    """The structure of the model `model_config` describes, built abstractly (no parameters are made)."""
    return nnx.graphdef(nnx.eval_shape(lambda: build(model_config, nnx.Rngs(0))))


def with_layout(model_config: ConfigDict, params: nnx.State, scanned: bool) -> tuple[ConfigDict, nnx.State]:
    """A model's config and parameters converted to the scanned (model.scan_layers) or per-block layout."""
    model_config = ConfigDict(model_config.to_dict() | {"scan_layers": scanned})
    abstract = nnx.state(nnx.eval_shape(lambda: build(model_config, nnx.Rngs(0))), nnx.Param)
    nnx.replace_by_pure_dict(abstract, restack(params.to_pure_dict(), scanned))
    return model_config, abstract


def check(config: ConfigDict) -> None:
    """The checks that involve the model: its family, its characters and positions against the data's
    lengths."""
    if config.model.family not in REGISTRY:
        raise InputError(f"model.family={config.model.family!r} is unknown; use one of {sorted(REGISTRY)}")
    if (
        config.model.family == "elmo"
        and max(w for w, _ in parse_filters(config.model.char_filters)) > config.data.max_chars
    ):
        raise InputError(
            f"model.char_filters={config.model.char_filters!r} has filters wider than data.max_chars="
            f"{config.data.max_chars} characters; raise data.max_chars or narrow the filters"
        )
    if config.model.family not in ("decoder", "encoder", "encoder_decoder"):
        for key, plain in (("remat", "none"), ("scan_layers", False), ("attention", "auto")):
            if config.model[key] != plain:
                raise InputError(
                    f"model.{key}={config.model[key]!r} applies to Transformer blocks, which a "
                    f"model.family={config.model.family!r} model has none of; leave model.{key}={plain!r}"
                )
        return  # recurrent and word-vector models have no position table
    if config.data.seq_len > config.model.max_len:
        raise InputError(
            f"data.seq_len={config.data.seq_len} is longer than the model's positions "
            f"(model.max_len={config.model.max_len}); shorten data.seq_len or raise model.max_len"
        )
    if config.mode == "finetune" and config.task.seq_len > config.model.max_len:
        raise InputError(
            f"task.seq_len={config.task.seq_len} is longer than the model's positions "
            f"(model.max_len={config.model.max_len}); shorten task.seq_len"
        )
