"""Model registry: `build(model_config, rngs)` makes the module named by `model_config.family`. Every model's
`forward(batch)` gives the outputs its objectives score (lmjax.objectives); encoders, decoders and recurrent LMs
also give `hidden_states(batch)`, which task heads read."""
from __future__ import annotations

from typing import Callable

from flax import nnx
from ml_collections import ConfigDict

from lmjax.errors import InputError
from lmjax.models.decoder import DecoderLM
from lmjax.models.elmo import ELMo, parse_filters
from lmjax.models.encoder import EncoderLM
from lmjax.models.encoder_decoder import EncoderDecoderLM
from lmjax.models.layers import Spec
from lmjax.models.rnn import RecurrentLM
from lmjax.models.wordvec import GloVe, Word2Vec


def _decoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return DecoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len, tie_embeddings=c.tie_embeddings,
                     dtype=c.dtype, rngs=rngs)


def _encoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len, type_vocab_size=c.type_vocab_size,
                     embed_norm=c.embed_norm, heads=c.encoder_heads, tie_embeddings=c.tie_embeddings, dtype=c.dtype,
                     rngs=rngs)


def _encoder_decoder(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return EncoderDecoderLM(Spec.from_config(c), vocab_size=c.vocab_size, max_len=c.max_len,
                            num_decoder_layers=c.num_decoder_layers, share_embeddings=c.share_embeddings,
                            tie_embeddings=c.tie_embeddings, scale_output=c.scale_output, dtype=c.dtype, rngs=rngs)


def _rnn(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return RecurrentLM(vocab_size=c.vocab_size, d_model=c.d_model, num_layers=c.num_layers, cell=c.cell,
                       dropout=c.dropout, tie_embeddings=c.tie_embeddings, rngs=rngs)


def _elmo(c: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    return ELMo(vocab_size=c.vocab_size, d_model=c.d_model, num_layers=c.num_layers, char_dim=c.char_dim,
                char_filters=c.char_filters, highway_layers=c.highway_layers, dropout=c.dropout, rngs=rngs)


REGISTRY: dict[str, Callable[[ConfigDict, nnx.Rngs], nnx.Module]] = {
    "decoder": _decoder, "encoder": _encoder, "encoder_decoder": _encoder_decoder, "rnn": _rnn, "elmo": _elmo,
    "word2vec": lambda c, rngs: Word2Vec(c.vocab_size, c.d_model, rngs=rngs),
    "glove": lambda c, rngs: GloVe(c.vocab_size, c.d_model, rngs=rngs)}


def build(model_config: ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
    try:
        factory = REGISTRY[model_config.family]
    except KeyError:
        raise InputError(f"model.family={model_config.family!r} is unknown; use one of {sorted(REGISTRY)}") from None
    return factory(model_config, rngs)


def check(c: ConfigDict) -> None:
    """The checks that involve the model: its family, its characters and positions against the data's lengths."""
    if c.model.family not in REGISTRY:
        raise InputError(f"model.family={c.model.family!r} is unknown; use one of {sorted(REGISTRY)}")
    if c.model.family == "elmo" and max(w for w, _ in parse_filters(c.model.char_filters)) > c.data.max_chars:
        raise InputError(f"model.char_filters={c.model.char_filters!r} has filters wider than data.max_chars="
                         f"{c.data.max_chars} characters; raise data.max_chars or narrow the filters")
    if c.model.family not in ("decoder", "encoder", "encoder_decoder"):
        if c.model.remat != "none":
            raise InputError(f"model.remat={c.model.remat!r} applies to Transformer blocks, which a "
                             f"model.family={c.model.family!r} model has none of; leave model.remat='none'")
        return  # recurrent and word-vector models have no position table
    if c.data.seq_len > c.model.max_len:
        raise InputError(f"data.seq_len={c.data.seq_len} is longer than the model's positions "
                         f"(model.max_len={c.model.max_len}); shorten data.seq_len or raise model.max_len")
    if c.mode == "finetune" and c.task.seq_len > c.model.max_len:
        raise InputError(f"task.seq_len={c.task.seq_len} is longer than the model's positions "
                         f"(model.max_len={c.model.max_len}); shorten task.seq_len")
