"""Parity with the `transformers` PyTorch models (random weights from a config, no download)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmjax.interop import hf

torch = pytest.importorskip("torch", reason="parity tests need torch (make test installs it)")
transformers = pytest.importorskip(
    "transformers", reason="parity tests need transformers (make test installs it)"
)

B, L = 3, 9
LENGTHS = [9, 6, 2]  # right padding after these many real tokens


def batch(vocab, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (B, L))
    mask = (np.arange(L)[None] < np.asarray(LENGTHS)[:, None]).astype(np.int64)
    return ids * mask, mask


def rel_err(got, want, mask=None):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if mask is not None:
        got, want = got[mask.astype(bool)], want[mask.astype(bool)]
    return np.abs(got - want).max() / np.abs(want).max()


def save_hf(model, tmp_path, name="hf"):
    torch.manual_seed(0)
    with torch.no_grad():  # transformers initialises biases to zero, which would test nothing
        for name_, p in model.named_parameters():
            if name_.endswith(".bias"):
                p.normal_(0.0, 0.1)
    model.eval()
    path = tmp_path / name
    model.save_pretrained(path)
    return path


def params_equal(a, b):
    from flax import nnx

    fa, fb = (dict(nnx.state(m, nnx.Param).flat_state()) for m in (a, b))
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_array_equal(np.asarray(fa[k].value), np.asarray(fb[k].value), err_msg=str(k))


# lmjax's side compiled: one program a model, not one a shape for every operation
forward = nnx.jit(lambda model, *args, **kw: model(*args, **kw))


def round_trip(model, config, tmp_path):
    """import -> export -> import is lossless, and transformers reads the export."""
    out = hf.save(model, config, tmp_path / "export")
    again, _ = hf.load(out)
    params_equal(model, again)
    return out


def causal_lm_parity(hf_class, cfg, tmp_path, export_class=None):
    """transformers' logits == lmjax's (1e-4, right-padded batch); lmjax's export read back by transformers
    (as `export_class`) gives them again. Returns the loaded model config."""
    torch.manual_seed(0)
    path = save_hf(hf_class(cfg), tmp_path)
    ids, mask = batch(cfg.vocab_size)
    inputs = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    want = hf_class.from_pretrained(path)(**inputs).logits.detach().numpy()
    model, config = hf.load(path)
    assert rel_err(forward(model, jnp.asarray(ids), mask_BL=jnp.asarray(mask)), want, mask) < 1e-4
    exported = round_trip(model, config, tmp_path)
    again = (export_class or hf_class).from_pretrained(exported)(**inputs).logits.detach().numpy()
    assert rel_err(again, want, mask) < 1e-6
    return config


def test_gpt2_logits_match_transformers(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=101, n_positions=16, n_embd=32, n_layer=2, n_head=4)
    causal_lm_parity(transformers.GPT2LMHeadModel, cfg, tmp_path)


@pytest.mark.parametrize(
    "sizes",
    [
        # grouped-query attention at odd sizes, untied head, SmolLM2's RoPE base
        dict(
            hidden_size=48, num_attention_heads=6, num_key_value_heads=2, intermediate_size=80, rope_theta=1e5
        ),
        # multi-query attention, tied head, head_dim other than hidden / heads
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=12,
            intermediate_size=64,
            tie_word_embeddings=True,
        ),
    ],
)
def test_llama_logits_match_transformers(sizes, tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=103, num_hidden_layers=2, max_position_embeddings=32, **sizes)
    config = causal_lm_parity(transformers.LlamaForCausalLM, cfg, tmp_path)
    assert config.num_kv_heads == sizes["num_key_value_heads"]
    assert config.rope_theta == cfg.rope_parameters["rope_theta"]


def test_qwen2_with_grouped_query_attention_biases_matches_transformers(tmp_path):
    cfg = transformers.Qwen2Config(
        vocab_size=89,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=32,
        rope_theta=1e6,
        tie_word_embeddings=False,
    )
    config = causal_lm_parity(transformers.Qwen2ForCausalLM, cfg, tmp_path)
    assert config.qkv_bias and not config.use_bias and config.num_kv_heads == 2


def test_mistral_loads_with_positions_capped_at_its_window_and_saves_as_llama(tmp_path):
    cfg = transformers.MistralConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=16,
    )
    config = causal_lm_parity(
        transformers.MistralForCausalLM, cfg, tmp_path, export_class=transformers.LlamaForCausalLM
    )
    assert config.max_len == 16 and config.num_kv_heads == 2


@pytest.mark.parametrize("arch", ["BertModel", "BertForMaskedLM", "BertForPreTraining"])
def test_bert_outputs_match_transformers(arch, tmp_path):
    cfg = transformers.BertConfig(
        vocab_size=103,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    cls = getattr(transformers, arch)
    torch.manual_seed(0)
    ref = cls(cfg)
    with torch.no_grad():  # untrained biases are zeros: give every tensor values so a wrong mapping shows
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    path = save_hf(ref, tmp_path)
    ids, mask = batch(103, 1)
    segments = (np.arange(L)[None] >= 4).astype(np.int64) * mask
    out = cls.from_pretrained(path)(
        torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(segments)
    )
    model, config = hf.load(path)
    h = model.encode(jnp.asarray(ids), segments_BL=jnp.asarray(segments), mask_BL=jnp.asarray(mask))
    if arch == "BertModel":
        assert (
            rel_err(
                forward(
                    model, jnp.asarray(ids), segments_BL=jnp.asarray(segments), mask_BL=jnp.asarray(mask)
                ),
                out.last_hidden_state.detach().numpy(),
                mask,
            )
            < 1e-4
        )
    else:
        logits = out.logits if arch == "BertForMaskedLM" else out.prediction_logits
        assert rel_err(model.mlm_logits(h), logits.detach().numpy(), mask) < 1e-4
    if arch == "BertForPreTraining":
        assert rel_err(model.nsp_logits(h), out.seq_relationship_logits.detach().numpy()) < 1e-4
    round_trip(model, config, tmp_path)


@pytest.mark.parametrize(
    "variant",
    [
        dict(feed_forward_proj="relu", tie_word_embeddings=True),
        dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    ],
)
def test_t5_logits_match_transformers(variant, tmp_path):
    cfg = transformers.T5Config(
        vocab_size=107,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        **variant,
    )
    torch.manual_seed(0)
    path = save_hf(transformers.T5ForConditionalGeneration(cfg), tmp_path)
    ids, mask = batch(107, 2)
    dec = np.random.default_rng(3).integers(1, 107, (B, 7))
    want = transformers.T5ForConditionalGeneration.from_pretrained(path)(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec)
    ).logits
    model, config = hf.load(path)
    got = forward(model, jnp.asarray(ids), jnp.asarray(dec), mask_BS=jnp.asarray(mask))
    assert rel_err(got, want.detach().numpy()) < 1e-4
    exported = round_trip(model, config, tmp_path)
    again = transformers.T5ForConditionalGeneration.from_pretrained(exported)(
        input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), decoder_input_ids=torch.tensor(dec)
    ).logits
    assert rel_err(again.detach().numpy(), want.detach().numpy()) < 1e-6


def test_unsupported_or_mismatched_directories_fail_clearly(tmp_path):
    cfg = transformers.GPT2Config(vocab_size=50, n_positions=8, n_embd=16, n_layer=1, n_head=2)
    path = save_hf(transformers.GPT2LMHeadModel(cfg), tmp_path)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        hf.load(tmp_path / "nothing")
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"architectures": ["FalconForCausalLM"]}))
    with pytest.raises(
        ValueError, match="architecture 'FalconForCausalLM' .* is not supported; lmjax imports"
    ):
        hf.load(path)
    (path / "config.json").write_text(json.dumps(config | {"n_embd": 32}))
    with pytest.raises(ValueError, match="the weights do not match the config"):
        hf.load(path)
    llama = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    path = save_hf(transformers.LlamaForCausalLM(llama), tmp_path, "llama")
    config = json.loads((path / "config.json").read_text())
    scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    (path / "config.json").write_text(json.dumps(config | {"rope_parameters": scaled}))
    with pytest.raises(ValueError, match="Llama with RoPE scaling .* is not supported"):
        hf.load(path)


def test_save_refuses_what_the_target_class_cannot_express(tmp_path):
    from flax import nnx

    from lmjax import config as base_config
    from lmjax import models

    c = base_config.base().model
    c.update(vocab_size=20, num_layers=1, num_heads=2, d_model=8, positions="rotary", use_bias=False)
    with pytest.raises(ValueError, match="cannot save as LlamaForCausalLM: it needs model.norm='rmsnorm'"):
        hf.save(models.build(c, nnx.Rngs(0)), c, tmp_path / "out")
    assert not (tmp_path / "out" / "config.json").exists()
