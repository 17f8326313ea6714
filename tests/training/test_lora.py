"""LoRA: zero-initialised adapters give the base model, only adapters (and the head) train, the merged model
is the adapted one (down to transformers reading its export), and an interrupted run resumes exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import finetune_bert_mlm
from lmjax import models
from lmjax.interop import hf
from lmjax.modes import finetune as finetune_mode
from lmjax.training import lora, optim, prepare, pretrained
from tests.training.test_finetune import batches, finetune_params, run_interrupted_at_3, setup, step_config


def lora_config(**optim_values):
    c = step_config(pretrain_lambda=0.5)
    c.optim.update(dict(lora_rank=4, lora_alpha=8.0) | optim_values)
    return c


def test_zero_initialised_adapters_reproduce_the_base_model():
    s, base = setup(lora_config()), setup(step_config(pretrain_lambda=0.5))
    state, base_state = s.init(jax.random.PRNGKey(0)), base.init(jax.random.PRNGKey(0))
    assert set(state.params["lora"]["a"]) == {
        f"blocks.{i}.attn.{w}" for i in range(2) for w in ("query_DHK", "key_DHK", "value_DHK", "out_HKD")
    }
    merged = lora.merge(state.params, s.config.optim)
    for a, b in zip(
        jax.tree.leaves(merged["backbone"]), jax.tree.leaves(base_state.params["backbone"]), strict=True
    ):
        np.testing.assert_array_equal(a, b)  # the same init key: the same base, and B = 0 adds nothing
    task, pre = batches()
    key = jax.random.PRNGKey(1)
    got, _ = s.loss_fn(state.params, task, pre, None, key)
    want, _ = base.loss_fn(base_state.params, task, pre, None, key)
    assert {k: float(v) for k, v in got.items()} == {k: float(v) for k, v in want.items()}


def test_only_adapters_and_head_train_and_the_base_has_no_optimizer_state():
    s = setup(lora_config())
    state = s.init(jax.random.PRNGKey(0))
    before = jax.device_get(state.params)
    for seed in range(3):
        state, m = s.train_step(state, *batches(seed), None)
    after = jax.device_get(state.params)
    moved = {
        optim.path_str(p): not np.array_equal(a, b)
        for (p, a), b in zip(
            jax.tree_util.tree_flatten_with_path(before)[0], jax.tree.leaves(after), strict=True
        )
    }
    assert not any(v for k, v in moved.items() if k.startswith("backbone/"))
    assert all(v for k, v in moved.items() if k.startswith("lora/b/")) and moved["head/kernel"]
    trainable = sum(
        x.size for k, x in zip(moved, jax.tree.leaves(before), strict=True) if not k.startswith("backbone/")
    )
    opt_floats = sum(x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0)
    assert opt_floats == 2 * trainable  # Adam's two moments, for the adapters and the head only


@pytest.mark.parametrize("name", ["attn/query_DHK", "attn/out_HKD", "mlp/up/kernel"])
def test_merged_weight_is_the_adapted_layer(name):
    """x @ (W + s A B) equals x @ W + s (x @ A) @ B in the layer's layout: A takes the layer's input axes."""
    c = lora_config(lora_targets=f"blocks/0/{name}")
    s = setup(c)
    params = s.init(jax.random.PRNGKey(0)).params
    k = f"blocks.0.{name.replace('/', '.')}"
    params["lora"]["b"][k].value = jax.random.normal(jax.random.PRNGKey(2), params["lora"]["b"][k].shape)
    w = params["backbone"]["blocks"][0]
    for part in name.split("/"):
        w = w[part]
    merged = lora.merge(params, c.optim)["backbone"]["blocks"][0]
    for part in name.split("/"):
        merged = merged[part]
    w, merged, a, b = (
        np.asarray(x[...]) for x in (w, merged, params["lora"]["a"][k], params["lora"]["b"][k])
    )
    x = np.random.default_rng(0).normal(size=(3, a.shape[0]))
    want = x @ w.reshape(a.shape[0], -1) + lora.scale(c.optim) * (x @ a) @ b
    np.testing.assert_allclose(x @ merged.reshape(a.shape[0], -1), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # ~60 s: a Llama fine-tuned, resumed and exported end to end
def test_lora_fine_tuning_of_a_hugging_face_llama_resumes_exactly_and_exports_merged(
    hf_llama, tiny_config, tmp_path, crash
):
    directory, _, _ = hf_llama
    c = finetune_bert_mlm.get_config("smoke")
    c.data.update(tiny_config.data.to_dict() | dict(batch_size=8, seq_len=32))
    c.train.update(objective="causal_lm", num_steps=4, eval_every=2, checkpoint_every=2)
    c.task.update(pooling="last", seq_len=32, batch_size=8)
    c.finetune.update(init=str(directory), pretrain_lambda=0.5)
    c.optim.update(lora_rank=2, lora_targets="attn/(query|value)_DHK,mlp/down", learning_rate=1e-2)
    result = finetune_mode.run(c, tmp_path / "a")
    assert result["pretrain/heldout_loss"] != result["pretrain/heldout_loss_before"]  # merged adapters moved

    run_interrupted_at_3(c, tmp_path / "b", crash)
    a, b = (finetune_params(tmp_path / name, c) for name in ("a", "b"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)

    # The run as finetune.init: its backbone with the adapters merged, which transformers reads back.
    pre = pretrained.load(str(tmp_path / "a"))
    model = models.build(pre.model_config, nnx.Rngs(0))
    nnx.update(model, pre.params())
    ids = np.asarray([pre.tokenizer.encode("To be, or not to be")])
    base, _ = hf.load(directory)
    assert not np.allclose(model(jnp.asarray(ids)), base(jnp.asarray(ids)), atol=1e-4)
    out = hf.save(model, pre.model_config, tmp_path / "merged")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    want = transformers.LlamaForCausalLM.from_pretrained(out)(torch.tensor(ids)).logits.detach().numpy()
    np.testing.assert_allclose(model(jnp.asarray(ids)), want, rtol=1e-4, atol=1e-4)


def test_bad_lora_settings_fail_with_one_line():
    with pytest.raises(ValueError, match="optim.lora_targets='nothing_here' matches no matrix"):
        setup(lora_config(lora_targets="nothing_here"))
    c = step_config()
    c.mode, c.optim.lora_rank = "train", 4
    with pytest.raises(ValueError, match="optim.lora_rank=4 is for fine-tuning"):
        prepare.check_config(c)
