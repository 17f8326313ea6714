"""GGUF (llama.cpp's file format) in: a Llama- or Qwen2-architecture file -> (model, model config, tokenizer).

  model, model_config, tokenizer = lmjax.interop.gguf.load("SmolLM2-135M-Instruct.Q4_1.gguf")

The `gguf` package reads the file and dequantises each tensor to float32 (the model's compute dtype casts
from there). llama.cpp stores Llama's query/key rows in an interleaved rotary order; they are put back in
the half-split order of Hugging Face and lmjax, renamed to Hugging Face's tensor names and built by
`hf.from_tensors`, so a GGUF and the Hugging Face directory it came from give the same lmjax model. The
tokenizer (byte-level BPE) and chat template come from the file's metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from lmjax.data import tokenizers
from lmjax.errors import InputError, MissingInput, Unavailable
from lmjax.interop import hf

# general.architecture -> (Hugging Face class, whether llama.cpp interleaved the query/key rows)
ARCHITECTURES = {"llama": ("LlamaForCausalLM", True), "qwen2": ("Qwen2ForCausalLM", False)}
TENSOR_NAMES = {  # GGUF -> Hugging Face, per block ('blk.N.' -> 'model.layers.N.')
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# tokenizer.ggml.pre -> how text is split before byte-level BPE (llama.cpp's pre-tokenizer types)
PRE_TOKENIZERS = {"gpt2": None, "smollm": "digits", "llama-bpe": _LLAMA3_SPLIT, "qwen2": _QWEN2_SPLIT}
CONTROL = 3  # tokenizer.ggml.token_type of special tokens


def _reader(path: str | Path):
    try:
        import gguf
    except ImportError as e:
        raise Unavailable("reading GGUF files needs the gguf package: pip install gguf==0.19.0") from e
    if not Path(path).is_file():
        raise MissingInput(f"{path} is not a file; give the path of a .gguf file")
    try:
        return gguf.GGUFReader(path)
    except ValueError as e:  # the reader's own check of the magic number and version
        raise InputError(f"{path} is not a GGUF file the gguf package can read ({e})") from None


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise InputError(
                f"the GGUF file lacks metadata {key!r}; it was not written by llama.cpp's converter"
            )
        return default
    return field.contents()


def _hf_config(reader, arch: str) -> dict:
    """The Hugging Face config.json a llama.cpp converter read, rebuilt from the file's metadata."""
    if _field(reader, f"{arch}.rope.scaling.type", "none") not in ("none", ""):
        raise InputError(
            f"GGUF with RoPE scaling {_field(reader, f'{arch}.rope.scaling.type')!r} is not supported"
        )
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    d = int(_field(reader, f"{arch}.embedding_length"))
    embed = [t for t in reader.tensors if t.name == "token_embd.weight"]
    if not embed:
        raise InputError("the GGUF file has no token_embd.weight tensor; it holds no language model")
    return dict(
        architectures=[ARCHITECTURES[arch][0]],
        vocab_size=int(embed[0].shape[-1]),  # ggml lists dimensions innermost first: [D, V]
        hidden_size=d,
        intermediate_size=int(_field(reader, f"{arch}.feed_forward_length")),
        num_hidden_layers=int(_field(reader, f"{arch}.block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", d // heads)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length")),
        rms_norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    )


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's query/key rows, per head (K/2 pairs), back to the half-split order (2 halves of K/2)."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tensors(reader, hf_config: dict, interleaved: bool) -> dict[str, np.ndarray]:
    from gguf import quants

    out = {}
    for t in reader.tensors:
        try:
            w = quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise InputError(
                f"tensor {t.name} is stored as {t.tensor_type.name}, which the gguf package cannot "
                "dequantise; convert the model with a supported type (F16, BF16, Q4_0 ... Q8_0, K-quants)"
            ) from None
        w = np.asarray(w, np.float32).reshape(tuple(reversed([int(n) for n in t.shape])))
        stem, _, kind = t.name.rpartition(".")
        parts = stem.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in TENSOR_NAMES:
            name = f"model.layers.{parts[1]}.{TENSOR_NAMES[parts[2]]}.{kind}"
            if interleaved and parts[2] in ("attn_q", "attn_k"):
                heads = hf_config["num_attention_heads" if parts[2] == "attn_q" else "num_key_value_heads"]
                w = _unpermute(w, heads)
        elif stem in GLOBAL_NAMES:
            name = f"{GLOBAL_NAMES[stem]}.{kind}"
        else:
            raise InputError(f"the GGUF file holds tensor {t.name!r}, which lmjax's Llama/Qwen2 models lack")
        out[name] = w
    return out


def tokenizer(reader) -> tokenizers.HFTokenizer:
    """The file's byte-level BPE vocabulary, merges, special tokens and chat template as a Hugging Face
    tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = _field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre", "gpt2")
    if kind != "gpt2" or pre not in PRE_TOKENIZERS:
        raise InputError(
            f"GGUF tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported; lmjax reads byte-level "
            f"BPE ('gpt2') with pre-tokenizers {sorted(PRE_TOKENIZERS)}"
        )
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]  # GPT-2's own regex inside ByteLevel unless a split of its own replaces it
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split in (None, "digits"))
    if split == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif split:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), "isolated"), byte_level]
        )
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))  # 1: normal
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t, k in zip(tokens, types, strict=True)
            if k == CONTROL
        ]
    )
    config = {
        key: tokens[int(_field(reader, f"tokenizer.ggml.{key}_token_id"))]
        for key in ("bos", "eos", "padding")
        if f"tokenizer.ggml.{key}_token_id" in reader.fields
    }
    config = {("pad" if k == "padding" else k) + "_token": v for k, v in config.items()}
    if "tokenizer.chat_template" in reader.fields:
        config["chat_template"] = _field(reader, "tokenizer.chat_template")
    return tokenizers.HFTokenizer(tok.to_str(), config)


def load(path: str | Path) -> tuple[nnx.Module, ConfigDict, tokenizers.HFTokenizer]:
    """Reads a GGUF file into an lmjax model; returns (model, model config, tokenizer)."""
    reader = _reader(path)
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise InputError(f"GGUF architecture {arch!r} is not supported; lmjax reads {sorted(ARCHITECTURES)}")
    hf_config = _hf_config(reader, arch)
    tokens = len(_field(reader, "tokenizer.ggml.tokens"))
    if tokens != hf_config["vocab_size"]:
        raise InputError(
            f"the GGUF tokenizer has {tokens} tokens but the model's vocabulary is {hf_config['vocab_size']} "
            "(token_embd.weight); the file's tokenizer does not belong to its weights"
        )
    tok = tokenizer(reader)
    model, model_config = hf.from_tensors(
        hf_config, _tensors(reader, hf_config, ARCHITECTURES[arch][1]), path
    )
    return model, model_config, tok
