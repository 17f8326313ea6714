"""tpu_scripts/setup_worker.sh in a sandbox like a TPU VM image: its python3 is 3.10, and `uv` (the network
step: a managed CPython download and package installs) is a fake that makes the venv from this machine's
3.12 and records the installs. The repository is cloned from a local git repo."""

import glob
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PYTHON_310 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
FAKE_UV = """#!{python}
import subprocess, sys
from pathlib import Path
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "venv":  # uv venv --quiet --seed --python 3.12 DIR: a "managed" 3.12
    assert args[args.index("--python") + 1] == "3.12"
    subprocess.run([{python312!r}, "-m", "venv", "--without-pip", args[-1]], check=True)
"""


def sandbox(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(PYTHON_310[-1])
    python312 = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (bin_dir / "uv").write_text(
        FAKE_UV.format(python=sys.executable, log=str(tmp_path / "uv.log"), python312=str(python312))
    )
    (bin_dir / "uv").chmod(0o755)
    for tool in ("git", "bash", "sha256sum", "cat", "rm", "env", "grep"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": str(bin_dir), "HOME": str(home), "LANG": "C.UTF-8"}
    return env, home


def git_repo(tmp_path: Path) -> tuple[str, str]:
    repo = tmp_path / "origin"
    repo.mkdir()
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        shutil.copy(ROOT / name, repo / name)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "lmjax"], check=True)
    return str(repo), subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.skipif(not PYTHON_310, reason="needs a Python 3.10 (pyenv) to play the TPU VM image's python3")
def test_setup_leaves_a_312_venv_on_a_310_image_and_reinstalls_only_on_change(tmp_path):
    env, home = sandbox(tmp_path)
    repo, ref = git_repo(tmp_path)
    image_python = subprocess.run(["python3", "--version"], env=env, capture_output=True, text=True)
    assert image_python.stdout.startswith("Python 3.10")

    def setup():
        result = subprocess.run(
            ["bash", str(ROOT / "tpu_scripts/setup_worker.sh"), repo, ref],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "Python 3.12" in setup()
    venv_python = home / "lmjax" / ".venv" / "bin" / "python"
    version = subprocess.run(
        [str(venv_python), "-c", "import sys; print(sys.version_info >= (3, 12))"],
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "True"
    calls = (tmp_path / "uv.log").read_text().splitlines()
    assert calls[0].startswith("venv") and len(calls) == 3
    tpu = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["tpu"]]
    (extra,) = [r for r in tpu if r.marker.evaluate({"python_version": "3.12"})]
    asked = Requirement(calls[1].split()[-1])  # pyproject.toml's jax[tpu] range for Python 3.12
    assert (asked.name, asked.extras, asked.specifier) == (extra.name, extra.extras, extra.specifier)
    assert "-r .venv/requirements-tpu.txt" in calls[1]
    installed = (home / "lmjax" / ".venv" / "requirements-tpu.txt").read_text().splitlines()
    assert not [r for r in installed if r.startswith("jax==")]
    assert [r for r in installed if r.strip()] == [
        r
        for r in (ROOT / "requirements.txt").read_text().splitlines()
        if r.strip() and not r.startswith("jax==")
    ]
    assert "--no-deps -r requirements-nodeps.txt" in calls[2]

    setup()  # again: nothing to do
    assert len((tmp_path / "uv.log").read_text().splitlines()) == 3

    shutil.rmtree(home / "lmjax" / ".venv")  # a venv an older setup made with the image's 3.10 is replaced
    subprocess.run([PYTHON_310[-1], "-m", "venv", "--without-pip", str(home / "lmjax" / ".venv")], check=True)
    setup()
    assert len((tmp_path / "uv.log").read_text().splitlines()) == 6
    assert (
        subprocess.run([str(venv_python), "-c", "import sys; assert sys.version_info >= (3, 12)"]).returncode
        == 0
    )
