"""Installs lmjax (from a checkout, or any pip spec) into the running Python without replacing the runtime's
accelerator stack: when the installed jax fits lmjax's range, jax, jaxlib, libtpu and the CUDA plugins are
pinned to what is installed (a pip constraints file); otherwise the platform's extra comes with lmjax
(`tpu` when a TPU is attached, `cuda` when nvidia-smi answers, none on a CPU). Then the data packages
lmjax reads without their dependencies (requirements-nodeps.txt). Standard library only: it runs before
anything is installed (the notebooks' first cell, Colab, Kaggle, a TPU VM's image Python).

  python notebooks/install_lmjax.py [CHECKOUT] [--dry-run]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
except ImportError:  # a bare Python: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.specifiers import SpecifierSet

# the runtime's accelerator stack: kept as installed when jax fits lmjax's range
STACK = (
    "jax",
    "jaxlib",
    "libtpu",
    "libtpu-nightly",
    "jax-cuda12-plugin",
    "jax-cuda12-pjrt",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
)


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def jax_range(checkout: Path) -> str:
    """The specifier of jax in the checkout's pyproject.toml for this Python, e.g. '<0.13,>=0.11.1'. (By
    Python, so that flax's range, which follows it, holds a release that imports under the kept jax.)"""
    deps = tomllib.loads((checkout / "pyproject.toml").read_text())["project"]["dependencies"]
    (jax,) = [r for r in map(Requirement, deps) if r.name == "jax" and (not r.marker or r.marker.evaluate())]
    return str(jax.specifier)


def satisfies(version: str, spec: str) -> bool:
    return SpecifierSet(spec).contains(version, prereleases=True)


def platform_extra() -> str:
    tpu_env = ("COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "TPU_NAME")
    if os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio") or any(os.environ.get(k) for k in tpu_env):
        return "tpu"
    if (
        shutil.which("nvidia-smi")
        and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    ):
        return "cuda"
    return ""


def plan(checkout: Path) -> tuple[str, list[str]]:
    """(the pip spec to install, the constraints that keep the runtime's stack)."""
    spec = jax_range(checkout)
    jax_version = installed("jax")
    if jax_version and satisfies(jax_version, spec):
        return str(checkout), [f"{name}=={v}" for name in STACK if (v := installed(name))]
    extra = platform_extra()
    return (f"{checkout}[{extra}]" if extra else str(checkout)), []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkout", nargs="?", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--dry-run", action="store_true", help="resolve and report, install nothing")
    args = parser.parse_args(argv)
    checkout = Path(args.checkout).resolve()
    target, pins = plan(checkout)
    pip = [sys.executable, "-m", "pip", "install", "--quiet"] + (
        ["--dry-run", "--report", "-"] if args.dry_run else []
    )
    kept = ", ".join(pins) if pins else "none (jax is installed with lmjax)"
    print(f"install_lmjax: {target}; keeping {kept}", file=sys.stderr, flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("".join(p + "\n" for p in pins))
    try:
        subprocess.run(pip + ["--constraint", f.name, target], check=True)
        nodeps = checkout / "requirements-nodeps.txt"
        if nodeps.exists() and not args.dry_run:
            subprocess.run(pip + ["--no-deps", "-r", str(nodeps)], check=True)
    except subprocess.CalledProcessError as e:
        print(f"error: pip failed (exit {e.returncode}); its messages are above", file=sys.stderr)
        return 1
    finally:
        os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
