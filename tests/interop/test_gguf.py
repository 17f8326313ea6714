"""GGUF import: tiny files written here the way llama.cpp's converter writes them (interleaved rotary rows,
quantised matrices, byte-level BPE metadata), checked against transformers' own GGUF loader; the shipped
SmolLM2-135M-Instruct in the slow tests."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmjax.interop import gguf as lm_gguf
from lmjax.interop import hf

gguf = pytest.importorskip("gguf", reason="GGUF tests need the gguf package (make test installs it)")
torch = pytest.importorskip("torch", reason="parity tests need torch (make test installs it)")
transformers = pytest.importorskip("transformers", reason="parity tests need transformers")
pytest.importorskip("accelerate", reason="transformers reads GGUF only with accelerate installed")

Q = gguf.GGMLQuantizationType
NAMES = {  # Hugging Face -> GGUF, per block
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def llama_cpp_permute(w, heads):
    """llama.cpp's convert_hf_to_gguf reorders Llama's query/key rows to its interleaved rotary layout."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, tokenizer_dir, *, arch="llama", quant=Q.Q8_0, tokens=None, extra_tensor=None):
    """A GGUF of a transformers Llama/Qwen2 model and the byte-level BPE tokenizer in tokenizer_dir:
    matrices quantised as `quant`, norms and biases F32, metadata as llama.cpp writes it."""
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    tok = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    names = tokens or sorted(vocab, key=vocab.get)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(names)
    w.add_token_types([3 if t in specials else 1 for t in names])
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in tok["model"]["merges"]])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template(
        json.loads((tokenizer_dir / "tokenizer_config.json").read_text()).get("chat_template")
        or (tokenizer_dir / "chat_template.jinja").read_text()
    )
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = t.detach().numpy().astype(np.float32)
        parts = name.split(".")
        if parts[1] == "layers":
            proj = ".".join(parts[3:-1])
            if arch == "llama" and proj in ("self_attn.q_proj", "self_attn.k_proj"):
                a = llama_cpp_permute(
                    a, cfg.num_attention_heads if "q_proj" in proj else cfg.num_key_value_heads
                )
            gname = f"blk.{parts[2]}.{NAMES[proj]}.{parts[-1]}"
        else:
            gname = {
                "model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight",
                "lm_head.weight": "output.weight",
            }[name]
        if a.ndim == 2 and quant == Q.F16:
            w.add_tensor(gname, a.astype(np.float16))
        elif a.ndim == 2:
            w.add_tensor(gname, gguf.quants.quantize(a, quant), raw_dtype=quant)
        else:
            w.add_tensor(gname, a)
    if extra_tensor is not None:
        w.add_tensor(*extra_tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny_model(hf_llama, arch):
    """A random Llama (as hf_llama's, wider: quantisation blocks are 32 values) or Qwen2 with the fixture's
    vocabulary."""
    vocab = hf_llama[1].config.vocab_size
    sizes = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_theta=1e5,
    )
    torch.manual_seed(1)
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(tie_word_embeddings=False, **sizes))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, 0.1)
        return model.eval()
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=True, **sizes)).eval()


