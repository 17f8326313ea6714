"""Hugging Face interop: load a `save_pretrained` directory into an lmjax model, save lmjax params back.

  model, model_config = lmjax.interop.hf.load("path/to/gpt2")   # forward returns logits
  lmjax.interop.hf.save(model, model_config, "path/to/out")        # config.json + model.safetensors

Architectures: GPT2LMHeadModel; LlamaForCausalLM (grouped-query attention, tied or untied head),
MistralForCausalLM (positions capped at its sliding window; saved back as Llama) and Qwen2ForCausalLM
(Llama with query/key/value biases); BertModel
(forward returns hidden states), BertForMaskedLM, BertForPreTraining (MLM logits from forward;
`nsp_logits(encode(...))` for NSP); T5ForConditionalGeneration.
Neither torch nor transformers is needed, except to read a pytorch_model.bin (torch).

Each architecture is a table of (lmjax parameter, HF tensor, layout) rows; a layout converts both ways. An HF
name 'x:i' is part i of 3 along tensor x's last axis (GPT-2's fused query/key/value).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx
from ml_collections import ConfigDict

from lmjax import config as base_config
from lmjax import models
from lmjax.errors import InputError, MissingInput

# layout: (HF -> lmjax given the lmjax shape, lmjax -> HF). Torch Linear weights are [out, in]; GPT-2's
# Conv1D weights are [in, out].
LAYOUTS = {
    "copy": (lambda h, shape: h.reshape(shape), lambda x: x),
    "flat": (lambda h, shape: h.reshape(shape), lambda x: x.reshape(-1)),
    "linear": (lambda h, shape: h.T, lambda x: x.T),  # Dense kernel [in, out]
    "linear_in": (lambda h, shape: h.T.reshape(shape), lambda x: x.reshape(x.shape[0], -1).T),  # [D, H, K]
    "linear_out": (lambda h, shape: h.T.reshape(shape), lambda x: x.reshape(-1, x.shape[-1]).T),  # [H, K, D]
    "conv_in": (lambda h, shape: h.reshape(shape), lambda x: x.reshape(x.shape[0], -1)),
    "conv_out": (lambda h, shape: h.reshape(shape), lambda x: x.reshape(-1, x.shape[-1])),
}
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "gated-gelu": "geglu",
    "gated-silu": "swiglu",
}


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise InputError(f"activation {name!r} is not supported; lmjax imports {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


# ---------------------------------------------------------------------------------------------
# GPT-2


def _gpt2_config(hf: dict, weights: dict) -> dict:
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("reorder_and_upcast_attn"):
        raise InputError(
            "GPT-2 variants with scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn are not supported"
        )
    return dict(
        family="decoder",
        vocab_size=hf["vocab_size"],
        num_layers=hf["n_layer"],
        num_heads=hf["n_head"],
        d_model=hf["n_embd"],
        d_ff=hf.get("n_inner") or 4 * hf["n_embd"],
        max_len=hf["n_positions"],
        positions="learned",
        norm="layernorm",
        norm_position="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        activation=_activation(hf.get("activation_function", "gelu_new")),
        use_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _gpt2_hf_config(model_config: ConfigDict) -> dict:
    _require(
        model_config,
        "GPT2LMHeadModel",
        positions="learned",
        norm="layernorm",
        norm_position="pre",
        use_bias=True,
        scale_attention=True,
        tie_embeddings=True,
        activation=("gelu_tanh", "gelu", "relu"),
    )
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[model_config.activation]
    return dict(
        model_type="gpt2",
        vocab_size=model_config.vocab_size,
        n_layer=model_config.num_layers,
        n_head=model_config.num_heads,
        n_embd=model_config.d_model,
        n_inner=model_config.d_ff or 4 * model_config.d_model,
        n_positions=model_config.max_len,
        layer_norm_epsilon=model_config.norm_eps,
        activation_function=act,
        tie_word_embeddings=True,
    )


def _gpt2_rows(model_config: ConfigDict, arch: str) -> list[tuple[str, str, str]]:
    rows = [
        ("embed_VD", "transformer.wte.weight", "copy"),
        ("pos_embed_LD", "transformer.wpe.weight", "copy"),
        ("final_norm.scale", "transformer.ln_f.weight", "copy"),
        ("final_norm.bias", "transformer.ln_f.bias", "copy"),
    ]
    for i in range(model_config.num_layers):
        h, b = f"transformer.h.{i}", f"blocks.{i}"
        rows += [
            (f"{b}.attn_norm.scale", f"{h}.ln_1.weight", "copy"),
            (f"{b}.attn_norm.bias", f"{h}.ln_1.bias", "copy"),
            (f"{b}.attn.query_DHK", f"{h}.attn.c_attn.weight:0", "conv_in"),
            (f"{b}.attn.key_DHK", f"{h}.attn.c_attn.weight:1", "conv_in"),
            (f"{b}.attn.value_DHK", f"{h}.attn.c_attn.weight:2", "conv_in"),
            (f"{b}.attn.query_bias_HK", f"{h}.attn.c_attn.bias:0", "flat"),
            (f"{b}.attn.key_bias_GK", f"{h}.attn.c_attn.bias:1", "flat"),
            (f"{b}.attn.value_bias_GK", f"{h}.attn.c_attn.bias:2", "flat"),
            (f"{b}.attn.out_HKD", f"{h}.attn.c_proj.weight", "conv_out"),
            (f"{b}.attn.out_bias_D", f"{h}.attn.c_proj.bias", "copy"),
            (f"{b}.mlp_norm.scale", f"{h}.ln_2.weight", "copy"),
            (f"{b}.mlp_norm.bias", f"{h}.ln_2.bias", "copy"),
            (f"{b}.mlp.up.kernel", f"{h}.mlp.c_fc.weight", "copy"),
            (f"{b}.mlp.up.bias", f"{h}.mlp.c_fc.bias", "copy"),
            (f"{b}.mlp.down.kernel", f"{h}.mlp.c_proj.weight", "copy"),
            (f"{b}.mlp.down.bias", f"{h}.mlp.c_proj.bias", "copy"),
        ]
    return rows


# ---------------------------------------------------------------------------------------------
# Llama (and the Llama-shaped checkpoints: SmolLM, TinyLlama, ...): pre-RMSNorm, rotary positions in the
# half-split layout that lmjax uses too, SwiGLU, no biases, grouped-query attention.


def _llama_config(hf: dict, weights: dict) -> dict:
    rope = hf.get("rope_parameters") or {}  # transformers 5; 4.x: rope_theta / rope_scaling at the top level
    if hf.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        scaling = hf.get("rope_scaling") or rope
        raise InputError(f"Llama with RoPE scaling {scaling!r} is not supported (plain RoPE only)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise InputError("Llama with attention_bias / mlp_bias is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise InputError(f"Llama with hidden_act={hf['hidden_act']!r} is not supported (SwiGLU: 'silu')")
    heads = hf["num_attention_heads"]
    return dict(
        family="decoder",
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        max_len=hf.get("max_position_embeddings", 2048),
        positions="rotary",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm="rmsnorm",
        norm_position="pre",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        activation="swiglu",
        use_bias=False,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def _mistral_config(hf: dict, weights: dict) -> dict:
    """Mistral is Llama with sliding-window attention: capping the positions at the window makes every
    sequence lmjax takes one the window does not cut (it saves back as LlamaForCausalLM)."""
    config = _llama_config(hf, weights)
    if hf.get("sliding_window"):
        config["max_len"] = min(config["max_len"], hf["sliding_window"])
    return config


def _qwen2_config(hf: dict, weights: dict) -> dict:
    """Qwen2 is Llama with query/key/value biases; sliding-window layers (use_sliding_window) are refused."""
    if hf.get("use_sliding_window"):
        raise InputError("Qwen2 with use_sliding_window=True is not supported (full attention only)")
    return _llama_config(hf | {"attention_bias": False}, weights) | dict(qkv_bias=True)


def _llama_hf_config(model_config: ConfigDict) -> dict:
    _require(
        model_config,
        "LlamaForCausalLM",
        norm="rmsnorm",
        norm_position="pre",
        activation="swiglu",
        use_bias=False,
        scale_attention=True,
    )
    qwen2 = model_config.qkv_bias
    return dict(
        model_type="qwen2" if qwen2 else "llama",
        vocab_size=model_config.vocab_size,
        hidden_size=model_config.d_model,
        intermediate_size=model_config.d_ff or 4 * model_config.d_model,
        num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_heads,
        num_key_value_heads=model_config.num_kv_heads or model_config.num_heads,
        head_dim=model_config.head_dim or model_config.d_model // model_config.num_heads,
        max_position_embeddings=model_config.max_len,
        rms_norm_eps=model_config.norm_eps,
        rope_theta=model_config.rope_theta,  # transformers 4.x; 5.x reads rope_parameters
        rope_parameters={"rope_theta": model_config.rope_theta, "rope_type": "default"},
        hidden_act="silu",
        tie_word_embeddings=bool(model_config.tie_embeddings),
    ) | (dict(use_sliding_window=False) if qwen2 else dict(attention_bias=False, mlp_bias=False))


def _llama_rows(model_config: ConfigDict, arch: str) -> list[tuple[str, str, str]]:
    rows = [
        ("embed_VD", "model.embed_tokens.weight", "copy"),
        ("final_norm.scale", "model.norm.weight", "copy"),
    ]
    if not model_config.tie_embeddings:
        rows.append(("head_DV", "lm_head.weight", "linear"))
    for i in range(model_config.num_layers):
        h, b = f"model.layers.{i}", f"blocks.{i}"
        rows += [
            (f"{b}.attn_norm.scale", f"{h}.input_layernorm.weight", "copy"),
            (f"{b}.attn.query_DHK", f"{h}.self_attn.q_proj.weight", "linear_in"),
            (f"{b}.attn.key_DHK", f"{h}.self_attn.k_proj.weight", "linear_in"),
            (f"{b}.attn.value_DHK", f"{h}.self_attn.v_proj.weight", "linear_in"),
            (f"{b}.attn.out_HKD", f"{h}.self_attn.o_proj.weight", "linear_out"),
            (f"{b}.mlp_norm.scale", f"{h}.post_attention_layernorm.weight", "copy"),
            # lmjax's MLP is act(up(x)) * gate(x); Llama's act(gate_proj(x)) * up_proj(x)
            (f"{b}.mlp.up.kernel", f"{h}.mlp.gate_proj.weight", "linear"),
            (f"{b}.mlp.gate.kernel", f"{h}.mlp.up_proj.weight", "linear"),
            (f"{b}.mlp.down.kernel", f"{h}.mlp.down_proj.weight", "linear"),
        ]
        if model_config.qkv_bias:
            rows += [
                (f"{b}.attn.query_bias_HK", f"{h}.self_attn.q_proj.bias", "flat"),
                (f"{b}.attn.key_bias_GK", f"{h}.self_attn.k_proj.bias", "flat"),
                (f"{b}.attn.value_bias_GK", f"{h}.self_attn.v_proj.bias", "flat"),
            ]
    return rows


# ---------------------------------------------------------------------------------------------
# BERT

BERT_HEADS = {"BertModel": "none", "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm_nsp"}


def _bert_config(hf: dict, weights: dict, arch: str) -> dict:
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise InputError(
            f"BERT with position_embedding_type={hf['position_embedding_type']!r} is not supported"
        )
    return dict(
        family="encoder",
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        d_model=hf["hidden_size"],
        d_ff=hf["intermediate_size"],
        max_len=hf["max_position_embeddings"],
        positions="learned",
        norm="layernorm",
        norm_position="post",
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        activation=_activation(hf.get("hidden_act", "gelu")),
        use_bias=True,
        type_vocab_size=hf.get("type_vocab_size", 2),
        embed_norm=True,
        encoder_heads=BERT_HEADS[arch],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _bert_hf_config(model_config: ConfigDict) -> dict:
    _require(
        model_config,
        "BERT",
        positions="learned",
        norm="layernorm",
        norm_position="post",
        use_bias=True,
        embed_norm=True,
        scale_attention=True,
        tie_embeddings=True,
        activation=("gelu", "gelu_tanh", "relu"),
    )
    act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}[model_config.activation]
    return dict(
        model_type="bert",
        vocab_size=model_config.vocab_size,
        num_hidden_layers=model_config.num_layers,
        num_attention_heads=model_config.num_heads,
        hidden_size=model_config.d_model,
        intermediate_size=model_config.d_ff or 4 * model_config.d_model,
        max_position_embeddings=model_config.max_len,
        type_vocab_size=model_config.type_vocab_size,
        layer_norm_eps=model_config.norm_eps,
        hidden_act=act,
        pad_token_id=0,
    )


def _bert_rows(model_config: ConfigDict, arch: str) -> list[tuple[str, str, str]]:
    p = "" if arch == "BertModel" else "bert."
    e = f"{p}embeddings"
    rows = [
        ("embed_VD", f"{e}.word_embeddings.weight", "copy"),
        ("pos_embed_LD", f"{e}.position_embeddings.weight", "copy"),
        ("segment_embed_TD", f"{e}.token_type_embeddings.weight", "copy"),
        ("embed_norm.scale", f"{e}.LayerNorm.weight", "copy"),
        ("embed_norm.bias", f"{e}.LayerNorm.bias", "copy"),
    ]
    for i in range(model_config.num_layers):
        h, b = f"{p}encoder.layer.{i}", f"blocks.{i}"
        rows += [
            (f"{b}.attn.query_DHK", f"{h}.attention.self.query.weight", "linear_in"),
            (f"{b}.attn.key_DHK", f"{h}.attention.self.key.weight", "linear_in"),
            (f"{b}.attn.value_DHK", f"{h}.attention.self.value.weight", "linear_in"),
            (f"{b}.attn.query_bias_HK", f"{h}.attention.self.query.bias", "flat"),
            (f"{b}.attn.key_bias_GK", f"{h}.attention.self.key.bias", "flat"),
            (f"{b}.attn.value_bias_GK", f"{h}.attention.self.value.bias", "flat"),
            (f"{b}.attn.out_HKD", f"{h}.attention.output.dense.weight", "linear_out"),
            (f"{b}.attn.out_bias_D", f"{h}.attention.output.dense.bias", "copy"),
            (f"{b}.attn_norm.scale", f"{h}.attention.output.LayerNorm.weight", "copy"),
            (f"{b}.attn_norm.bias", f"{h}.attention.output.LayerNorm.bias", "copy"),
            (f"{b}.mlp.up.kernel", f"{h}.intermediate.dense.weight", "linear"),
            (f"{b}.mlp.up.bias", f"{h}.intermediate.dense.bias", "copy"),
            (f"{b}.mlp.down.kernel", f"{h}.output.dense.weight", "linear"),
            (f"{b}.mlp.down.bias", f"{h}.output.dense.bias", "copy"),
            (f"{b}.mlp_norm.scale", f"{h}.output.LayerNorm.weight", "copy"),
            (f"{b}.mlp_norm.bias", f"{h}.output.LayerNorm.bias", "copy"),
        ]
    if arch != "BertModel":
        t = "cls.predictions"
        rows += [
            ("mlm_dense.kernel", f"{t}.transform.dense.weight", "linear"),
            ("mlm_dense.bias", f"{t}.transform.dense.bias", "copy"),
            ("mlm_norm.scale", f"{t}.transform.LayerNorm.weight", "copy"),
            ("mlm_norm.bias", f"{t}.transform.LayerNorm.bias", "copy"),
            ("mlm_bias_V", f"{t}.bias", "copy"),
        ]
    if arch == "BertForPreTraining":
        rows += [
            ("pooler.kernel", f"{p}pooler.dense.weight", "linear"),
            ("pooler.bias", f"{p}pooler.dense.bias", "copy"),
            ("nsp.kernel", "cls.seq_relationship.weight", "linear"),
            ("nsp.bias", "cls.seq_relationship.bias", "copy"),
        ]
    return rows


# ---------------------------------------------------------------------------------------------
# T5


def _t5_config(hf: dict, weights: dict) -> dict:
    # transformers >= 5 always ties T5's head and says whether to scale in scale_decoder_outputs; before,
    # tie_word_embeddings said both (v1.0: tied and scaled; v1.1: neither).
    scale = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return dict(
        family="encoder_decoder",
        vocab_size=hf["vocab_size"],
        num_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        num_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_model=hf["d_model"],
        d_ff=hf["d_ff"],
        max_len=hf.get("n_positions", 512),
        positions="relative",
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        norm="rmsnorm",
        norm_position="pre",
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        activation=_activation(hf.get("feed_forward_proj", "relu")),
        use_bias=False,
        scale_attention=False,
        share_embeddings=True,
        tie_embeddings="lm_head.weight" not in weights,
        scale_output=scale,
    )


def _t5_hf_config(model_config: ConfigDict) -> dict:
    _require(
        model_config,
        "T5ForConditionalGeneration",
        positions="relative",
        norm="rmsnorm",
        norm_position="pre",
        use_bias=False,
        scale_attention=False,
        share_embeddings=True,
        activation=("relu", "geglu", "swiglu"),
    )
    act = {"relu": "relu", "geglu": "gated-gelu", "swiglu": "gated-silu"}[model_config.activation]
    return dict(
        model_type="t5",
        vocab_size=model_config.vocab_size,
        num_layers=model_config.num_layers,
        num_decoder_layers=model_config.num_decoder_layers or model_config.num_layers,
        num_heads=model_config.num_heads,
        d_kv=model_config.head_dim or model_config.d_model // model_config.num_heads,
        d_model=model_config.d_model,
        d_ff=model_config.d_ff or 4 * model_config.d_model,
        n_positions=model_config.max_len,
        relative_attention_num_buckets=model_config.relative_buckets,
        relative_attention_max_distance=model_config.relative_max_distance,
        layer_norm_epsilon=model_config.norm_eps,
        feed_forward_proj=act,
        tie_word_embeddings=model_config.scale_output,
        scale_decoder_outputs=model_config.scale_output,
        is_encoder_decoder=True,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def _t5_rows(model_config: ConfigDict, arch: str) -> list[tuple[str, str, str]]:
    gated = model_config.activation in ("geglu", "swiglu")
    rows = [
        ("embed_VD", "shared.weight", "copy"),
        ("encoder_norm.scale", "encoder.final_layer_norm.weight", "copy"),
        ("decoder_norm.scale", "decoder.final_layer_norm.weight", "copy"),
        (
            "encoder_bias.embed_NH",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "copy",
        ),
        (
            "decoder_bias.embed_NH",
            "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            "copy",
        ),
    ]
    if not model_config.tie_embeddings:
        rows.append(("head_DV", "lm_head.weight", "linear"))

    def attention(b: str, h: str) -> list:
        return [
            (f"{b}.query_DHK", f"{h}.q.weight", "linear_in"),
            (f"{b}.key_DHK", f"{h}.k.weight", "linear_in"),
            (f"{b}.value_DHK", f"{h}.v.weight", "linear_in"),
            (f"{b}.out_HKD", f"{h}.o.weight", "linear_out"),
        ]

    def mlp(b: str, h: str) -> list:
        if gated:
            return [
                (f"{b}.up.kernel", f"{h}.wi_0.weight", "linear"),
                (f"{b}.gate.kernel", f"{h}.wi_1.weight", "linear"),
                (f"{b}.down.kernel", f"{h}.wo.weight", "linear"),
            ]
        return [
            (f"{b}.up.kernel", f"{h}.wi.weight", "linear"),
            (f"{b}.down.kernel", f"{h}.wo.weight", "linear"),
        ]

    for i in range(model_config.num_layers):
        h, b = f"encoder.block.{i}.layer", f"encoder_blocks.{i}"
        rows += attention(f"{b}.attn", f"{h}.0.SelfAttention") + mlp(f"{b}.mlp", f"{h}.1.DenseReluDense")
        rows += [
            (f"{b}.attn_norm.scale", f"{h}.0.layer_norm.weight", "copy"),
            (f"{b}.mlp_norm.scale", f"{h}.1.layer_norm.weight", "copy"),
        ]
    for i in range(model_config.num_decoder_layers or model_config.num_layers):
        h, b = f"decoder.block.{i}.layer", f"decoder_blocks.{i}"
        rows += (
            attention(f"{b}.attn", f"{h}.0.SelfAttention")
            + attention(f"{b}.cross_attn", f"{h}.1.EncDecAttention")
            + mlp(f"{b}.mlp", f"{h}.2.DenseReluDense")
        )
        rows += [
            (f"{b}.attn_norm.scale", f"{h}.0.layer_norm.weight", "copy"),
            (f"{b}.cross_norm.scale", f"{h}.1.layer_norm.weight", "copy"),
            (f"{b}.mlp_norm.scale", f"{h}.2.layer_norm.weight", "copy"),
        ]
    return rows


# ---------------------------------------------------------------------------------------------

ARCHITECTURES = {
    "GPT2LMHeadModel": (lambda hf, weights, arch: _gpt2_config(hf, weights), _gpt2_rows),
    "LlamaForCausalLM": (lambda hf, weights, arch: _llama_config(hf, weights), _llama_rows),
    "MistralForCausalLM": (lambda hf, weights, arch: _mistral_config(hf, weights), _llama_rows),
    "Qwen2ForCausalLM": (lambda hf, weights, arch: _qwen2_config(hf, weights), _llama_rows),
    "BertModel": (_bert_config, _bert_rows),
    "BertForMaskedLM": (_bert_config, _bert_rows),
    "BertForPreTraining": (_bert_config, _bert_rows),
    "T5ForConditionalGeneration": (lambda hf, weights, arch: _t5_config(hf, weights), _t5_rows),
}


def _require(model_config: ConfigDict, arch: str, **expected) -> None:
    for key, want in expected.items():
        ok = model_config[key] in want if isinstance(want, tuple) else model_config[key] == want
        if not ok:
            raise InputError(
                f"cannot save as {arch}: it needs model.{key}={want!r}, this model has {model_config[key]!r}"
            )


def _read_weights(directory: Path) -> dict[str, np.ndarray]:
    if (directory / "model.safetensors").exists():
        from safetensors.numpy import load_file

        return load_file(directory / "model.safetensors")
    index = directory / "model.safetensors.index.json"
    if index.exists():
        from safetensors.numpy import load_file

        out = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out |= load_file(directory / shard)
        return out
    if (directory / "pytorch_model.bin").exists():
        import torch

        state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise MissingInput(
        f"{directory} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def _architecture(hf_config: dict) -> str:
    arch = (hf_config.get("architectures") or [None])[0]
    if arch not in ARCHITECTURES:
        raise InputError(
            f"architecture {arch!r} (model_type {hf_config.get('model_type')!r}) is not supported; "
            f"lmjax imports {sorted(ARCHITECTURES)}"
        )
    return arch


def load(directory: str | Path) -> tuple[nnx.Module, ConfigDict]:
    """Reads a Hugging Face `save_pretrained` directory into an lmjax model; returns (model, model config)."""
    directory = Path(directory)
    if not (directory / "config.json").exists():
        raise MissingInput(f"{directory} has no config.json; point at a directory written by save_pretrained")
    return from_tensors(
        json.loads((directory / "config.json").read_text()), _read_weights(directory), directory
    )


def from_tensors(
    hf_config: dict, hf: dict[str, np.ndarray], source: str | Path
) -> tuple[nnx.Module, ConfigDict]:
    """An lmjax model from a Hugging Face config.json's contents and its tensors by HF name (`source` names
    where they came from, for messages)."""
    arch = _architecture(hf_config)
    make_config, make_rows = ARCHITECTURES[arch]
    model_config = base_config.base().model
    model_config.update(make_config(hf_config, hf, arch))
    model = nnx.eval_shape(lambda: models.build(model_config, nnx.Rngs(0)))  # every parameter is filled below
    params = nnx.state(model, nnx.Param)
    flat = {".".join(map(str, path)): var for path, var in params.flat_state()}
    filled = set()
    for lm, name, layout in make_rows(model_config, arch):
        var = flat[lm]
        base, _, part = name.partition(":")
        if base not in hf:
            raise InputError(
                f"{source} ({arch}) lacks tensor {base!r}; the checkpoint does not match its config"
            )
        tensor = np.asarray(hf[base], np.float32)
        tensor = np.split(tensor, 3, axis=-1)[int(part)] if part else tensor
        if tensor.size != var.value.size:
            raise InputError(
                f"tensor {name!r} has shape {tensor.shape}, but the config makes {lm} {var.value.shape}; "
                f"the weights do not match the config"
            )
        var.value = np.asarray(LAYOUTS[layout][0](tensor, var.value.shape), var.value.dtype)
        filled.add(lm)
    missing = sorted(set(flat) - filled)
    assert not missing, f"no HF tensor for {missing}"  # a gap in the tables above, not in the user's files
    nnx.update(model, params)
    return model, model_config


def hf_architecture(model_config: ConfigDict) -> str:
    """The HF class an lmjax model config saves as."""
    if model_config.family == "decoder":
        if model_config.positions != "rotary":
            return "GPT2LMHeadModel"
        return "Qwen2ForCausalLM" if model_config.qkv_bias else "LlamaForCausalLM"
    if model_config.family == "encoder":
        return {v: k for k, v in BERT_HEADS.items()}[model_config.encoder_heads]
    return "T5ForConditionalGeneration"


def save(model: nnx.Module, config: ConfigDict, directory: str | Path) -> Path:
    """Writes config.json and model.safetensors that transformers' `from_pretrained` reads.

    `config` is the model config (or a whole run config, whose `model` is used). An existing directory's
    files are only replaced when both new files were written.
    """
    from safetensors.numpy import save_file

    model_config = config.model if "model" in config else config
    arch = hf_architecture(model_config)
    hf_config = {
        "GPT2LMHeadModel": _gpt2_hf_config,
        "LlamaForCausalLM": _llama_hf_config,
        "Qwen2ForCausalLM": _llama_hf_config,
        "T5ForConditionalGeneration": _t5_hf_config,
    }.get(arch, _bert_hf_config)(model_config)
    hf_config["architectures"] = [arch]
    flat = {
        ".".join(map(str, path)): np.asarray(var.value, np.float32)
        for path, var in nnx.state(model, nnx.Param).flat_state()
    }
    tensors: dict[str, list] = {}
    for lm, name, layout in ARCHITECTURES[arch][1](model_config, arch):
        base, _, part = name.partition(":")
        tensors.setdefault(base, [None] * 3 if part else [None])[int(part or 0)] = LAYOUTS[layout][1](
            flat[lm]
        )
    out = {
        k: np.ascontiguousarray(np.concatenate(v, axis=-1) if len(v) > 1 else v[0])
        for k, v in tensors.items()
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(out, str(directory / "model.safetensors.tmp"), metadata={"format": "pt"})
    (directory / "config.json.tmp").write_text(json.dumps(hf_config, indent=2))
    (directory / "model.safetensors.tmp").replace(directory / "model.safetensors")
    (directory / "config.json.tmp").replace(directory / "config.json")
    return directory
