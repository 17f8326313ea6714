import os

import jax
import numpy as np
import pytest

from lmjax import checkpoint, metrics, sharding
from lmjax import config as config_lib
from lmjax.data import tokenizers
from lmjax.modes import sample as sample_mode
from lmjax.modes import train as train_mode
from lmjax.training import loop, prepare, pretrain


def fake_batches(n, batch=8, seq=32, vocab=16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        tokens = rng.integers(3, vocab, size=(batch, seq + 1)).astype(np.int32)
        out.append(
            {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((batch, seq), np.float32)}
        )
    return out


def run_steps(config, batches, devices=None):
    s = pretrain.setup(config, devices)
    state = s.init(jax.random.PRNGKey(0))
    losses = []
    for b in batches:
        state, m = s.train_step(state, sharding.global_batch(b, s.layout))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state.params)


def test_overfits_one_batch(tiny_config):
    tiny_config.model.vocab_size = 16
    tiny_config.optim.update(learning_rate=3e-3, warmup_steps=0, min_learning_rate=3e-3, weight_decay=0.0)
    tiny_config.train.num_steps = 300
    losses, _ = run_steps(tiny_config, fake_batches(1) * 300)
    assert losses[0] > 2.5 and losses[-1] < 0.1, (losses[0], losses[-1])


def test_gradient_accumulation_equals_one_big_batch(tiny_config):
    tiny_config.model.vocab_size = 16
    # plain SGD at a constant rate without clipping: a gradient of the wrong scale moves the parameters
    # differently
    tiny_config.optim.update(
        name="sgd", warmup_steps=0, learning_rate=0.5, min_learning_rate=0.5, grad_clip=0.0
    )
    batches = fake_batches(3)
    batches[0]["weights"][:3, 20:] = 0.0  # uneven weights: the mean must be over tokens, not microbatches
    tiny_config.mesh.data = 2
    _, initial = run_steps(tiny_config, [], devices=jax.devices()[:2])
    ref_losses, ref_params = run_steps(tiny_config, batches, devices=jax.devices()[:2])
    tiny_config.optim.grad_accum_steps = 4
    losses, params = run_steps(tiny_config, batches, devices=jax.devices()[:2])
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    moved = [
        np.abs(a - b).max()
        for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(initial), strict=True)
    ]
    assert max(moved) > 1e-2  # the steps did move the parameters
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# --- the loop, checkpoints and resume -------------------------------------------------------


def train_losses(workdir):
    return {r["step"]: r["train/loss"] for r in metrics.read_jsonl(workdir) if "train/loss" in r}


@pytest.fixture
def loop_config(tiny_config):
    tiny_config.train.update(
        num_steps=20, checkpoint_every=10, eval_every=10, log_every=1, keep_checkpoints=5
    )
    tiny_config.model.dropout = 0.1  # the resumed run must draw the same dropout masks
    return tiny_config


