"""Continued pretraining (train.init): a run that starts from a pretrained model takes its architecture and
tokenizer, starts its optimizer afresh, and at learning rate 0 scores what mode=eval scores; a resumed run
reads its own checkpoints; a model override that contradicts the init stops it."""

import jax
import pytest

from lmjax import metrics
from lmjax.modes import eval as eval_mode
from lmjax.modes import train as train_mode
from lmjax.training import prepare, pretrained, start


def continued(tiny_config, init, **mesh):
    c = tiny_config.copy_and_resolve_references()
    c.train.update(init=init, num_steps=1, eval_batches=2, sample_tokens=0)
    c.optim.update(learning_rate=0.0, min_learning_rate=0.0)
    c.mesh.update(**mesh)
    return c


def eval_loss(tiny_config, init, workdir) -> float:
    c = tiny_config.copy_and_resolve_references()
    c.update(mode="eval")
    c.finetune.init = init
    c.train.eval_batches = 2
    return eval_mode.run(c, workdir)["eval/loss"]


@pytest.mark.parametrize(
    "mesh, scan, devices", [(dict(data=1), False, 1), (dict(data=2, fsdp=4), True, 8)], ids=["1", "2x4-fsdp"]
)
def test_continued_pretraining_at_rate_zero_ends_at_the_eval_loss(
    hf_llama, tiny_config, tmp_path, mesh, scan, devices
):
    directory = str(hf_llama[0])
    want = eval_loss(tiny_config, directory, tmp_path / "eval")
    c = continued(tiny_config, directory, **mesh)
    c.model.update(num_layers=7, d_model=48, scan_layers=scan)  # the config file's model: replaced (not scan)
    result = train_mode.run(c, tmp_path / "train", devices=jax.devices()[:devices])
    assert result["eval/loss"] == pytest.approx(want, abs=1e-5)
    saved = (tmp_path / "train" / "config.json").read_text()
    assert '"num_layers": 2' in saved and f'"scan_layers": {str(scan).lower()}' in saved
    lines = (tmp_path / "train" / metrics.JSONL).read_text()
    assert "train/loss" in lines


def test_a_resumed_run_reads_its_own_checkpoint_not_the_init(hf_llama, tiny_config, tmp_path, monkeypatch):
    c = continued(tiny_config, str(hf_llama[0]), data=1)
    c.optim.update(learning_rate=1e-2, min_learning_rate=1e-2, warmup_steps=0)
    c.train.update(num_steps=2, checkpoint_every=2, log_every=1)
    train_mode.run(c, tmp_path, devices=jax.devices()[:1])
    load = pretrained.load

    def no_weights(*args, **kwargs):
        pre = load(*args, **kwargs)
        pre.params = lambda: pytest.fail("a resumed run read the init's weights")
        return pre

    monkeypatch.setattr(pretrained, "load", no_weights)
    c.train.num_steps = 3
    result = train_mode.run(c, tmp_path, devices=jax.devices()[:1])
    steps = [r["step"] for r in metrics.read_jsonl(tmp_path) if "train/loss" in r]
    assert steps == [1, 2, 3] and "eval/loss" in result


def test_an_override_that_contradicts_the_init_is_one_line(hf_llama, tiny_config, tmp_path):
    c = continued(tiny_config, str(hf_llama[0]))
    with pytest.raises(
        ValueError, match=r"--config.model.num_layers=4 contradicts train.init=.*num_layers=2"
    ):
        train_mode.run(c, tmp_path / "a", overrides={"model.num_layers": 4})
    # the run's own settings, and values equal to the init's, are no contradiction (tests/test_main.py: the
    # command line's overrides reach the run)
    overrides = {"model.dropout": 0.1, "model.num_layers": 2, "train.num_steps": 0}
    c.model.dropout = 0.1
    assert start.resolve_pretraining(c, tmp_path / "b", None, overrides)[0].model.dropout == 0.1
    with pytest.raises(ValueError, match="train.init starts a pretraining run"):
        c.mode = "finetune"
        prepare.check_config(c)


def test_an_init_that_is_nothing_is_one_line(tiny_config, tmp_path):
    c = continued(tiny_config, str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="train.init=.* is neither a directory nor a .gguf file"):
        train_mode.run(c, tmp_path / "a")


@pytest.mark.slow  # SmolLM2-135M: ~40 s a mesh
@pytest.mark.parametrize(
    "mesh, devices", [(dict(data=1), 1), (dict(data=2, fsdp=4), 8)], ids=["1", "2x4-fsdp"]
)
def test_continued_pretraining_of_smollm2_at_rate_zero_ends_at_the_eval_loss(
    cache_dir, tmp_path, mesh, devices
):
    from experiments.configs import continued_smollm2

    c = continued_smollm2.get_config("smoke")
    c.data.update(cache_dir=str(cache_dir), batch_size=8)
    c.train.update(num_steps=1, eval_batches=1)
    c.optim.update(learning_rate=0.0, min_learning_rate=0.0)
    c.mesh.update(**mesh)
    result = train_mode.run(c, tmp_path / "train", devices=jax.devices()[:devices])
    e = c.copy_and_resolve_references()
    e.update(mode="eval")
    e.train.init, e.finetune.init = "", pretrained.SMOLLM2
    e.mesh.update(data=-1, fsdp=1)
    want = eval_mode.run(e, tmp_path / "eval")
    for key in ("eval/loss", "eval/shakespeare/loss", "eval/wiki_sample/loss"):
        assert result[key] == pytest.approx(want[key], abs=1e-4), key
