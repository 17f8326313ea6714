import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.configs import bert_mlm, finetune_bert_mlm
from lmjax import checkpoint, models
from lmjax.data import tokenizers
from lmjax.modes import finetune as finetune_mode
from lmjax.training import finetune, optim, prepare, pretrained, start, task_eval

V, L, B = 40, 16, 8


def step_config(**finetune_values):
    """A tiny encoder (MLM + NSP heads) fine-tuned from random weights, without dropout."""
    c = finetune_bert_mlm.get_config("smoke")
    c.model.update(
        bert_mlm.get_config("smoke").model.to_dict() | dict(vocab_size=V, dropout=0.0, num_layers=2)
    )
    c.task.update(head_dropout=0.0, batch_size=B, seq_len=L)
    c.finetune.update(init="", **finetune_values)
    c.optim.update(warmup_steps=0, learning_rate=1e-2, min_learning_rate=1e-2)
    c.mesh.update(data=1)
    return c


def batches(seed=0):
    rng = np.random.default_rng(seed)
    inputs = rng.integers(5, V, (B, L)).astype(np.int32)
    mask = (np.arange(L) < rng.integers(L // 2, L + 1, (B, 1))).astype(np.int32)
    task = {
        "inputs": inputs * mask,
        "input_mask": mask,
        "segments": np.zeros((B, L), np.int32),
        "labels": rng.integers(0, 2, B).astype(np.int32),
        "weights": np.ones(B, np.float32),
    }
    pre = {
        "inputs": rng.integers(5, V, (B, L)).astype(np.int32),
        "input_mask": np.ones((B, L), np.int32),
        "segments": np.zeros((B, L), np.int32),
        "targets": rng.integers(5, V, (B, L)).astype(np.int32),
        "weights": (rng.random((B, L)) < 0.15).astype(np.float32),
    }
    return jax.tree.map(jnp.asarray, task), jax.tree.map(jnp.asarray, pre)


def setup(c):
    return finetune.setup(c, num_labels=2, head="classification", devices=jax.devices()[:1])


def test_lambda_zero_is_a_plain_task_step():
    s = setup(step_config(pretrain_lambda=0.0))
    assert not finetune.uses_pretrain(s.config)
    task, _ = batches()
    state = s.init(jax.random.PRNGKey(0))

    @jax.jit
    def plain_step(params, opt_state, rng):
        key = jax.random.fold_in(rng, 0)
        grads = jax.grad(lambda p: s.loss_fn(p, task, None, None, key)[0]["task"])(params)
        updates, _ = s.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates)

    expected = jax.device_get(plain_step(state.params, state.opt_state, state.rng))
    new_state, m = s.train_step(state, task, None, None)
    for a, b in zip(
        jax.tree.leaves(expected), jax.tree.leaves(jax.device_get(new_state.params)), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-6)  # two compilations may round differently
    assert "pretrain_loss" not in m and float(m["lambda"]) == 0.0


@pytest.mark.parametrize("lam", [0.3, 2.0])
def test_combined_gradient_is_task_plus_lambda_pretrain(lam):
    s = setup(step_config(pretrain_lambda=lam, l2sp=0.5))
    task, pre = batches()
    params = s.init(jax.random.PRNGKey(0)).params
    anchor = jax.tree.map(lambda x: x + 0.01, params["backbone"])
    key = jax.random.PRNGKey(1)
    total = jax.jit(jax.grad(lambda p: finetune.combine(s.loss_fn(p, task, pre, anchor, key)[0], lam, 0.5)))(
        params
    )
    parts = {
        k: jax.jit(jax.grad(lambda p, k=k: s.loss_fn(p, task, pre, anchor, key)[0][k]))(params)
        for k in ("task", "pretrain", "l2sp")
    }
    expected = jax.tree.map(
        lambda t, p, r: t + lam * p + 0.5 * r, parts["task"], parts["pretrain"], parts["l2sp"]
    )
    for a, b in zip(jax.tree.leaves(total), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # The pretraining gradient reaches the backbone and its MLM head, not the new head; L2-SP pulls towards
    # the anchor.
    assert float(jnp.abs(parts["pretrain"]["backbone"]["mlm_bias_V"][...]).sum()) > 0
    assert float(jnp.abs(parts["pretrain"]["head"]["kernel"][...]).sum()) == 0
    np.testing.assert_allclose(
        parts["l2sp"]["backbone"]["embed_VD"][...], -0.02 * np.ones((V, 32)), rtol=1e-4
    )


def test_frozen_parameters_stay_bit_identical():
    c = step_config(pretrain_lambda=1.0)
    c.optim.freeze = "backbone/embed_VD,backbone/blocks/0/"
    s = setup(c)
    state = s.init(jax.random.PRNGKey(0))
    before = jax.device_get(state.params)
    for seed in range(3):
        state, _ = s.train_step(state, *batches(seed), None)
    after = jax.device_get(state.params)

    def frozen(path):
        return optim.frozen(c.optim, path)

    flat_before = jax.tree_util.tree_flatten_with_path(before)[0]
    flat_after = jax.tree.leaves(after)
    moved, checked = {}, 0
    for (path, a), b in zip(flat_before, flat_after, strict=True):
        moved[optim.path_str(path)] = not np.array_equal(a, b)
        if frozen(path):
            assert a.tobytes() == b.tobytes(), optim.path_str(path)
            checked += 1
    assert checked > 10 and moved["head/kernel"] and moved["backbone/blocks/1/attn/query_DHK"]


def test_restore_backbone_with_a_new_head(bert_workdir, tmp_path):
    pre = pretrained.load(str(bert_workdir))
    assert pre.model_config.family == "encoder" and pre.tokenizer.kind == "sentencepiece"
    c = step_config()
    c.model = pre.model_config
    s = setup(c)
    state = s.init(jax.random.PRNGKey(0))
    head_before = np.asarray(state.params["head"]["kernel"][...])
    params = start.load_backbone(state.params, pre.params())
    saved = jax.tree.leaves(jax.device_get(pre.params()))
    for a, b in zip(saved, jax.tree.leaves(jax.device_get(params["backbone"])), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(head_before, params["head"]["kernel"][...])
    # A backbone of another size does not fit: one clear line.
    other = step_config()
    other.model.update(pre.model_config.to_dict() | dict(d_model=48))
    s2 = setup(other)
    with pytest.raises(ValueError, match=r"parameter .* has shape .* in the pretrained model but"):
        start.load_backbone(s2.init(jax.random.PRNGKey(0)).params, pre.params())


def test_finetune_from_a_pretraining_workdir_end_to_end_and_resume(bert_workdir, tmp_path, cache_dir, crash):
    c = finetune_bert_mlm.get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    c.finetune.update(init=str(bert_workdir), pretrain_lambda=0.5, l2sp=0.01, lambda_schedule="warmup")
    c.train.num_steps = 4
    c.train.checkpoint_every = 2
    files = sorted(p.name for p in (bert_workdir / "checkpoints").iterdir())
    result = finetune_mode.run(c, tmp_path / "a")
    assert {
        "test/accuracy",
        "test/macro_f1",
        "validation/accuracy",
        "pretrain/heldout_loss",
        "pretrain/heldout_loss_before",
    } <= set(result)
    assert (
        json.loads((tmp_path / "a" / checkpoint.RESULTS_FILE).read_text())["test/accuracy"]
        == result["test/accuracy"]
    )
    assert (
        sorted(p.name for p in (bert_workdir / "checkpoints").iterdir()) == files
    )  # the source is only read
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    lambdas = [r["train/lambda"] for r in rows if "train/lambda" in r]
    assert lambdas == sorted(lambdas) and lambdas[0] < 0.5  # the warmup schedule

    # Interrupted after step 2's checkpoint, resumed: the parameters of the uninterrupted run (both streams
    # resume).
    run_interrupted_at_3(c, tmp_path / "b", crash)
    restored = [finetune_params(tmp_path / name, c) for name in ("a", "b")]
    for x, y in zip(*map(jax.tree.leaves, restored), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def run_interrupted_at_3(c, workdir, crash):
    """finetune.run crashing in step 3 (after step 2's checkpoint), then run again: it resumes."""
    crash(finetune_mode.run, c, workdir, at_step=3)
    assert checkpoint.saved_steps(workdir) == [2]
    return finetune_mode.run(c, workdir)


def finetune_params(workdir, c):
    config, tok, pre, corpus = start.resolve_finetuning(c, workdir)
    s = finetune.setup(config, 2, "classification")
    mngr = checkpoint.manager(workdir, keep=5)
    abstract = checkpoint.abstract_with_shardings(s.abstract_state, s.state_shardings)
    return jax.device_get(checkpoint.restore(mngr, mngr.latest_step(), abstract, None).params)


def test_bad_input_fails_with_one_line(bert_workdir, tmp_path, cache_dir):
    c = finetune_bert_mlm.get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    c.finetune.init = str(bert_workdir)
    c.task.num_labels = 3
    with pytest.raises(ValueError, match=r"task.num_labels=3 but rotten_tomatoes has 2 labels"):
        finetune_mode.run(c, tmp_path / "labels")
    c.task.num_labels = 0
    tokenizers.train("char", ["some other text"], 0).save(tmp_path / "char_tok")
    c.data.tokenizer_path = str(tmp_path / "char_tok")
    with pytest.raises(ValueError, match="the data's tokenizer .* is not the one of finetune.init"):
        finetune_mode.run(c, tmp_path / "tok")
    c.data.tokenizer_path = ""
    c.finetune.pretrain_lambda = -0.1
    with pytest.raises(ValueError, match="finetune.pretrain_lambda=-0.1 is negative"):
        prepare.check_config(c)
    c.finetune.pretrain_lambda = 0.0
    c.task.update(pack=True, trim_multiple=16)
    with pytest.raises(ValueError, match="task.pack=True and task.trim_multiple=16 both cut padding"):
        prepare.check_config(c)
    c.task.trim_multiple = 0
    with pytest.raises(ValueError, match="task.pack=True packs classification and .* not text_to_text"):
        finetune.setup(c, 2, "text_to_text")
    c.task.pack = False
    c.finetune.init = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="is neither a directory nor a .gguf file"):
        finetune_mode.run(c, tmp_path / "init")


def test_regulariser_needs_a_pretraining_head():
    c = step_config(pretrain_lambda=0.1)
    c.model.encoder_heads = "none"
    with pytest.raises(ValueError, match="needs the backbone's pretraining head"):
        setup(c)


def test_minilm_weights_and_wordpiece_tokenizer():
    """The shipped all-MiniLM-L6-v2 reproduces its published sentence similarity (mean pooling)."""
    from lmjax.models import heads

    pre = pretrained.load(pretrained.MINILM)
    assert (
        pre.tokenizer.kind == "wordpiece" and pre.model_config.vocab_size == pre.tokenizer.vocab_size == 30522
    )
    model = models.build(pre.model_config, nnx.Rngs(0))
    nnx.update(model, pre.params())
    cls, sep = pre.tokenizer.special_id("[CLS]"), pre.tokenizer.special_id("[SEP]")
    embeddings = []
    for text in ("A man is eating food.", "A man is eating a piece of bread."):
        ids = np.r_[cls, pre.tokenizer.encode(text), sep][None].astype(np.int32)
        h = model.encode(jnp.asarray(ids), mask_BL=jnp.ones_like(ids))
        embeddings.append(np.asarray(heads.pool(h, jnp.ones_like(ids), "mean"))[0])
    a, b = embeddings
    assert abs(a @ b / np.linalg.norm(a) / np.linalg.norm(b) - 0.755) < 0.005


@pytest.mark.parametrize(
    "family,pack", [("decoder", False), ("decoder", True), ("encoder_decoder", False)], ids=str
)
def test_decoder_and_encoder_decoder_fine_tune(family, pack):
    """A decoder classifies from its last token (its texts packed into shared rows, on two devices, or
    padded); an encoder-decoder writes the label's name (text-to-text)."""
    from experiments.configs import shakespeare_char, t5_span
    from lmjax.tasks import catalog
    from lmjax.tasks import pipeline as task_pipeline

    rows = [
        {"text": t.encode(), "label": y}
        for t, y in (
            ("a fine warm film", 1),
            ("dull and cold", 0),
            ("warm, fine, bright", 1),
            ("cold dull mess", 0),
        )
    ]
    task = catalog.Task(
        "toy",
        catalog.TASKS["rotten_tomatoes"],
        {"train": rows, "validation": rows, "test": rows},
        ("rotten", "fresh"),
    )
    tok = tokenizers.train("char", [r["text"].decode() for r in rows] + ["rotten fresh"], 0)
    base = shakespeare_char.get_config("tiny") if family == "decoder" else t5_span.get_config("smoke")
    c = finetune_bert_mlm.get_config("smoke")
    c.model = base.model
    L = 40 if pack else 24  # room for two of the toy texts in a row
    c.model.update(vocab_size=tok.vocab_size, dropout=0.0, max_len=max(L, c.model.max_len))
    c.train.objective = base.train.objective
    c.task.update(pooling="last", seq_len=L, batch_size=4, head_dropout=0.0, pack=pack)
    c.optim.update(learning_rate=3e-3, warmup_steps=0, min_learning_rate=3e-3, weight_decay=0.0)
    shards = 2 if pack else 1  # packed rows split over a data-parallel mesh: their count rounds to 2
    c.mesh.update(data=shards)
    head = "classification" if family == "decoder" else "text_to_text"
    s = finetune.setup(c, 2, head, devices=jax.devices()[:shards])
    batch = next(
        task_pipeline.eval_batches(
            task, tok, "train", head=head, seq_len=L, batch_size=4, pack=pack, row_multiple=shards
        )
    )
    assert batch["inputs"].shape[0] == (2 if pack else 4)
    state = s.init(jax.random.PRNGKey(0))
    losses = []
    for _ in range(60):
        state, m = s.train_step(state, jax.tree.map(jnp.asarray, batch), None, None)
        losses.append(float(m["task_loss"]))
    result = task_eval.evaluate_task(s, state.params, task, tok, head, "test")
    key = "test/accuracy" if family == "decoder" else "test/exact_match"
    assert result[key] == 1.0 and losses[-1] < 0.7 * losses[0], (result, losses[0], losses[-1])


@pytest.mark.slow  # ~75 s (scoring 2 x 1,275 snippets with a 22M-parameter encoder): make test-slow
def test_minilm_fine_tunes_end_to_end(tmp_path, cache_dir):
    """The README's MiniLM command in its smoke form: the shipped weights and WordPiece vocabulary, Rotten
    Tomatoes, a few steps, the whole validation and test splits scored, results.json written."""
    from experiments.configs import finetune_minilm

    c = finetune_minilm.get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    result = finetune_mode.run(c, tmp_path / "minilm")
    saved = json.loads((tmp_path / "minilm" / checkpoint.RESULTS_FILE).read_text())
    assert saved["test/accuracy"] == result["test/accuracy"] and 0.3 < result["test/accuracy"] < 1.0
    assert {"validation/accuracy", "validation/macro_f1", "test/macro_f1"} <= set(result)
    assert checkpoint.saved_steps(tmp_path / "minilm") == [3]
    assert (tmp_path / "minilm" / checkpoint.TOKENIZER_DIR / tokenizers.HF_FILE).is_file()


def test_a_hugging_face_llama_fine_tunes_with_its_own_lm_loss_as_regulariser(
    hf_llama, tiny_config, tmp_path, verse
):
    """GPT-1's recipe on a pretrained decoder: last-token classification + lambda x its causal-LM loss on
    held-out text, the model, tokenizer and chat-model specials all from a Hugging Face directory."""
    directory, _, _ = hf_llama
    c = finetune_bert_mlm.get_config("smoke")
    c.data.update(tiny_config.data.to_dict() | dict(batch_size=4, seq_len=32))
    other = tmp_path / "other" / "verse.txt"  # the lambda stream: a mixture of two sources
    other.parent.mkdir()
    other.write_text(verse(600, seed=1))
    c.data.update(text_files="", mixture=f"{tiny_config.data.text_files}:0.5,{other}:0.5")
    c.train.update(objective="causal_lm", num_steps=4, eval_every=2)
    c.task.update(pooling="last", seq_len=32, batch_size=8)
    c.finetune.update(init=str(directory), pretrain_lambda=0.5)
    with pytest.raises(ValueError, match="data.batch_size=4 is not divisible by the batch shards of mesh"):
        finetune_mode.run(c, tmp_path / "bad")  # 8 devices
    c.data.batch_size = 8
    result = finetune_mode.run(c, tmp_path)
    assert {"test/accuracy", "pretrain/heldout_loss", "pretrain/heldout_loss_before"} <= set(result)
    assert {"pretrain/heldout_verse/loss", "pretrain/heldout_verse_2/loss"} <= set(result)
    assert result["pretrain/heldout_loss"] != result["pretrain/heldout_loss_before"]  # the backbone moved
    assert np.isfinite(result["pretrain/heldout_loss"])
    assert (tmp_path / checkpoint.TOKENIZER_DIR / tokenizers.HF_FILE).is_file()
