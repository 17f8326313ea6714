"""tpu_scripts/setup_worker.sh in a sandbox like a TPU VM image: its python3 is 3.10, and `uv` (the network
step: a managed CPython download and package installs) is a fake that makes the venv from this machine's
3.11 and records the installs. The repository is cloned from a local git repo."""

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON_310 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python3.10")))
FAKE_UV = """#!{python}
import subprocess, sys
from pathlib import Path
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "venv":  # uv venv --quiet --seed --python 3.11 DIR: a "managed" 3.11
    assert args[args.index("--python") + 1] == "3.11"
    subprocess.run([{python311!r}, "-m", "venv", "--without-pip", args[-1]], check=True)
"""


def sandbox(tmp_path: Path) -> tuple[dict, Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(PYTHON_310[-1])
    python311 = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    (bin_dir / "uv").write_text(
        FAKE_UV.format(python=sys.executable, log=str(tmp_path / "uv.log"), python311=str(python311))
    )
    (bin_dir / "uv").chmod(0o755)
    for tool in ("git", "bash", "sha256sum", "cat", "rm", "env"):
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
def test_setup_leaves_a_311_venv_on_a_310_image_and_reinstalls_only_on_change(tmp_path):
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

    assert "Python 3.11" in setup()
    venv_python = home / "lmjax" / ".venv" / "bin" / "python"
    version = subprocess.run(
        [str(venv_python), "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "True"
    calls = (tmp_path / "uv.log").read_text().splitlines()
    assert calls[0].startswith("venv") and len(calls) == 3
    assert (
        "'jax[tpu]" not in calls[1]
        and "jax[tpu]>=0.10.2,<0.12" in calls[1]
        and "-r requirements.txt" in calls[1]
    )
    assert "--no-deps -r requirements-nodeps.txt" in calls[2]

    setup()  # again: nothing to do
    assert len((tmp_path / "uv.log").read_text().splitlines()) == 3

    shutil.rmtree(home / "lmjax" / ".venv")  # a venv an older setup made with the image's 3.10 is replaced
    subprocess.run([PYTHON_310[-1], "-m", "venv", "--without-pip", str(home / "lmjax" / ".venv")], check=True)
    setup()
    assert len((tmp_path / "uv.log").read_text().splitlines()) == 6
    assert (
        subprocess.run([str(venv_python), "-c", "import sys; assert sys.version_info >= (3, 11)"]).returncode
        == 0
    )
