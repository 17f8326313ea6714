"""Serving throughput and latency: N concurrent clients (default 1, 8, 32) against `--config.mode=serve` on
127.0.0.1, side by side with the same requests served one at a time (a server with one slot, one client), and
with Hugging Face transformers generating them one at a time where it can load the model (a GGUF / Hugging
Face finetune.init such as smollm2-135m-instruct; the demo's layernorm + rotary GPT has no transformers
class).

Every request asks for exactly --max-tokens tokens at temperature 0 (`ignore_eos`, vLLM's extension, which the
server takes); each answer is checked against the same server's answer at the first level (no request lost or
altered). Each server first answers every prompt once (compiling its prefill shapes), unmeasured. Output
tokens/s is the level's completion tokens over its wall time; time to first token and latency are per
request (p50 / p99). Bounded: --requests requests per level, --timeout seconds per request.

  python benchmarks/serving.py --workdir=workdirs/demo --clients 1,8,32 --requests 64 --max-tokens 48
  python benchmarks/serving.py --workdir=/tmp/scratch --init=smollm2-135m-instruct --max-len=256 \
      --clients 1,8,32 --requests 32 --max-tokens 32 --prompt-chars 48
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m lmjax.main --config.mode=serve` on a free port, stopped with SIGTERM on exit."""

    def __init__(self, workdir: str, init: str, *overrides: str):
        import urllib.request

        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "lmjax.main", "--config=experiments/configs/shakespeare_char.py"]
        cmd += [f"--workdir={workdir}", "--config.mode=serve", f"--config.serve.port={self.port}", *overrides]
        cmd += [f"--config.finetune.init={init}"] if init else []
        env = {k: v for k, v in os.environ.items() if k != "LMJAX_API_KEY"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 300
        while True:
            try:
                self.health = json.load(urllib.request.urlopen(f"{self.url}/health", timeout=1))
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = Path(self.log.name).read_text()[-2000:]
                    raise RuntimeError(f"the server did not start: {log}") from None
                time.sleep(0.2)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=120)


def one_request(url: str, model: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    """One streamed completion over plain HTTP (http.client reading the server-sent events: the client's
    parsing costs little of the CPU the server shares with it)."""
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    host, port = url.removeprefix("http://").split(":")
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:500]!r}")
    first, parts, usage = None, [], None
    for line in response:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk["choices"] and chunk["choices"][0]["text"]:
            first = first or time.perf_counter()
            parts.append(chunk["choices"][0]["text"])
        usage = chunk.get("usage") or usage
    end = time.perf_counter()
    conn.close()
    return {
        "text": "".join(parts),
        "tokens": usage["completion_tokens"],
        "ttft": first - start,
        "latency": end - start,
    }


def level(url: str, model: str, prompts: list[str], clients: int, max_tokens: int, timeout: float) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda p: one_request(url, model, p, max_tokens, timeout), prompts))
    row = summary(clients, results, time.perf_counter() - start)
    ttft = [r["ttft"] for r in results]
    return row | {"ttft_p50": float(np.percentile(ttft, 50)), "ttft_p99": float(np.percentile(ttft, 99))}


def summary(clients: int, results: list[dict], wall: float) -> dict:
    """A level's row from its requests' {'text', 'tokens', 'latency'} and its wall time."""
    tokens, latency = sum(r["tokens"] for r in results), [r["latency"] for r in results]
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "latency_p50": float(np.percentile(latency, 50)),
        "latency_p99": float(np.percentile(latency, 99)),
        "texts": [r["text"] for r in results],
    }


def median_round(rounds: int, measure) -> dict:
    """The round with the median tokens/s of `rounds` runs of measure(); all rounds' tokens/s kept."""
    runs = sorted((measure() for _ in range(rounds)), key=lambda r: r["tokens_per_s"])
    return runs[len(runs) // 2] | {"rounds_tokens_per_s": [r["tokens_per_s"] for r in runs]}


def hf_model(workdir: str, init: str):
    """(transformers model, lmjax tokenizer) of what the server serves, or None where transformers cannot
    load it."""
    import torch
    import transformers
    from flax import nnx

    from lmjax.errors import InputError
    from lmjax.interop import hf
    from lmjax.training import pretrained

    if init:
        path = Path(pretrained.init_path(init))
        tok = pretrained.load(init).tokenizer
        kw = dict(gguf_file=path.name) if path.suffix == ".gguf" else {}
        directory = path.parent if path.suffix == ".gguf" else path
    else:
        config, graphdef, params, tok, _ = pretrained.load_run(workdir)
        directory, kw = tempfile.mkdtemp(prefix="hf-"), {}
        try:
            hf.save(nnx.merge(graphdef, params), config, directory)
        except InputError as e:
            print(f"transformers: skipped ({e})")
            return None
    model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32, **kw)
    return model.eval(), tok


