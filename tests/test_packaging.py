"""The package: pyproject ranges admit the pinned requirements, a wheel built from the checkout trains from
outside it, and every repository path the docs mention is committed."""

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


def pins(path: Path) -> dict[str, Requirement]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("-r")]
    return {r.name.lower().replace("_", "-"): r for r in reqs}


def ranges(requirements: list[str]) -> dict[str, Requirement]:
    return {r.name.lower().replace("_", "-"): r for r in map(Requirement, requirements)}


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


def test_jax_stays_a_range_that_admits_the_gpu_machines_011():
    (jax,) = [Requirement(r) for r in PYPROJECT["project"]["dependencies"] if r.startswith("jax")]
    assert jax.specifier.contains("0.10.2") and jax.specifier.contains("0.11.0")
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra, platform in (("tpu", "tpu"), ("cuda", "cuda12")):
        (req,) = map(Requirement, extras[extra])
        assert req.name == "jax" and req.extras == {platform} and req.specifier == jax.specifier


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
    assert not (site / "experiments").exists() and (site / "lmjax" / "train.py").is_file()
    away = tmp_path / "elsewhere"
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    result = subprocess.run(
        [
            sys.executable,
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
    where = subprocess.run(
        [sys.executable, "-c", "import lmjax; print(lmjax.__file__)"],
        cwd=away,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(site))