def test_crash_and_resume_equals_uninterrupted_run(loop_config, tmp_path, train_batches, crash):
    seen = train_batches
    train_mode.run(loop_config, tmp_path / "a")
    uninterrupted_batches = list(seen)
    ref = train_losses(tmp_path / "a")
    for name in (
        "checkpoints",
        metrics.JSONL,
        metrics.PLOT,
        checkpoint.CONFIG_FILE,
        checkpoint.TOKENIZER_DIR,
    ):
        assert (tmp_path / "a" / name).exists(), name
    assert list((tmp_path / "a" / metrics.TB_DIR).glob("events.out.tfevents.*"))

    crash(train_mode.run, loop_config, tmp_path / "b", at_step=13)
    seen.clear()
    train_mode.run(loop_config, tmp_path / "b")
    assert len(uninterrupted_batches) == 20 and len(seen) == 10
    for a, b in zip(uninterrupted_batches[10:], seen, strict=True):
        np.testing.assert_array_equal(a, b)
    got = train_losses(tmp_path / "b")
    assert sorted(got) == list(range(1, 21))  # the crashed run's lines after step 10 were replaced
    np.testing.assert_allclose([got[s] for s in range(1, 21)], [ref[s] for s in range(1, 21)], rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(loop_config, tmp_path):
    loop_config.train.num_steps = 10
    train_mode.run(loop_config, tmp_path)
    ckpt = tmp_path / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    loop_config.train.num_steps = 30
    loop_config.optim.update(learning_rate=1e30, warmup_steps=0)
    with pytest.raises(loop.NonFiniteLoss, match=r"last good checkpoint \(step 10\) is untouched"):
        train_mode.run(loop_config, tmp_path)
    after = {p: p.stat().st_mtime_ns for p in ckpt.rglob("*") if p.is_file()}
    assert before == after and sorted(os.listdir(ckpt)) == ["10"]


def test_non_finite_loss_before_any_checkpoint_says_so(loop_config, tmp_path):
    loop_config.optim.update(learning_rate=1e30, warmup_steps=0)
    with pytest.raises(loop.NonFiniteLoss, match="no checkpoint was saved yet, so a rerun starts afresh"):
        train_mode.run(loop_config, tmp_path)


def test_workdir_with_another_architecture_fails_clearly(loop_config, tmp_path):
    loop_config.train.num_steps = 10
    train_mode.run(loop_config, tmp_path)
    files = sorted(str(p) for p in tmp_path.rglob("*"))
    loop_config.model.d_model = 64
    with pytest.raises(
        ValueError, match=r"different architecture \(model.d_model: checkpoint 32 vs config 64\)"
    ):
        train_mode.run(loop_config, tmp_path)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == files

    other = tokenizers.train("char", ["xyz"], 0)
    other.save(tmp_path.parent / "other_tok")
    loop_config.model.d_model = 32
    loop_config.data.tokenizer_path = str(tmp_path.parent / "other_tok")
    with pytest.raises(ValueError, match="does not match the vocabulary this workdir was trained with"):
        train_mode.run(loop_config, tmp_path)


def test_sample_from_a_trained_workdir(loop_config, tmp_path, capsys):
    loop_config.train.num_steps = 10
    train_mode.run(loop_config, tmp_path)
    loop_config.sample.update(prompt="KING:", num_tokens=40, num_samples=2, temperature=1.0, top_k=5)
    text = sample_mode.run(loop_config, tmp_path)
    parts = text.split("\n=====\n")
    assert len(parts) == 2 and all(p.startswith("KING:") and len(p) > 20 for p in parts)
    # A tokenizer that does not fit the checkpoint's model is refused.
    big = tokenizers.CharTokenizer("".join(chr(c) for c in range(0x100, 0x200)))
    big.save(tmp_path / "tokenizer2")
    (tmp_path / "tokenizer" / tokenizers.CHAR_FILE).write_text(
        (tmp_path / "tokenizer2" / tokenizers.CHAR_FILE).read_text()
    )
    with pytest.raises(ValueError, match="has 259 tokens but the checkpoint's model has"):
        sample_mode.run(loop_config, tmp_path)


def test_sample_needs_a_trained_workdir(loop_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no trained run"):
        sample_mode.run(loop_config, tmp_path)


@pytest.mark.parametrize("name", ["bert_mlm", "t5_span"])
def test_encoder_and_encoder_decoder_configs_train_end_to_end(name, tmp_path, cache_dir):
    import importlib

    c = importlib.import_module(f"experiments.configs.{name}").get_config("smoke")
    c.data.cache_dir = str(cache_dir)
    result = train_mode.run(c, tmp_path / name)
    assert {"eval/loss", "eval/accuracy", "eval/unigram_accuracy"} <= set(result)
    assert 0.0 < result["eval/unigram_accuracy"] < 1.0 and np.isfinite(result["eval/loss"])
    losses = [r["train/loss"] for r in metrics.read_jsonl(tmp_path / name) if "train/loss" in r]
    assert len(losses) >= 2 and losses[-1] < losses[0], losses  # it learns
    if name == "bert_mlm":
        assert "eval/nsp_accuracy" in result
    assert checkpoint.saved_steps(tmp_path / name) == [4]
    with pytest.raises(ValueError, match="sampling text needs a decoder"):
        sample_mode.run(c, tmp_path / name)


def test_training_log_reports_tflops_and_mfu_on_chips_of_known_peak(loop_config, tmp_path, monkeypatch):
    loop_config.train.update(num_steps=4, log_every=2)
    train_mode.run(loop_config, tmp_path / "cpu")
    rows = [r for r in metrics.read_jsonl(tmp_path / "cpu") if "train/loss" in r]
    assert all(r["train/tflops_per_device"] > 0 and "train/mfu" not in r for r in rows)  # CPU: no peak
    monkeypatch.setattr(loop, "device_kind", lambda: "TPU v5 lite")
    train_mode.run(loop_config, tmp_path / "v5e")
    rows = [r for r in metrics.read_jsonl(tmp_path / "v5e") if "train/loss" in r]
    assert [r["step"] for r in rows] == [2, 4]
    for r in rows:
        np.testing.assert_allclose(r["train/mfu"], r["train/tflops_per_device"] / 197.0, rtol=1e-6)
        # model FLOPs / s per device = FLOPs per token x tokens/s / devices
        run_config = config_lib.from_saved(checkpoint.load_config(tmp_path / "v5e"))  # vocabulary resolved
        per_token = pretrain.step_flops(run_config) / (run_config.data.batch_size * run_config.data.seq_len)
        expected = per_token * r["train/tokens_per_s"] / jax.device_count() / 1e12
        np.testing.assert_allclose(r["train/tflops_per_device"], expected, rtol=1e-6)


def test_profile_steps_write_a_trace_and_bad_ranges_are_refused(loop_config, tmp_path):
    loop_config.train.update(num_steps=4, profile_steps="2:3")
    train_mode.run(loop_config, tmp_path)
    assert list((tmp_path / loop.PROFILE_DIR).rglob("*.xplane.pb"))
    loop_config.train.profile_steps = "3-2"
    with pytest.raises(ValueError, match=r"train.profile_steps='3-2' is not a step range; write 'A:B'"):
        prepare.check_config(loop_config)


def test_scanned_layers_train_sample_and_convert_for_fine_tuning(loop_config, tmp_path):
    from flax import nnx

    from lmjax import models
    from lmjax.training import pretrained

    loop_config.model.update(scan_layers=True, remat="full")
    loop_config.train.num_steps = 10
    train_mode.run(loop_config, tmp_path)
    loop_config.sample.update(prompt="KING:", num_tokens=20, temperature=0.0)
    text = sample_mode.run(loop_config, tmp_path)  # decoding runs the stacked blocks one by one
    assert text.startswith("KING:") and len(text) > 20
    _, graphdef, params, tok, _ = pretrained.load_run(tmp_path)
    pre = pretrained.load(str(tmp_path))  # fine-tuning takes it in the per-block layout
    assert not pre.model_config.scan_layers and 1 in pre.params().to_pure_dict()["blocks"]
    plain = nnx.merge(nnx.graphdef(models.build(pre.model_config, nnx.Rngs(0))), pre.params())
    tokens = np.asarray(tok.encode("KING: to be or not"))[None]
    np.testing.assert_allclose(nnx.merge(graphdef, params)(tokens), plain(tokens), rtol=1e-5, atol=1e-5)
    loop_config.model.scan_layers = False
    loop_config.train.num_steps = 20
    with pytest.raises(ValueError, match=r"model.scan_layers: checkpoint True vs config False"):
        train_mode.run(loop_config, tmp_path)
