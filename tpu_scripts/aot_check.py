"""Compiles a config's train step for a TPU topology on any machine (no TPU needed) and reports its memory.

  pip install "libtpu==0.0.52"     # the TPU compiler (make test: .venv/tpu-compiler; requirements-aot.txt)
  python tpu_scripts/aot_check.py --config=experiments/configs/gpt.py:124m --topology=v5e:2x4
  python tpu_scripts/aot_check.py --config=experiments/configs/gpt.py:7b --topology=v5e:2x2
  --config.mesh.fsdp=1 \
      --config.mesh.data=-1

The step is lowered with the run's own shardings over a mesh of the topology's devices and compiled by
the TPU compiler; XLA's memory analysis gives the bytes one device needs (arguments: state and batch;
outputs less the donated state they reuse; temporaries; code), printed against the chip's HBM. Exit
status 0: it fits; 1: it does not (or the compiler ran out of memory), with the numbers; 2: bad input.
Multi-host topologies (v4:2x2x2, v5p:4x4x4) compile the program every host would run.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if (Path(sys.prefix) / "tpu-compiler").is_dir():  # where make test installs libtpu (requirements-aot.txt)
    sys.path.insert(0, str(Path(sys.prefix) / "tpu-compiler"))
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # libtpu looks for a TPU VM's metadata otherwise
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # this machine's own devices are not used
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: several checks may run at once

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

GIB = 1024**3
HBM_GIB = {"v4": 32, "v5e": 16, "v5litepod": 16, "v5p": 95, "v6e": 32}  # per chip
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config(arg)).")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x4", "TPU topology, e.g. v5e:2x4, v4:2x2x2, v5p:4x4x4.")


def hbm_per_device(topology: str, num_devices: int) -> float:
    generation, dims = topology.split(":")
    chips = 1
    for d in dims.split("x"):
        chips *= int(d)
    return HBM_GIB[generation] * GIB * chips / num_devices


def tpu_devices(topology: str):
    from jax.experimental import topologies

    generation = topology.split(":")[0]
    if generation not in HBM_GIB or not re.fullmatch(r"[a-z0-9]+:\d+(x\d+)+", topology):
        raise ValueError(
            f"--topology={topology!r}: use GENERATION:AxB[xC] with a generation in {sorted(HBM_GIB)}"
        )
    try:
        return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    except Exception as e:  # noqa: BLE001 (libtpu missing or the name unknown to it)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if importlib.util.find_spec("libtpu") is None:
            raise RuntimeError(
                f"cannot describe TPU topology {topology!r}: the TPU compiler is not installed; "
                f"pip install 'libtpu==0.0.52'"
            ) from None
        raise RuntimeError(f"cannot describe TPU topology {topology!r}: {first[:300]}") from None


def main(argv) -> int:
    del argv
    import jax
    import numpy as np

    from lmjax.models import attention
    from lmjax.training import prepare, pretrain

    attention.TARGET = "tpu"  # model.attention='auto' and its checks choose for the TPU, not this CPU
    config = _CONFIG.value
    prepare.check_config(config)
    if not config.model.vocab_size:
        raise ValueError(
            "model.vocab_size=0 takes the tokenizer's size, which needs data; set --config.model.vocab_size"
        )
    devices = tpu_devices(_TOPOLOGY.value)
    s = pretrain.setup(config, devices)
    state, batch = pretrain.abstract_step_inputs(s)
    hosts = len({d.process_index for d in devices})
    hbm = hbm_per_device(_TOPOLOGY.value, len(devices))
    state_bytes = sum(
        np.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state)
    )
    print(
        f"topology {_TOPOLOGY.value}: {len(devices)} devices ({devices[0].device_kind}) on {hosts} host(s), "
        f"{hbm / GIB:.1f} GiB HBM per device; mesh {dict(s.mesh.shape)}; {s.num_params / 1e6:,.1f}M "
        "parameters; "
        f"global batch {config.data.batch_size} x {config.data.seq_len}; train state {state_bytes / GIB:.3f} "
        "GiB "
        f"per device (parameters + Adam moments, fp32)"
    )
    if state_bytes > hbm:  # no need to compile: it cannot fit
        print(
            f"DOES NOT FIT: the train state alone needs {state_bytes / GIB:.3f} GiB per device of "
            f"{hbm / GIB:.1f} "
            f"GiB HBM; shard it (--config.mesh.fsdp=-1) or use a larger topology"
        )
        return 1
    try:
        compiled = s.train_step.lower(state, batch).compile()
    except Exception as e:  # noqa: BLE001
        message = str(e)
        if "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower():
            detail = " ".join(message.split())[:600]
            print(f"DOES NOT FIT: the TPU compiler ran out of memory: {detail}")
            return 1
        raise
    m = compiled.memory_analysis()
    parts = {
        "arguments (state + batch)": m.argument_size_in_bytes,
        "outputs not aliased to donated inputs": m.output_size_in_bytes - m.alias_size_in_bytes,
        "temporaries": m.temp_size_in_bytes,
        "generated code": m.generated_code_size_in_bytes,
    }
    total = sum(parts.values())
    for name, size in parts.items():
        print(f"  {name:40s} {size / GIB:8.3f} GiB")
    verdict = "fits" if total <= hbm else "DOES NOT FIT"
    print(
        f"{verdict}: {total / GIB:.3f} GiB per device of {hbm / GIB:.1f} GiB HBM ({100 * total / hbm:.0f}%)"
    )
    return 0 if total <= hbm else 1


def run() -> None:
    def entry(argv):
        try:
            sys.exit(main(argv))
        except (ValueError, RuntimeError) as e:
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            sys.exit(2)

    flags.mark_flags_as_required(["config"])
    app.run(entry)


if __name__ == "__main__":
    run()
