"""Compile time of the train step against depth, with the blocks unrolled or scanned (model.scan_layers).

  .venv/bin/python benchmarks/compile_time.py --layers 12,24,48
  python benchmarks/compile_time.py --layers 12,24,48 --config=experiments/configs/gpt.py:124m   # any config

For each depth the config's train step (GPT-2 small's width by default: 768 wide, 12 heads, context 256,
batch 8, random weights) is traced and lowered (jax.jit(...).lower) and compiled (.compile()) once with
model.scan_layers False and once True, in this order, in one process; reported: seconds to lower, seconds to
compile, and the StableHLO program's size in lines. Nothing runs, so no data is needed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from lmjax import config
from lmjax.training import pretrain  # noqa: E402


def measure(config_spec: str, layers: int, scan: bool, seq_len: int, batch: int, remat: str) -> dict:
    c = config.load(config_spec)
    c.model.update(num_layers=layers, scan_layers=scan, remat=remat, max_len=max(c.model.max_len, seq_len))
    c.model.vocab_size = c.model.vocab_size or 50304
    c.data.update(seq_len=seq_len, batch_size=batch)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    s = pretrain.setup(c, jax.devices()[:1])
    start = time.perf_counter()
    lowered = s.train_step.lower(*pretrain.abstract_step_inputs(s))
    lower_s = time.perf_counter() - start
    lines = lowered.as_text().count("\n")
    start = time.perf_counter()
    lowered.compile()
    return {
        "layers": layers,
        "scan_layers": scan,
        "lower_s": lower_s,
        "compile_s": time.perf_counter() - start,
        "stablehlo_lines": lines,
        "params": s.num_params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="experiments/configs/gpt.py:124m")
    parser.add_argument("--layers", default="12,24,48")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--remat", default="none", help="model.remat for both variants")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    rows = []
    for layers in (int(n) for n in args.layers.split(",")):
        for scan in (False, True):
            row = measure(args.config, layers, scan, args.seq_len, args.batch, args.remat)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{jax.devices()[0].device_kind}, jax {jax.__version__}; {args.config}, remat {args.remat}")
    print("| layers | scan_layers | lower (s) | compile (s) | StableHLO lines |\n|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['layers']} | {r['scan_layers']} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
            f"{r['stablehlo_lines']:,} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
