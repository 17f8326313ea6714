"""The one command to run on a GPU or TPU machine (ours or a fresh VM): what the machine is, whether the
accelerator-only kernels agree with the reference, how fast the standard presets train, a 300-step GPT-2 run,
and the server under load. Each part runs in a process of its own (a TPU opens in one process at a time), as
a user runs it, within --budget-s seconds in all (default 450: the whole run ends inside 8 minutes); a part
that would not fit is cut short and says so.

  python benchmarks/accelerator.py --out DIR            # a GPU or TPU machine
  python benchmarks/accelerator.py --smoke --out DIR    # the same path on a CPU, tiny models (< 3 minutes)

It writes DIR/accelerator.md (the tables) and DIR/accelerator.json (every figure), with the parts' logs:

  environment   device kind and count; versions of Python, jax, jaxlib, flax, optax, orbax-checkpoint, and
                libtpu or the CUDA plugin with the driver's CUDA version (nvidia-smi)
  tests         the accelerator-only tests of tests/models/test_attention.py (pytest): cuDNN attention against
                einsum on GPUs, the splash kernel against the reference on TPUs (skipped elsewhere)
  throughput    benchmarks/throughput.py's presets gpt2 (124M), bert-base-128, bert-base-512 and t5-base in
                bf16, each timed with every attention candidate of the platform (GPU/TPU: 'auto', i.e. cuDNN /
                splash where the call allows, and 'xla'; CPU: 'auto', i.e. einsum), the fastest reported
  training      experiments/configs/gpt.py:124m for 300 steps on the Shakespeare corpus (a sentencepiece
                vocabulary of 8,192 pieces; the model keeps GPT-2's 50,304 rows): loss, tokens/s and MFU of
                the logged intervals after the first (which holds the compilation)
  serving       benchmarks/serving.py against that run at 1, 32 and 128 concurrent clients

FLOPs per token (lmjax.metrics.train_flops, PaLM appendix B): 6 x the parameters of matrix products (the V x D
output head included, embedding lookups not) + 12 x layers x attention width x context, without causal
savings; encoder-decoders count their S inputs and T targets (train_flops' docstring). TFLOP/s per device =
FLOPs per token x tokens/s / devices; MFU = that / the chip's dense bf16 peak (lmjax.metrics.PEAK_TFLOPS).

On a machine with no registry, install what its image lacks first (make accelerator-wheels; the command is in
benchmarks/accelerator_wheels.py and the README).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("gpt2", "bert-base-128", "bert-base-512", "t5-base")
CLIENTS = (1, 32, 128)
VERSIONS = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "libtpu", "libtpu-nightly")
VERSIONS += ("jax-cuda13-plugin", "jax-cuda12-plugin", "nvidia-cudnn-cu13", "nvidia-cudnn-cu12")
ENV_PROBE = """
import importlib.metadata as m, json, platform, jax
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
devices = jax.devices()
print(json.dumps({
    "platform": jax.default_backend(), "device_kind": devices[0].device_kind, "devices": len(devices),
    "python": platform.python_version(), "versions": {n: version(n) for n in %r},
    "environment_info": jax.print_environment_info(return_string=True)}))
