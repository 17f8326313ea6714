import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from lmjax import config as config_lib
from lmjax.training import prepare

ROOT = Path(__file__).resolve().parents[1]

CONFIGS = sorted(p.stem for p in Path("experiments/configs").glob("*.py") if p.stem != "__init__")


@pytest.mark.parametrize("name", CONFIGS)
def test_experiment_configs_only_change_values(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    base_keys = set(config_lib._flat_keys(config_lib.base()))
    for arg in ("", "nanogpt", "tiny", "smoke"):
        try:
            c = module.get_config(arg)
        except ValueError as e:  # an argument this config does not take
            assert "takes" in str(e)
            continue
        prepare.check_config(c)
        assert set(config_lib._flat_keys(c)) == base_keys
        assert module.__doc__ and "python -m lmjax.main" in module.__doc__


def test_unknown_key_message_suggests_the_nearest_key():
    c = config_lib.lock(config_lib.base())
    with pytest.raises(AttributeError) as e:
        c.optim.learnig_rate = 1.0
    msg = config_lib.unknown_key_message(e.value, c)
    assert msg.startswith("unknown config key 'learnig_rate'. Did you mean 'learning_rate'?")


def test_value_checks():
    c = config_lib.base()
    c.optim.grad_accum_steps = 5
    with pytest.raises(ValueError, match="not divisible by optim.grad_accum_steps=5"):
        prepare.check_config(c)
    c = config_lib.base()
    c.data.tokenizer = "sentencepiece"
    with pytest.raises(ValueError, match="needs data.vocab_size"):
        prepare.check_config(c)


def test_family_objective_and_length_checks():
    c = config_lib.base()
    c.model.family = "encoder"
    with pytest.raises(
        ValueError, match="train.objective='causal_lm' does not train a model.family='encoder' model; use mlm"
    ):
        prepare.check_config(c)
    c = config_lib.base()
    c.model.update(family="encoder_decoder", max_len=64)
    c.train.objective = "span_corruption"
    c.data.seq_len = 64
    prepare.check_config(c)  # 64 inputs -> 14 targets
    c.model.max_len, c.data.seq_len = 8, 8
    c.data.noise_density = 0.9
    with pytest.raises(ValueError, match="targets, longer than model.max_len=8"):
        prepare.check_config(c)


def test_lineage_checks():
    c = config_lib.base()
    c.model.family, c.train.objective = "word2vec", "skipgram"
    with pytest.raises(ValueError, match="learns vectors of words; set data.tokenizer='word'"):
        prepare.check_config(c)
    c.train.objective = "glove"
    with pytest.raises(ValueError, match="use skipgram or cbow"):
        prepare.check_config(c)
    c = config_lib.base()
    c.model.update(family="elmo", char_filters="1:8,9:8")
    c.train.objective, c.data.max_chars = "bilm", 8
    with pytest.raises(ValueError, match="filters wider than data.max_chars=8"):
        prepare.check_config(c)
    c = config_lib.base()
    c.model.update(family="rnn", remat="full")
    with pytest.raises(ValueError, match="model.remat='full' applies to Transformer blocks"):
        prepare.check_config(c)
    c = config_lib.base()
    c.optim.name = "lamb"
    with pytest.raises(ValueError, match="optim.name='lamb'"):
        prepare.check_config(c)


def test_loading_an_experiment_config_imports_no_jax():
    """lmjax.config is a leaf: a config file loads (and validates its values) without JAX, Flax, grain or
    TFDS."""
    code = (
        "import sys\nfrom lmjax import config\n"
        "c = config.lock(config.load('experiments/configs/bert_mlm.py'))\n"
        "print(sorted(m for m in ('jax', 'flax', 'grain', 'tensorflow_datasets', 'numpy') if m in "
        "sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
