"""The package: pyproject ranges admit the pinned requirements, a wheel built from the checkout trains from
outside it, so does `pip install .` of the oldest stack the ranges admit (Python 3.11, jax 0.10.2, flax
0.12.8), and every repository path the docs mention is committed."""

import glob
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYTHON_311 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.11*/bin/python3.11")))


def pins(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-r")]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def ranges(requirements: list[str], python: str | None = None) -> dict[str, Requirement]:
    """The requirements that apply to this Python (or to `python`, e.g. '3.11'), by name."""
    env = {"python_version": python} if python else None
    reqs = [r for r in map(Requirement, requirements) if r.marker is None or r.marker.evaluate(env)]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


@pytest.mark.parametrize(
    "requirements_file, group", [("requirements.txt", None), ("requirements-test.txt", "test")]
)
def test_pinned_requirements_satisfy_the_pyproject_ranges(requirements_file, group):
    declared = ranges(
        PYPROJECT["project"]["dependencies"]
        if group is None
        else PYPROJECT["project"]["optional-dependencies"][group]
    )
    pinned = pins(ROOT / requirements_file)
    assert set(declared) <= set(pinned), f"not pinned in {requirements_file}: {set(declared) - set(pinned)}"
    for name, req in declared.items():
        spec = pinned[name].specifier
        versions = [s.version for s in spec if s.operator == "=="] or [
            s.version for s in spec if s.operator == ">="
        ]
        assert versions and all(req.specifier.contains(v) for v in versions), (
            name,
            str(spec),
            str(req.specifier),
        )
    if group is None:
        assert set(pinned) == set(declared), "requirements.txt pins what pyproject.toml does not declare"


@pytest.mark.parametrize(
    "python, admitted, refused",
    [
        ("3.11", {"jax": ["0.10.2"], "flax": ["0.12.8"]}, {}),
        # the GPU machines' image (jax 0.11.2), today's newest (0.12.x); flax that imports under them
        (
            "3.12",
            {"jax": ["0.11.2", "0.12.0.1", "0.12.1"], "flax": ["0.12.10", "0.12.12"]},
            {"flax": ["0.12.9"]},
        ),
        ("3.13", {"jax": ["0.12.1"], "flax": ["0.12.12"]}, {"jax": ["0.10.2"], "flax": ["0.12.8"]}),
    ],
)
def test_jax_and_flax_ranges_admit_each_pythons_stacks_and_their_extras_follow(python, admitted, refused):
    declared = ranges(PYPROJECT["project"]["dependencies"], python)
    for name, versions in admitted.items():
        assert all(declared[name].specifier.contains(v) for v in versions), (name, versions)
    for name, versions in refused.items():
        assert not any(declared[name].specifier.contains(v) for v in versions), (name, versions)
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, platform in (("tpu", "tpu"), ("cuda", "cuda13")):
        req = ranges(extras[extra], python)["jax"]
        assert req.extras == {platform} and req.specifier == declared["jax"].specifier


def test_every_repository_path_the_docs_mention_is_committed():
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )
    if not tracked:
        pytest.skip("not a git checkout")
    docs = [
        "README.md",
        "benchmarks/RESULTS.md",
        *(p for p in tracked if p.startswith(("notebooks/", "experiments/", "tpu_scripts/"))),
    ]
    prefixes = ("lmjax/", "experiments/", "tpu_scripts/", "notebooks/", "benchmarks/", "tests/", ".ci/")
    pattern = re.compile(
        r"(?<![\w/.-])((?:%s)[\w./-]*\.(?:py|ipynb|md|sh|txt|toml|png))"
        % "|".join(re.escape(p) for p in prefixes)
    )
    missing = {}
    for doc in docs:
        for path in pattern.findall((ROOT / doc).read_text(encoding="utf-8")):
            if path not in tracked and "<" not in path:
                missing.setdefault(path, doc)
    assert not missing, f"mentioned but not in git (path: where): {missing}"


def trains_tiny_config(python: str, away: Path, env: dict, corpus_file, cache_dir) -> None:
    """`python -m lmjax.main` from `away` with the tiny config given by path: 4 steps and their results."""
    result = subprocess.run(
        [
            python,
            "-m",
            "lmjax.main",
            f"--config={ROOT / 'experiments/configs/shakespeare_char.py'}:tiny",
            "--workdir=run",
            f"--config.data.text_files={corpus_file}",
            f"--config.data.cache_dir={cache_dir}",
            "--config.train.num_steps=4",
        ],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "done: step 4" in result.stdout and (away / "run" / "results.json").is_file()


@pytest.mark.slow  # builds a wheel (setuptools from the package index) and trains from outside the checkout
def test_wheel_installs_apart_and_trains_a_config_given_by_path(tmp_path, corpus_file, cache_dir):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"), str(ROOT)],
        check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("lmjax-*.whl")
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        check=True,
    )
    assert not (site / "experiments").exists()
    assert all((site / "lmjax" / p).is_file() for p in ("main.py", "modes/train.py", "training/pretrain.py"))
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    trains_tiny_config(sys.executable, away, env, corpus_file, cache_dir)
    where = subprocess.run(
        [sys.executable, "-c", "import lmjax; print(lmjax.__file__)"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(site))


@pytest.mark.slow  # a Python 3.11 venv and a real install from the package index (minutes)
@pytest.mark.skipif(not PYTHON_311, reason="needs a Python 3.11 (pyenv) for the oldest stack")
def test_the_oldest_stack_installs_with_pip_and_trains_from_another_directory(
    tmp_path, corpus_file, cache_dir
):
    venv = tmp_path / "venv311"
    subprocess.run([PYTHON_311[-1], "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "-q", str(ROOT), "jax==0.10.2", "flax==0.12.8"], check=True
    )
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import sys, jax, flax; print(sys.version_info[:2], jax.__version__, flax.__version__)"
    stack = subprocess.run([python, "-c", probe], cwd=away, env=env, capture_output=True, text=True).stdout
    assert stack.split() == ["(3,", "11)", "0.10.2", "0.12.8"], stack
    trains_tiny_config(python, away, env, corpus_file, cache_dir)