def transformers_level(workdir: str, init: str, prompts: list[str], max_tokens: int) -> dict | None:
    """transformers' generate, greedy, one request at a time (after one unmeasured request)."""
    import torch

    loaded = hf_model(workdir, init)
    if loaded is None:
        return None
    model, tok = loaded

    def generate(prompt: str) -> list[int]:
        ids = torch.tensor([tok.encode(prompt)], dtype=torch.long)
        out = model.generate(
            ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=0
        )
        return out[0, ids.shape[1] :].tolist()

    results = []
    with torch.inference_mode():
        generate(prompts[0])
        start = time.perf_counter()
        for p in prompts:
            t0 = time.perf_counter()
            new = generate(p)
            results.append({"text": tok.decode(new), "tokens": len(new), "latency": time.perf_counter() - t0})
    return summary(1, results, time.perf_counter() - start)


def prompts_from(workdir: str, init: str, count: int, length: int) -> list[str]:
    """`count` different prompts of `length` characters from the validation text of the run (of the embedded
    Shakespeare corpus for an --init model)."""
    from lmjax import checkpoint
    from lmjax import config as config_lib
    from lmjax.data import mixture

    config = config_lib.base() if init else config_lib.from_saved(checkpoint.load_config(Path(workdir)))
    corpus = mixture.load_corpus(config.data)
    pieces = [corpus.validation[i][corpus.text_key] for i in range(min(len(corpus.validation), 50))]
    text = "".join(p.decode() if isinstance(p, bytes) else p for p in pieces)
    starts = np.linspace(0, len(text) - length - 1, count).astype(int)
    return [text[s : s + length] for s in starts]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a trained decoder run (e.g. make demo's)")
    parser.add_argument("--init", default="", help="serve finetune.init instead (e.g. smollm2-135m-instruct)")
    parser.add_argument("--max-len", type=int, default=0, help="serve.max_len (0: the model's)")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--requests", type=int, default=64, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--prompt-chars", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per level; the median is reported")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--quantize", default="", help="serve.quantize for the batched server")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", default="", help="write the figures as JSON here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    prompts = prompts_from(args.workdir, args.init, args.requests, args.prompt_chars)
    rows, common = {}, (args.workdir, args.init, f"--config.serve.max_len={args.max_len}")
    quantize = f"--config.serve.quantize={args.quantize}"
    batched = Server(*common, f"--config.serve.slots={max(levels)}", quantize)
    try:
        model = batched.health["model"]
        level(batched.url, model, prompts, max(levels), 2, args.timeout)  # compiles the prompts' shapes
        for clients in levels:
            rows[f"batched, {clients} clients"] = median_round(
                args.rounds,
                lambda c=clients: level(batched.url, model, prompts, c, args.max_tokens, args.timeout),
            )
    finally:
        assert batched.stop() == 0, "the server did not exit 0 on SIGTERM"
    serial = Server(*common, "--config.serve.slots=1", quantize)
    try:
        level(serial.url, model, prompts, 1, 2, args.timeout)
        rows["one at a time (1 slot, 1 client)"] = median_round(
            args.rounds, lambda: level(serial.url, model, prompts, 1, args.max_tokens, args.timeout)
        )
    finally:
        serial.stop()
    if not args.no_transformers:
        hf_row = transformers_level(args.workdir, args.init, prompts, args.max_tokens)
        if hf_row is not None:
            rows["transformers generate, one at a time"] = hf_row
    reference = rows[f"batched, {levels[0]} clients"]["texts"]
    baseline = rows["one at a time (1 slot, 1 client)"]["tokens_per_s"]
    print(f"{len(prompts)} requests x {args.max_tokens} tokens, prompts of {args.prompt_chars} characters")
    print(
        f"{'':40s} {'tokens/s':>9s} {'x serial':>9s} {'TTFT p50/p99 ms':>17s} "
        f"{'latency p50/p99 s':>18s} same text"
    )
    for name, r in rows.items():
        same = sum(a == b for a, b in zip(r["texts"], reference, strict=True))
        ttft = f"{r['ttft_p50'] * 1e3:.0f} / {r['ttft_p99'] * 1e3:.0f}" if "ttft_p50" in r else "-"
        print(
            f"{name:40s} {r['tokens_per_s']:9.0f} {r['tokens_per_s'] / baseline:9.2f} {ttft:>17s} "
            f"{r['latency_p50']:8.2f} / {r['latency_p99']:.2f} {same:4d}/{len(reference)}"
        )
        r["same_text_as_first_level"] = same
        if r["requests"] != len(prompts) or r["tokens"] != len(prompts) * args.max_tokens:
            print(f"  {name}: {r['requests']} answers, {r['tokens']} tokens (expected every request in full)")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
