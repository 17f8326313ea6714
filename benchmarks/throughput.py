"""Training throughput of lmjax's GPT: step time, tokens/s, compile time, peak memory, MFU.

  .venv/bin/python benchmarks/throughput.py [--presets baby,medium] [--compare-torch] [--rounds 3]

Each preset is nanoGPT's architecture (experiments/configs/shakespeare_char.py:nanogpt: learned positions,
no biases, tied head, AdamW + clipping) at the sizes below, trained on random tokens so that only the
step is timed. A round measures the median of --steps steps after --warmup; with --compare-torch the
PyTorch reference (benchmarks/reference_torch.py) runs the same sizes in the same round, alternating,
and the reported figure is the median over rounds.

FLOPs per token: lmjax.metrics.train_flops (PaLM appendix B: 6·N + 12·L·H·Q·T, N = parameters in matrix
products: all but the token and position embeddings, plus the V·D output head; L layers, H heads, Q head
size, T context).
MFU = FLOPs per token x tokens/s / --peak-tflops (default: the device's dense bf16 peak where known).
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import shakespeare_char  # noqa: E402
from lmjax import metrics, parallel, train  # noqa: E402

VOCAB = 65
PRESETS = {  # name: (layers, heads, width, context, batch)
    "baby": (4, 4, 128, 64, 12),
    "medium": (6, 6, 384, 256, 16),
    "gpt2": (12, 12, 768, 1024, 8),
}
PEAK_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}  # dense bf16


def make_config(preset: str, dtype: str):
    layers, heads, width, context, batch = PRESETS[preset]
    c = shakespeare_char.get_config("nanogpt")
    c.model.update(num_layers=layers, num_heads=heads, d_model=width, max_len=context, vocab_size=VOCAB, dtype=dtype)
    c.data.update(seq_len=context, batch_size=batch)
    return c


def flops_per_token(c) -> float:
    flops, tokens = metrics.train_flops(c.model, c.data.seq_len)
    return flops / tokens


def peak_tflops(arg: float) -> float | None:
    if arg:
        return arg
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)


class LmjaxRun:
    """A compiled train step and its state, measured `steps` at a time."""

    def __init__(self, c):
        self.c = c
        self.setup = train.setup(c)
        rng = np.random.default_rng(0)
        tokens = rng.integers(0, VOCAB, (c.data.batch_size, c.data.seq_len + 1), dtype=np.int32)
        batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones_like(tokens[:, 1:], np.float32)}
        self.batch = parallel.global_batch(batch, self.setup.layout)
        self.state = self.setup.init(jax.random.PRNGKey(0))
        start = time.perf_counter()
        self.step = self.setup.train_step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start

    def measure(self, steps: int, warmup: int) -> float:
        """Median seconds per step; each step waits for the previous one, as the loop's metrics do."""
        times = []
        for i in range(warmup + steps):
            start = time.perf_counter()
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(metrics)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        return statistics.median(times)


def peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 10  # CPU: the process's peak RSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="baby,medium", help=f"comma-separated, of {sorted(PRESETS)}")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="compute dtype (parameters stay float32)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak for MFU (default: known GPUs)")
    parser.add_argument("--compare-torch", action="store_true", help="run benchmarks/reference_torch.py alongside")
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    unknown = [p for p in args.presets.split(",") if p not in PRESETS]
    if unknown:
        sys.exit(f"error: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    if args.compare_torch:
        try:
            import reference_torch
        except ImportError:
            sys.exit("error: --compare-torch needs PyTorch; pip install torch (the CPU build is enough)")
    peak = peak_tflops(args.peak_tflops)
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}, jax {jax.__version__})"
    rows = []
    for preset in args.presets.split(","):
        c = make_config(preset, args.dtype)
        run = LmjaxRun(c)
        tokens = c.data.batch_size * c.data.seq_len
        lmjax_s, torch_s = [], []
        for _ in range(args.rounds):
            lmjax_s.append(run.measure(args.steps, args.warmup))
            if args.compare_torch:
                layers, heads, width, context, batch = PRESETS[preset]
                r = reference_torch.measure(vocab=VOCAB, layers=layers, heads=heads, d=width, seq_len=context,
                                            batch=batch, steps=args.steps, warmup=args.warmup)
                torch_s.append(r["step_ms"] / 1e3)
        step_s = statistics.median(lmjax_s)
        row = {"preset": preset, "params": run.setup.num_params, "step_ms": step_s * 1e3,
               "tokens_per_s": tokens / step_s, "compile_s": run.compile_s, "peak_mem_mb": peak_memory_mb(),
               "flops_per_token": flops_per_token(c)}
        row["mfu"] = row["flops_per_token"] * row["tokens_per_s"] / (peak * 1e12) if peak else None
        if torch_s:
            row["torch_step_ms"] = statistics.median(torch_s) * 1e3
            row["torch_tokens_per_s"] = tokens / statistics.median(torch_s)
            row["speedup_vs_torch"] = row["tokens_per_s"] / row["torch_tokens_per_s"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\ndevice: {device}; dtype {args.dtype}; median of {args.rounds} rounds x {args.steps} steps "
          f"after {args.warmup} warm-up steps")
    print("| preset | params | step (ms) | tokens/s | compile (s) | peak mem (MiB) | MFU | torch tokens/s | lmjax / torch |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
        ref = (f"{r['torch_tokens_per_s']:,.0f} | {r['speedup_vs_torch']:.2f}x" if "torch_tokens_per_s" in r else "– | –")
        print(f"| {r['preset']} | {r['params']:,} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['compile_s']:.1f} "
              f"| {r['peak_mem_mb']:,.0f} | {mfu} | {ref} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
