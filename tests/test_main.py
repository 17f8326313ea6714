"""The command line: bad input ends with one clear line (exit code 1) and leaves existing work alone."""

import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = "experiments/configs/shakespeare_char.py:tiny"


def run_main(*args):
    result = subprocess.run(
        [sys.executable, "-m", "lmjax.main", f"--config={CONFIG}", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    return result.returncode, lines, result


@pytest.mark.parametrize(
    "override, says",
    [
        (
            "--config.model.num_layer=3",
            "'model.num_layer' in --config.model.num_layer; did you mean 'model.num_layers'?",
        ),
        ("--config.sample.max_new_tokens=60", "'sample.max_new_tokens' in --config.sample.max_new_tokens; "),
        ("--config.smaple.top_k=3", "'smaple.top_k' in --config.smaple.top_k; did you mean 'sample'?"),
    ],
)
def test_an_override_of_no_key_is_one_line_naming_it_and_its_sections_keys(tmp_path, override, says):
    code, lines, result = run_main(f"--workdir={tmp_path}", override)
    assert code == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith(f"error: unknown config key {says}") and len(lines[0]) < 1000
    assert "keys: " in lines[0] or "the sections: data, " in lines[0]  # what there is to choose from


def test_missing_text_file(tmp_path):
    code, lines, _ = run_main(f"--workdir={tmp_path}", f"--config.data.text_files={tmp_path}/missing.txt")
    assert code == 1 and lines == [
        f"error: text file '{tmp_path}/missing.txt' does not exist; fix the path in --config.data.text_files"
    ]


def test_context_longer_than_positions(tmp_path):
    code, lines, _ = run_main(f"--workdir={tmp_path}", "--config.data.seq_len=64")
    assert code == 1 and "data.seq_len=64 is longer than the model's positions (model.max_len=32)" in lines[0]


def test_sample_without_a_run(tmp_path):
    code, lines, _ = run_main(f"--workdir={tmp_path}", "--config.mode=sample")
    assert code == 1 and "holds no trained run" in lines[0]


def test_other_url_schemes_are_refused_rather_than_written_locally():
    code, lines, _ = run_main("--workdir=s3://bucket/run")
    assert (
        code == 1
        and "only local paths and gs:// URLs can be workdirs" in lines[0]
        and not Path("s3:").exists()
    )


def test_negative_lambda_fails_before_anything_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmjax.main",
            "--config=experiments/configs/finetune_minilm.py:smoke",
            f"--workdir={tmp_path / 'ft'}",
            "--config.finetune.pretrain_lambda=-1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == (
        "error: finetune.pretrain_lambda=-1.0 is negative; a regulariser's weight must be >= 0"
    )
    assert not (tmp_path / "ft").exists()


def run_with_failing_training(tmp_path, error: str) -> subprocess.CompletedProcess:
    """lmjax.main with mode=train's run replaced by one that raises `error` (a Python expression)."""
    script = (
        "import sys\nfrom lmjax import main\nfrom lmjax.modes import train\n"
        f"def fail(config, workdir, **kwargs):\n    raise {error}\n"
        "train.run = fail\n"
        f"sys.argv = ['lmjax', '--config={CONFIG}', '--workdir={tmp_path}']\nmain.run()\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_only_lmjax_input_errors_become_one_line_others_keep_their_traceback(tmp_path):
    own = run_with_failing_training(
        tmp_path, "__import__('lmjax.errors').errors.InputError('bad value; fix it')"
    )
    assert own.returncode == 1 and own.stderr.strip().splitlines() == ["error: bad value; fix it"]
    for error in (
        "ValueError('RESOURCE_EXHAUSTED: out of memory')",
        "RuntimeError('XlaRuntimeError')",
        "KeyError('params')",
    ):
        other = run_with_failing_training(tmp_path, error)
        assert other.returncode == 1 and "Traceback (most recent call last)" in other.stderr, other.stderr[
            -2000:
        ]
        assert not [line for line in other.stderr.splitlines() if line.startswith("error:")]


def test_a_bad_config_argument_is_one_line(tmp_path):
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmjax.main",
            f"--config={CONFIG.split(':')[0]}:bogus",
            f"--workdir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr, bad.stderr[-2000:]
    assert "shakespeare_char.py takes '', 'nanogpt' or 'tiny', not 'bogus'" in bad.stderr


def test_a_model_override_that_contradicts_train_init_is_one_line(hf_llama, corpus_file, tmp_path):
    code, lines, result = run_main(
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.text_files={corpus_file}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        f"--config.train.init={hf_llama[0]}",
        "--config.model.num_layers=4",
    )
    assert code == 1 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert lines[0].startswith("error: --config.model.num_layers=4 contradicts train.init=")
    assert not (tmp_path / "run" / "checkpoints").exists()