def transformers_logits(path, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model(torch.tensor(ids)).logits.detach().numpy()


def rel_err(got, want):
    return np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()


@pytest.mark.parametrize("arch, quant", [("llama", Q.Q4_1), ("llama", Q.Q8_0), ("qwen2", Q.F16)])
def test_gguf_logits_match_transformers_reading_the_same_file(arch, quant, hf_llama, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tiny_model(hf_llama, arch), hf_llama[0], arch=arch, quant=quant)
    model, model_config, tok = lm_gguf.load(path)
    assert (model_config.num_kv_heads, model_config.rope_theta, model_config.qkv_bias) == (
        2,
        1e5,
        arch == "qwen2",
    )
    ids = np.asarray([tok.encode(tok.apply_chat_template([{"role": "user", "content": "To be, or not"}]))])
    assert rel_err(model(jnp.asarray(ids)), transformers_logits(path, ids)) < 1e-4


def test_gguf_tokenizer_and_chat_template_match_the_directory_it_came_from(hf_llama, tmp_path):
    directory, _, hf_tok = hf_llama
    path = write_gguf(tmp_path / "m.gguf", tiny_model(hf_llama, "llama"), directory)
    _, _, tok = lm_gguf.load(path)
    text = "Where art thou, Romeo? 12 ships\n\n  sail."
    assert tok.encode(text).tolist() == hf_tok(text, add_special_tokens=False).input_ids
    assert tok.decode(tok.encode(text)) == text
    messages = [{"role": "user", "content": "Hello"}]
    assert tok.apply_chat_template(messages) == hf_tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert (
        tok.decode(
            [tok.eos_id],
        )
        == ""
        and tok._tok.id_to_token(tok.eos_id) == "<|im_end|>"
    )


def test_bad_gguf_files_fail_with_one_clear_line(hf_llama, tmp_path):
    model = tiny_model(hf_llama, "llama")
    with pytest.raises(ValueError, match="GGUF architecture 'falcon' is not supported"):
        lm_gguf.load(write_gguf(tmp_path / "a.gguf", model, hf_llama[0], arch="falcon"))
    odd = ("rope_freqs.weight", np.zeros(8, np.int32))  # an integer tensor: nothing to dequantise
    bad = write_gguf(tmp_path / "b.gguf", model, hf_llama[0], extra_tensor=odd)
    with pytest.raises(ValueError, match="stored as I32, which the gguf package cannot dequantise"):
        lm_gguf.load(bad)
    vocab = json.loads((hf_llama[0] / "tokenizer.json").read_text())["model"]["vocab"]
    short = sorted(vocab, key=vocab.get)[:-5]
    with pytest.raises(ValueError, match="tokenizer has .* tokens but the model's vocabulary is"):
        lm_gguf.load(write_gguf(tmp_path / "c.gguf", model, hf_llama[0], tokens=short))
    (tmp_path / "d.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        lm_gguf.load(tmp_path / "d.gguf")


# ---------------------------------------------------------------------------------------------
# The shipped SmolLM2-135M-Instruct (Q4_1): the real model, against transformers reading the same file.

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """(file, transformers model and tokenizer read from it, an ordinary Hugging Face directory of the same
    weights written as ../shared/DATA.md says)."""
    from lmjax.training import pretrained

    path = pretrained.init_path(pretrained.SMOLLM2)
    kw = dict(gguf_file=path.name, dtype=torch.float32)
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), **kw).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    config = ref.config
    del (
        config.quantization_config
    )  # transformers will not save a model it read from GGUF; a plain copy it will
    plain = transformers.LlamaForCausalLM(config)
    plain.load_state_dict(ref.state_dict())
    directory = tmp_path_factory.mktemp("smollm2_hf")
    plain.save_pretrained(directory)
    ref_tok.save_pretrained(directory)
    return path, ref, ref_tok, directory


@pytest.mark.slow
def test_smollm2_logits_and_greedy_decoding_match_transformers(smollm2):
    from flax import nnx

    from lmjax.models import decode

    path, ref, ref_tok, directory = smollm2
    model, model_config, tok = lm_gguf.load(path)
    prompt = tok.apply_chat_template(CHAT)
    assert prompt == ref_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    ids = tok.encode(prompt)
    assert ids.tolist() == ref_tok(prompt, add_special_tokens=False).input_ids
    want = ref(torch.tensor(ids[None])).logits.detach().numpy()
    assert rel_err(model(jnp.asarray(ids[None])), want) < 1e-4
    from_dir, _ = hf.load(directory)  # the same weights through an ordinary Hugging Face directory
    assert rel_err(from_dir(jnp.asarray(ids[None])), want) < 1e-4
    # greedy decoding, 32 tokens of an answer longer than that (neither side stops at its end token)
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Write a poem about the sea."}]))
    graphdef, params = nnx.split(model, nnx.Param)
    got = decode.generate(
        graphdef, params, [ids], jax.random.PRNGKey(0), num_tokens=32, temperature=0.0, eos_id=tok.eos_id
    )
    greedy = ref.generate(torch.tensor(ids[None]), max_new_tokens=32, do_sample=False)[0, ids.size :]
    assert len(greedy) == 32 and got[0].tolist() == greedy.tolist()


@pytest.mark.slow
def test_sample_mode_answers_a_chat_message_with_smollm2(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmjax.main",
            "--config=experiments/configs/shakespeare_char.py",
            f"--workdir={tmp_path}",
            "--config.mode=sample",
            "--config.finetune.init=smollm2-135m-instruct",
            "--config.sample.chat=What is the capital of France?",
            "--config.sample.temperature=0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "The capital of France is Paris." in out.stdout


def test_a_gguf_file_as_finetune_init_is_scored_like_its_weights_in_a_hugging_face_directory(
    hf_llama, tiny_config, tmp_path
):
    from lmjax.modes import eval as eval_mode

    path = write_gguf(tmp_path / "m.gguf", tiny_model(hf_llama, "llama"), hf_llama[0])
    model, model_config, tok = lm_gguf.load(path)
    hf.save(model, model_config, tmp_path / "as_hf")
    tok.save(tmp_path / "as_hf")
    tiny_config.update(mode="eval")
    tiny_config.train.eval_batches = 2
    results = {}
    for init in (path, tmp_path / "as_hf"):
        tiny_config.finetune.init = str(init)
        results[init.name] = eval_mode.run(tiny_config, tmp_path / f"eval_{init.name}")
    assert np.isfinite(results["m.gguf"]["eval/loss"])
    np.testing.assert_allclose(results["m.gguf"]["eval/loss"], results["as_hf"]["eval/loss"], rtol=1e-6)
