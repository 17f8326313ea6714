"""Distillation: the soft loss against a direct computation, self-distillation starting at zero loss
(mode=train on a 2 x 4 mesh with the teacher sharded like the student, and mode=finetune through the task
head), the teacher's share in the log, and bad settings in one line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import finetune_bert_mlm
from lmjax import config as config_lib
from lmjax import metrics, parallel
from lmjax.modes import finetune as finetune_mode
from lmjax.modes import train as train_mode
from lmjax.training import distill, prepare, pretrain, pretrained, start


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_the_soft_loss_is_the_temperature_scaled_kl_and_leaves_the_teacher_alone():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, 5)), rng.normal(size=(2, 3, 5)) * 2
    weights, T = np.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]]), 2.0
    log_p, log_q = log_softmax(teacher / T), log_softmax(student / T)
    want = np.sum(weights * np.sum(np.exp(log_p) * (log_p - log_q), -1))
    got = distill.kl_sum(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(weights), T)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    total, stats = distill.blend(jnp.float32(3.0), {"weight": 1.0}, got, 0.25, T)
    np.testing.assert_allclose(total, 0.25 * T**2 * want + 0.75 * 3.0, rtol=1e-5)
    assert stats["hard_sum"] == 3.0 and stats["distill_sum"] == got
    grad = jax.grad(lambda t: distill.soft_sum({"logits": student}, {"logits": t}, weights, T))(teacher)
    assert not np.any(grad)  # the teacher is frozen

    settings = config_lib.base().train
    settings.update(num_steps=10, distill_alpha=1.0, distill_alpha_end=0.0, distill_temperature=2.0)
    alpha, temperature = distill.schedules(settings)
    assert float(alpha(0)) == 1.0 and float(alpha(5)) == pytest.approx(0.5) and float(temperature(9)) == 2.0


def self_distilled(tiny_config, init, **train_settings):
    c = tiny_config.copy_and_resolve_references()
    c.model.update(dropout=0.0, attention_dropout=0.0)
    c.train.update(
        init=init,
        teacher=init,
        distill_alpha=1.0,
        num_steps=2,
        log_every=1,
        sample_tokens=0,
        **train_settings,
    )
    c.optim.update(learning_rate=0.0, min_learning_rate=0.0)
    return c


def test_self_distillation_starts_at_zero_loss_with_the_teacher_sharded_like_the_student(
    hf_llama, tiny_config, tmp_path, capsys
):
    c = self_distilled(tiny_config, str(hf_llama[0]), distill_temperature=2.0)
    c.mesh.update(data=2, fsdp=4)
    train_mode.run(c, tmp_path)
    rows = [r for r in metrics.read_jsonl(tmp_path) if "train/loss" in r]
    assert abs(rows[0]["train/loss"]) < 1e-4 and abs(rows[0]["train/distill_kl"]) < 1e-4
    assert rows[0]["train/hard_loss"] > 1.0 and 0 < rows[-1]["train/teacher_time_share"]
    assert "teacher: " in capsys.readouterr().out  # its parameters' memory and forward time

    resolved, tok, _ = start.resolve_pretraining(c, tmp_path, None, {})
    teacher = pretrained.load_teacher(resolved, tok, parallel.make_layout(resolved.mesh))
    engine = pretrain.setup(resolved, teacher=teacher)
    student = jax.tree.leaves(engine.state_shardings.params)
    teacher = [x.sharding for x in jax.tree.leaves(engine.teacher.params)]
    assert [s.spec for s in teacher] == [s.spec for s in student]
    assert any(s.spec != jax.sharding.PartitionSpec() for s in teacher)  # split over the fsdp axis


def test_a_teacher_with_another_vocabulary_is_one_line(hf_llama, tiny_config, tmp_path):
    c = tiny_config.copy_and_resolve_references()
    c.train.teacher = str(hf_llama[0])  # a BPE model; the student trains a character tokenizer
    with pytest.raises(
        ValueError, match=r"train.teacher=.* has another vocabulary \(bpe, 3\d\d tokens\) than"
    ):
        train_mode.run(c, tmp_path)


def llama_finetune(hf_llama, tiny_config, files):
    """A tiny classification from files (8 rows a split) on the hf_llama fixture, at learning rate 0."""
    for split, n in (("train", 8), ("validation", 8)):
        rows = [
            {"text": f"the king {'loves' if i % 2 else 'hates'} the queen {i}", "label": i % 2}
            for i in range(n)
        ]
        (files / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = finetune_bert_mlm.get_config("smoke")
    c.task.update(
        name="",
        kind="classification",
        train_file=str(files / "train.jsonl"),
        validation_file=str(files / "validation.jsonl"),
    )
    c.data.update(tiny_config.data.to_dict() | dict(batch_size=8, seq_len=32))
    c.model.update(dropout=0.0, attention_dropout=0.0)
    c.task.update(pooling="last", seq_len=32, batch_size=8, head_dropout=0.0)
    c.train.update(objective="causal_lm", num_steps=1, eval_every=100, log_every=1)
    c.finetune.update(init=str(hf_llama[0]), pretrain_lambda=0.0)
    c.optim.update(learning_rate=0.0, min_learning_rate=0.0, head_learning_rate=0.0)
    return c


@pytest.mark.slow  # ~25 s (two fine-tuning runs); mode=train distillation is in the default suite
def test_fine_tuning_distils_the_task_head_of_a_teacher_fine_tuned_on_the_task(
    hf_llama, tiny_config, tmp_path
):
    c = llama_finetune(hf_llama, tiny_config, tmp_path)
    finetune_mode.run(c, tmp_path / "teacher")  # at rate 0: the init's backbone under the seed's new head
    c.train.update(teacher=str(tmp_path / "teacher"), distill_alpha=1.0)
    finetune_mode.run(c, tmp_path / "student")
    (row,) = [r for r in metrics.read_jsonl(tmp_path / "student") if "train/loss" in r]
    assert abs(row["train/loss"]) < 1e-4 and row["train/task_hard_loss"] > 0.1
    c.train.teacher = str(hf_llama[0])
    with pytest.raises(ValueError, match="is not a fine-tuning workdir; in mode=finetune the teacher"):
        finetune_mode.run(c, tmp_path / "bad")


@pytest.mark.parametrize(
    "change, says",
    [
        (dict(distill_alpha=1.5), r"train.distill_alpha=1.5 must lie in \[0, 1\]"),
        (dict(distill_temperature=0.0), "train.distill_temperature=0.0 must be positive"),
        (dict(objective="contrastive"), "distils token logits, which train.objective='contrastive' has not"),
    ],
)
def test_bad_distillation_settings_are_one_line(tiny_config, tmp_path, change, says):
    tiny_config.train.update(teacher=str(tmp_path), **change)
    tiny_config.model.family = "encoder" if "objective" in change else "decoder"
    with pytest.raises(ValueError, match=says):
        prepare.check_config(tiny_config)


@pytest.mark.slow  # SmolLM2-135M as the teacher of experiments/configs/distill_smollm2.py: ~1 min
def test_the_distillation_experiment_runs_on_the_texts_its_script_writes(cache_dir, tmp_path):
    import subprocess
    import sys

    from experiments.configs import distill_smollm2

    subprocess.run(
        [sys.executable, "-m", "experiments.data.replay_texts", f"--out={tmp_path / 'data'}"]
        + [f"--cache_dir={cache_dir}"],
        check=True,
    )
    names = {p.name for p in (tmp_path / "data").iterdir()}
    assert names == {f"{c}_{s}.txt" for c in ("shakespeare", "wiki") for s in ("train", "test")} | {
        "smollm2_tokenizer"
    }
    assert "HAMLET" in (tmp_path / "data" / "shakespeare_test.txt").read_text()
    assert "HAMLET" not in (tmp_path / "data" / "shakespeare_train.txt").read_text()
    c = distill_smollm2.get_config(f"smoke,{tmp_path / 'data'}")
    c.data.cache_dir = str(cache_dir)
    result = train_mode.run(c, tmp_path / "run", devices=jax.devices()[:1])
    rows = [r for r in metrics.read_jsonl(tmp_path / "run") if "train/distill_kl" in r]
    assert len(rows) == 2 and rows[0]["train/distill_kl"] > 0 and np.isfinite(result["eval/loss"])
