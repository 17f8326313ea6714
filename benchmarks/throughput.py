"""Training and decoding throughput of every family: step time, tokens/s, compile time, peak memory, MFU.

  .venv/bin/python benchmarks/throughput.py --presets baby,medium --compare-torch --devices 1,2   # 2-core CPU
  python benchmarks/throughput.py --presets gpt2,bert-base-128,bert-base-512,t5-base               # one GPU

Presets: 'baby' and 'medium' are nanoGPT's architecture (experiments/configs/shakespeare_char.py:nanogpt:
learned positions, no biases, tied head, AdamW + clipping) on a 65-token vocabulary; 'gpt2' is
experiments/configs/gpt.py:124m (GPT-2 small, context 1024, batch 8); 'bert-base-128' / 'bert-base-512' the
bert_mlm.py architecture at BERT-base size (12 x 768, vocabulary 30,522; MLM + NSP); 't5-base' the t5_span.py
architecture at T5-base size (12 + 12 x 768, vocabulary 32,128, span corruption of 512-token inputs). All
train on random tokens so that only the step is timed; compute dtype 'auto' is bfloat16 on accelerators (fp32
parameters and optimizer state), float32 on CPU. A round times --steps steps after --warmup, run as the
training loop runs them (a step's metrics read after the next step is dispatched; the reference reads its loss
every step) and reports the mean; with --compare-torch the PyTorch reference (benchmarks/reference_torch.py,
in a process of its own) runs the GPT sizes in the same round, alternating, twice: eager with the
per-tensor AdamW, and under torch.compile with the fused AdamW; figures are medians over rounds,
the ratio to PyTorch the median of the rounds' ratios. --devices 1,2 measures the step on one device and
data-parallel over two side by side (on CPU the script splits the host into that many XLA devices, as
XLA_FLAGS=--xla_force_host_platform_device_count=N does for a training run). Decoders also report greedy
decoding tokens/s with the KV cache. --remat sets model.remat (what each block keeps for its backward pass);
MFU counts model FLOPs, so recomputed forward passes do not raise it; --attention sets model.attention and
--batch-size the batch.

FLOPs per token: lmjax.metrics.train_flops (PaLM appendix B): decoders 6·N + 12·L·H·Q·T (N = parameters in
matrix products: all but the token and position embeddings, plus the V·D output head; L layers, H heads, Q
head size, T context); encoders add the MLM transform D² to N; encoder-decoders count encoder, decoder (self +
cross attention) and head matmuls over the S input and T target tokens and 12·H·Q·(Le·S² + Ld·T² + Ld·T·S) for
attention, per input + target token (see train_flops' docstring). MFU = FLOPs per token x tokens/s / (devices
x --peak-tflops; default: the chip's dense bf16 peak in lmjax.metrics.PEAK_TFLOPS)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import bert_mlm, gpt, shakespeare_char, t5_span  # noqa: E402
from lmjax import host, metrics, sharding
from lmjax.data import pipeline  # noqa: E402
from lmjax.models import decode
from lmjax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS  # noqa: E402
from lmjax.training import (
    objectives,
    pretrain,  # noqa: E402
)

VOCAB = 65
# nanoGPT-architecture decoders on a character vocabulary: (layers, heads, width, context, batch)
GPT_SIZES = {
    "baby": (4, 4, 128, 64, 12),
    "medium": (6, 6, 384, 256, 16),
}
BERT_BASE = dict(num_layers=12, num_heads=12, d_model=768, d_ff=3072, max_len=512, vocab_size=30522)
OTHER = {  # accelerator sizes from the family configs: (config module, argument, overrides of model / data)
    "gpt2": (gpt, "124m", {}, {"batch_size": 8}),
    "bert-base-128": (bert_mlm, "", BERT_BASE, {"seq_len": 128, "batch_size": 64}),
    "bert-base-512": (bert_mlm, "", BERT_BASE, {"seq_len": 512, "batch_size": 16}),
    "t5-base": (
        t5_span,
        "",
        dict(
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
            d_model=768,
            d_ff=3072,
            max_len=512,
            vocab_size=32128,
        ),
        {"seq_len": 512, "batch_size": 16},
    ),
}
PRESETS = sorted(GPT_SIZES) + sorted(OTHER)


TINY = dict(num_layers=2, num_decoder_layers=2, num_heads=4, d_model=64, d_ff=256, vocab_size=512)


def make_config(
    preset: str,
    dtype: str,
    remat: str = "none",
    attention: str = "auto",
    batch_size: int = 0,
    tiny: bool = False,
):
    """The preset's config; dtype 'auto' is bfloat16 on accelerators and float32 on CPU; remat and attention:
    model.remat and model.attention; batch_size (0: the preset's) overrides data.batch_size; tiny shrinks the
    model to TINY, the context to a quarter (at most 64) and the batch to 4 (CPU smoke runs)."""
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if preset in GPT_SIZES:
        layers, heads, width, context, batch = GPT_SIZES[preset]
        config = shakespeare_char.get_config("nanogpt")
        config.model.update(
            num_layers=layers, num_heads=heads, d_model=width, max_len=context, vocab_size=VOCAB
        )
        config.data.update(seq_len=context, batch_size=batch)
    else:
        module, arg, model, data = OTHER[preset]
        config = module.get_config(arg)
        config.model.update(model)
        config.data.update(data)
    config.model.update(dtype=dtype, remat=remat, attention=attention)
    if tiny:
        config.model.update({k: v for k, v in TINY.items() if k in config.model})
        config.data.update(seq_len=min(64, config.data.seq_len // 4), batch_size=4)
    if batch_size:
        config.data.batch_size = batch_size
    config.mesh.update(data=-1, fsdp=1)
    return config


def random_batch(config, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of the shapes the objective's pipeline yields: random tokens, every position counted."""
    batch = {}
    for key, (shape, dtype) in (
        objectives.get(config.train.objective).batch_shapes(config.data, config.data.batch_size).items()
    ):
        if key in ("inputs", "targets", "decoder_inputs"):
            batch[key] = rng.integers(4, min(config.model.vocab_size, 256), shape, dtype=dtype)
        elif key == "nsp_labels":
            batch[key] = rng.integers(0, 2, shape, dtype=dtype)
        elif key == "segments":
            batch[key] = np.zeros(shape, dtype)
        elif key.endswith("positions"):  # one document per row
            batch[key] = np.broadcast_to(np.arange(shape[1], dtype=dtype), shape).copy()
        else:  # weights and masks
            batch[key] = np.ones(shape, dtype)
    return batch


def tokens_and_flops(config) -> tuple[int, float]:
    """Tokens per step (inputs + targets for encoder-decoders) and training FLOPs per token."""
    target_len = pipeline.span_lengths(config.data)[1] if config.train.objective == "span_corruption" else 0
    tokens = config.data.batch_size * (config.data.seq_len + target_len)
    return tokens, pretrain.step_flops(config) / tokens


def peak_tflops(arg: float) -> float | None:
    return arg or metrics.peak_tflops(jax.devices()[0].device_kind)


class LmjaxRun:
    """A compiled train step and its state, measured `steps` at a time."""

    def __init__(self, config, devices=None):
        self.config = config
        self.setup = pretrain.setup(config, devices)
        self.batch = sharding.global_batch(random_batch(config, np.random.default_rng(0)), self.setup.layout)
        self.state = self.setup.init(jax.random.PRNGKey(0))
        start = time.perf_counter()
        self.step = self.setup.train_step.lower(self.state, self.batch).compile()
        self.compile_s = time.perf_counter() - start

    def measure(self, steps: int, warmup: int) -> float:
        """Seconds per step over `steps` steps run as the training loop runs them: step n's metrics are read
        after step n + 1 is dispatched (with asynchronous dispatch, which lmjax.host.tune_allocator turns off
        on CPU, dispatch overlaps the previous step), so no step runs ahead of the one before."""
        for _ in range(warmup):
            self.state, metrics = self.step(self.state, self.batch)
        jax.block_until_ready(metrics)
        start, pending = time.perf_counter(), None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
            jax.block_until_ready(pending)
            pending = metrics
        jax.block_until_ready(pending)
        return (time.perf_counter() - start) / steps


def decode_tokens_per_s(run: LmjaxRun, rounds: int = 3) -> float:
    """Greedy generation with the KV cache (lmjax.models.decode.generate): batch rows x new tokens / wall
    time, for a prompt of a quarter of the context and new tokens filling the rest (prefill included), median
    of rounds."""
    config, params = run.config, run.state.params
    prompt_len = config.data.seq_len // 4
    new = config.data.seq_len - prompt_len
    prompts = np.random.default_rng(1).integers(
        4, min(config.model.vocab_size, 256), (config.data.batch_size, prompt_len)
    )
    times = []
    for i in range(rounds + 1):  # the first compiles
        start = time.perf_counter()
        decode.generate(
            run.setup.graphdef, params, prompts, jax.random.PRNGKey(i), num_tokens=new, temperature=0.0
        )
        times.append(time.perf_counter() - start)
    return config.data.batch_size * new / statistics.median(times[1:])


def peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # CPU: the process's peak RSS


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--presets", default="baby,medium", help=f"comma-separated, of {sorted(PRESETS)}")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dtype",
        default="auto",
        help="compute dtype (parameters stay float32); auto: bfloat16 on accelerators, float32 on CPU",
    )
    parser.add_argument(
        "--remat",
        default="none",
        help="model.remat: what each block keeps for the backward "
        "pass (none | full | dots | dots_no_batch; lmjax/models/layers.py)",
    )
    parser.add_argument(
        "--attention", default="auto", choices=ATTENTION_IMPLEMENTATIONS, help="model.attention"
    )
    parser.add_argument("--batch-size", type=int, default=0, help="data.batch_size (0: the preset's)")
    parser.add_argument("--tiny", action="store_true", help="shrink every preset (CPU smoke runs: TINY)")
    parser.add_argument(
        "--devices", default="1", help="device counts to measure, comma-separated (data-parallel)"
    )
    parser.add_argument("--decode", type=int, default=1, help="0 skips the decoding measurement")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=0.0,
        help="device peak for MFU (default: lmjax.metrics.PEAK_TFLOPS)",
    )
    parser.add_argument(
        "--compare-torch", action="store_true", help="run benchmarks/reference_torch.py alongside"
    )
    parser.add_argument(
        "--torch-malloc",
        choices=("lmjax", "default"),
        default="lmjax",
        help="the reference's "
        "allocator: lmjax's settings (lmjax/host.py), as lmjax runs, or glibc's defaults",
    )
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    args = parser.parse_args()
    unknown = [p for p in args.presets.split(",") if p not in PRESETS]
    if unknown:
        sys.exit(f"error: unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    reference = None
    if args.compare_torch:
        try:
            import reference_torch
            import torch  # noqa: F401 - fail here, not in the reference's process
        except ImportError:
            sys.exit("error: --compare-torch needs PyTorch; pip install torch (the CPU build is enough)")
        reference = reference_torch.Process(keep_freed_memory=args.torch_malloc == "lmjax")
    host.tune_allocator()  # as lmjax.main does (the PyTorch reference runs in a process of its own)
    device_counts = [int(n) for n in args.devices.split(",")]
    if max(device_counts) > 1 and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "")  # read when the CPU backend starts, below
            + f" --xla_force_host_platform_device_count={max(device_counts)}"
        )
    if max(device_counts) > jax.device_count():
        sys.exit(
            f"error: --devices asks for {max(device_counts)} devices but {jax.device_count()} are available"
        )
    peak = peak_tflops(args.peak_tflops)
    backend = f"{jax.default_backend()}, jax {jax.__version__}"
    device = f"{jax.devices()[0].device_kind} x{jax.device_count()} ({backend})"
    rows = []
    for preset in args.presets.split(","):
        runs = {
            n: LmjaxRun(
                make_config(preset, args.dtype, args.remat, args.attention, args.batch_size, args.tiny),
                jax.devices()[:n],
            )
            for n in device_counts
        }
        config = runs[device_counts[0]].config
        tokens, flops_per_token = tokens_and_flops(config)
        lmjax_s, torch_s = {n: [] for n in runs}, {False: [], True: []}  # torch: eager, compiled
        for _ in range(args.rounds):  # alternating, so that drifts in the machine's speed hit all alike
            for n, run in runs.items():
                lmjax_s[n].append(run.measure(args.steps, args.warmup))
            if reference and preset in GPT_SIZES:
                layers, heads, width, context, _ = GPT_SIZES[preset]
                for compiled in torch_s:
                    r = reference.measure(
                        vocab=VOCAB,
                        layers=layers,
                        heads=heads,
                        d=width,
                        seq_len=context,
                        batch=config.data.batch_size,
                        steps=args.steps,
                        warmup=args.warmup + (5 if compiled else 0),  # compilation happens in warm-up
                        compiled=compiled,
                    )
                    torch_s[compiled].append(r["step_ms"] / 1e3)
        decode_tps = (
            decode_tokens_per_s(runs[device_counts[0]])
            if config.model.family == "decoder" and args.decode
            else None
        )
        for n, run in runs.items():
            step_s = statistics.median(lmjax_s[n])
            row = {
                "preset": preset,
                "devices": n,
                "dtype": config.model.dtype,
                "remat": config.model.remat,
                "attention": config.model.attention,
                "batch_size": config.data.batch_size,
                "params": run.setup.num_params,
                "step_ms": step_s * 1e3,
                "tokens_per_s": tokens / step_s,
                "compile_s": run.compile_s,
                "peak_mem_mb": peak_memory_mb(),
                "flops_per_token": flops_per_token,
                "step_ms_rounds": [t * 1e3 for t in lmjax_s[n]],
                "decode_tokens_per_s": decode_tps,
            }
            row["mfu"] = flops_per_token * row["tokens_per_s"] / (peak * n * 1e12) if peak else None
            for compiled, times in torch_s.items():
                if not times:
                    continue
                name = "torch_compiled" if compiled else "torch"
                row[f"{name}_tokens_per_s"] = tokens / statistics.median(times)
                row[f"{name}_step_ms_rounds"] = [t * 1e3 for t in times]
                # each round's ratio compares measurements taken back to back: drifts of the machine cancel
                row[f"speedup_vs_{name}"] = statistics.median(
                    t / m for t, m in zip(times, lmjax_s[n], strict=True)
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\ndevice: {device}; median over {args.rounds} rounds of the mean of {args.steps} steps "
        f"after {args.warmup} warm-up steps"
    )
    print(
        "| preset | dtype | devices | params | step (ms) | tokens/s | compile (s) | peak mem (MiB) | MFU | "
        "decode tokens/s | torch eager tokens/s | torch.compile tokens/s | lmjax / eager | lmjax / compiled |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
        ref = (
            f"{r['torch_tokens_per_s']:,.0f} | {r['torch_compiled_tokens_per_s']:,.0f} | "
            f"{r['speedup_vs_torch']:.2f}x | {r['speedup_vs_torch_compiled']:.2f}x"
            if "torch_tokens_per_s" in r
            else "– | – | – | –"
        )
        dec = f"{r['decode_tokens_per_s']:,.0f}" if r["decode_tokens_per_s"] else "–"
        print(
            f"| {r['preset']} | {r['dtype']} | {r['devices']} | {r['params']:,} | {r['step_ms']:.1f} "
            f"| {r['tokens_per_s']:,.0f} | {r['compile_s']:.1f} | {r['peak_mem_mb']:,.0f} | {mfu} | {dec} | "
            f"{ref} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=1))
    if reference:
        reference.close()


if __name__ == "__main__":
    main()