""" % (VERSIONS,)


class Part:
    """One part of the run: a command in a process of its own, its log in DIR/<name>.log, cut at a timeout."""

    def __init__(self, name: str, out: Path):
        self.name, self.log = name, out / f"{name}.log"
        self.status, self.seconds = "not run", 0.0
        self.log.write_text("")

    def run(self, cmd: list[str], timeout: float, env: dict | None = None) -> str:
        start = time.monotonic()
        with open(self.log, "a") as log:
            log.write("$ " + " ".join(cmd) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                rc = proc.wait(timeout=max(timeout, 1))
                status = "ok" if rc == 0 else f"failed (exit {rc})"
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                status = f"cut at {timeout:.0f} s (the budget)"
        if self.status in ("not run", "ok"):  # a part of several commands keeps its first trouble
            self.status = status
        self.seconds += time.monotonic() - start
        return self.log.read_text()

    def record(self) -> dict:
        return {"status": self.status, "seconds": round(self.seconds, 1), "log": self.log.name}


def environment(part: Part) -> dict:
    text = part.run([sys.executable, "-c", ENV_PROBE], timeout=120)
    lines = [line for line in text.splitlines() if line.startswith('{"platform"')]
    if not lines:
        return {}
    env = json.loads(lines[-1])
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", env["environment_info"])
    driver = re.search(r"Driver Version:\s*([\d.]+)", env["environment_info"])
    env["cuda"] = cuda and cuda.group(1)
    env["driver"] = driver and driver.group(1)
    return env


def tests(part: Part, out: Path, timeout: float) -> dict:
    """pytest over the accelerator-only tests (names ending in _on_gpus / _on_tpus); counts from JUnit XML."""
    xml = out / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "tests/models/test_attention.py", "-k", "on_gpus or on_tpus"]
    env = dict(os.environ, JAX_PLATFORMS="")  # the tests' conftest would pick the CPU otherwise
    part.run(cmd + [f"--junitxml={xml}"], timeout, env)
    if not xml.exists():
        return {}
    suite = ET.parse(xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["names"] = {
        case.get("name"): "skipped"
        if case.find("skipped") is not None
        else "failed"
        if case.find("failure") is not None or case.find("error") is not None
        else "passed"
        for case in suite.iter("testcase")
    }
    return counts


def throughput(part: Part, out: Path, platform: str, smoke: bool, budget) -> list[dict]:
    """Each candidate attention over all presets (benchmarks/throughput.py); per preset the fastest row. A
    candidate starts only if the time left holds as long again as the first one took."""
    candidates = ("auto",) if platform == "cpu" else ("auto", "xla")
    steps = ["--steps", "3", "--warmup", "1", "--rounds", "1", "--tiny"] if smoke else ["--steps", "20"]
    steps += [] if smoke else ["--warmup", "3", "--rounds", "2"]
    rows, took = [], 0.0
    for attention in candidates:
        if budget.left() < max(took, 30):
            part.status = f"{attention!r} not run (the budget)"
            break
        start = time.monotonic()
        cmd = [sys.executable, "benchmarks/throughput.py", "--presets", ",".join(PRESETS)]
        cmd += ["--attention", attention, "--decode", "0", *steps]
        text = part.run(cmd, budget.left())
        took = time.monotonic() - start
        rows += [json.loads(line) for line in text.splitlines() if line.startswith('{"preset"')]
    best = {}
    for row in rows:
        row["tflops_per_device"] = row["flops_per_token"] * row["tokens_per_s"] / row["devices"] / 1e12
        if row["preset"] not in best or row["tokens_per_s"] > best[row["preset"]]["tokens_per_s"]:
            best[row["preset"]] = row
    return [
        best[p] | {"candidates": sorted({r["attention"] for r in rows if r["preset"] == p})}
        for p in PRESETS
        if p in best
    ]


def training(part: Part, workdir: Path, smoke: bool, text_files: str, timeout: float) -> dict:
    """gpt.py:124m for 300 steps (smoke: a 2 x 64 model for 30); figures from the run's metrics.jsonl."""
    steps, log_every = (30, 5) if smoke else (300, 50)
    overrides = {
        "data.tfds_name": "",
        "data.corpus": "shakespeare",
        "data.text_files": text_files,
        "data.vocab_size": 1024 if smoke else 8192,
        "data.tokenizer_train_examples": 0,
        "data.batch_size": 4 if smoke else 32,
        "train.num_steps": steps,
        "train.log_every": log_every,
        "train.eval_every": steps,
        "train.eval_batches": 4,
        "train.checkpoint_every": steps,
        "train.sample_tokens": 0,
        "optim.warmup_steps": steps // 10,
        "mesh.data": -1,
        "mesh.fsdp": 1,
    }
    if smoke:
        overrides |= {"model.num_layers": 2, "model.d_model": 64, "model.num_heads": 4, "model.max_len": 64}
        overrides |= {"data.seq_len": 64, "model.vocab_size": 1024, "model.dtype": "float32"}
    cmd = [sys.executable, "-m", "lmjax.main", "--config=experiments/configs/gpt.py:124m"]
    cmd += [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    part.run(cmd, timeout)
    path = workdir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    logged = [r for r in records if "train/loss" in r]
    if not logged:
        return {}
    later = logged[1:] or logged
    mfu = [r["train/mfu"] for r in later if "train/mfu" in r]
    return {
        "steps": logged[-1]["step"],
        "batch": overrides["data.batch_size"],
        "first_loss": logged[0]["train/loss"],
        "last_loss": logged[-1]["train/loss"],
        "eval_loss": next((r["eval/loss"] for r in reversed(records) if "eval/loss" in r), None),
        "tokens_per_s": statistics.median(r["train/tokens_per_s"] for r in later),
        "tflops_per_device": statistics.median(r["train/tflops_per_device"] for r in later),
        "mfu": statistics.median(mfu) if mfu else None,
        "losses": {r["step"]: r["train/loss"] for r in logged},
    }


def serving(part: Part, out: Path, workdir: Path, smoke: bool, timeout: float) -> list[dict]:
    """benchmarks/serving.py at CLIENTS concurrent clients against the trained run (one round each)."""
    result = out / "serving.json"
    requests, tokens, chars = (16, 4, 12) if smoke else (128, 64, 64)
    cmd = [sys.executable, "benchmarks/serving.py", f"--workdir={workdir}"]
    cmd += ["--clients", ",".join(map(str, CLIENTS)), "--requests", str(requests), "--rounds", "1"]
    cmd += ["--max-tokens", str(tokens), "--prompt-chars", str(chars), "--no-transformers", f"--out={result}"]
    part.run(cmd, timeout)
    if not result.exists():
        return []
    rows = json.loads(result.read_text())
    return [{"level": name} | {k: v for k, v in r.items() if k != "texts"} for name, r in rows.items()]


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def share(self, fraction: float, later: float) -> float:
        """Seconds for a part: `fraction` of the budget, less whatever would leave the later parts under
        `later` of it."""
        return min(fraction * self.seconds, self.left() - later * self.seconds)


def report(result: dict) -> str:
    """The markdown tables."""
    env, parts = result["environment"], result["parts"]
    stack = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items() if v)
    cuda = f"; CUDA {env['cuda']} (driver {env['driver']})" if env.get("cuda") else ""
    lines = [
        f"# lmjax on {env.get('device_kind', '?')} x{env.get('devices', '?')} ({env.get('platform', '?')})",
        "",
        f"Python {env.get('python', '?')}; {stack}{cuda}. Mode: {result['mode']}; "
        f"{result['seconds']:.0f} s in all.",
        "",
        "| part | status | seconds |",
        "|---|---|---|",
        *(f"| {name} | {p['status']} | {p['seconds']:.0f} |" for name, p in parts.items()),
        "",
    ]
    t = result["tests"]
    if t:
        lines += [
            f"Accelerator-only tests: {t['passed']} passed, {t['failures'] + t['errors']} failed, "
            f"{t['skipped']} skipped (of {t['tests']}).",
            "",
        ]
    if result["throughput"]:
        lines += [
            "| preset | attention (of) | params | batch | step (ms) | tokens/s | TFLOP/s per device | MFU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in result["throughput"]:
            mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
            lines.append(
                f"| {r['preset']} | {r['attention']} ({', '.join(r['candidates'])}) | {r['params']:,} | "
                f"{r['batch_size']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                f"{r['tflops_per_device']:.3g} | {mfu} |"
            )
        lines.append("")
    tr = result["training"]
    if tr:
        mfu = f"{tr['mfu']:.1%}" if tr["mfu"] is not None else "–"
        eval_loss = f"{tr['eval_loss']:.3f}" if tr["eval_loss"] is not None else "–"
        lines += [
            f"Training (gpt.py:124m, batch {tr['batch']}): {tr['steps']} steps, loss {tr['first_loss']:.3f} "
            f"-> {tr['last_loss']:.3f}, validation loss {eval_loss}; {tr['tokens_per_s']:,.0f} tokens/s, "
            f"{tr['tflops_per_device']:.3g} TFLOP/s per device, MFU {mfu}.",
            "",
        ]
    if result["serving"]:
        lines += [
            "| serving | requests | tokens/s | TTFT p50 (ms) | latency p50 / p99 (s) |",
            "|---|---|---|---|---|",
        ]
        for r in result["serving"]:
            ttft = f"{r['ttft_p50'] * 1e3:.0f}" if "ttft_p50" in r else "–"
            lines.append(
                f"| {r['level']} | {r['requests']} | {r['tokens_per_s']:,.0f} | {ttft} | "
                f"{r['latency_p50']:.2f} / {r['latency_p99']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="where accelerator.md, accelerator.json and logs go")
    parser.add_argument("--smoke", action="store_true", help="tiny models, on any machine (a CPU)")
    parser.add_argument("--budget-s", type=float, default=0, help="seconds for the whole run (0: 450; 170)")
    parser.add_argument("--workdir", default="", help="the training run's workdir (default: a temp dir)")
    parser.add_argument("--text-files", default="", help="train on these files instead of Shakespeare")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = Budget(args.budget_s or (170 if args.smoke else 450))
    start = time.monotonic()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lmjax-accelerator-"))
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # parts share a GPU one after another
    parts = {name: Part(name, out) for name in ("environment", "tests", "training", "serving", "throughput")}
    result = {"mode": "smoke" if args.smoke else "full", "workdir": str(workdir)}
    result["environment"] = environment(parts["environment"])
    platform = result["environment"].get("platform", "cpu")
    # each part at most its share of the budget; what a part leaves unused goes to the next
    result["tests"] = tests(parts["tests"], out, budget.share(0.2, later=0.7))
    share = budget.share(0.45, later=0.35)
    result["training"] = training(parts["training"], workdir, args.smoke, args.text_files, share)
    result["serving"] = serving(parts["serving"], out, workdir, args.smoke, budget.share(0.25, later=0.1))
    result["throughput"] = throughput(parts["throughput"], out, platform, args.smoke, budget)
    result["parts"] = {name: p.record() for name, p in parts.items()}
    result["seconds"] = time.monotonic() - start
    (out / "accelerator.json").write_text(json.dumps(result, indent=1))
    (out / "accelerator.md").write_text(report(result))
    print(report(result))
    failed = [name for name, p in parts.items() if p.status != "ok"]
    failed += ["tests"] if result["tests"] and result["tests"]["failures"] + result["tests"]["errors"] else []
    if failed:
        print(
            f"error: not all parts ran cleanly: {sorted(set(failed))} (their logs are in {out})",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
