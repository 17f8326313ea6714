"""A PyTorch reference of lmjax's GPT (learned positions) and optimizer, for side-by-side throughput.

Written for the benchmark, in nanoGPT's style: pre-LN blocks, `F.scaled_dot_product_attention`,
GELU (tanh) MLP, tied head, AdamW with decoupled weight decay on matrices and global-norm clipping, on as many
CPU threads as the machine has: eager with the per-tensor AdamW loop, or (compiled=True) the model under
`torch.compile` with the fused AdamW, what a PyTorch user tuning for speed runs. torch is optional:
`pip install torch`. `Process` runs it in a process of its own (what benchmarks/throughput.py --compare-torch
does).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, d: int, heads: int, bias: bool):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d, bias=bias), nn.LayerNorm(d, bias=bias)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=bias), nn.Linear(d, d, bias=bias)
        self.up, self.down = nn.Linear(d, 4 * d, bias=bias), nn.Linear(4 * d, d, bias=bias)

    def forward(self, x):
        B, L, D = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(D, dim=2)
        q, k, v = (t.view(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(B, L, D))
        return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab: int, layers: int, heads: int, d: int, max_len: int, bias: bool = False):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d, bias=bias)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, tokens, targets):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def measure(
    *,
    vocab: int,
    layers: int,
    heads: int,
    d: int,
    seq_len: int,
    batch: int,
    steps: int,
    warmup: int,
    compiled: bool = False,
    seed: int = 0,
) -> dict:
    """Mean training-step time over `steps` steps after `warmup` (forward, backward, clip, AdamW; the loss
    read each step, as a training loop logs it) on random tokens; compiled: torch.compile + fused AdamW
    (compilation happens in the warm-up steps)."""
    torch.manual_seed(seed)
    model = GPT(vocab, layers, heads, d, seq_len)
    step_model = torch.compile(model) if compiled else model
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.99),
        fused=compiled,
    )
    tokens = torch.randint(vocab, (steps + warmup, batch, seq_len + 1))
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        loss = step_model(tokens[i, :, :-1], tokens[i, :, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()
    step_s = (time.perf_counter() - start) / steps
    return {
        "step_ms": step_s * 1e3,
        "tokens_per_s": batch * seq_len / step_s,
        "threads": torch.get_num_threads(),
        "compiled": compiled,
        "version": torch.__version__,
    }


class Process:
    """The reference in a process of its own, measured on request: the caller's process state (XLA's threads)
    cannot touch PyTorch's timings, and PyTorch's threads idle while the caller measures. keep_freed_memory
    gives it lmjax's malloc settings (lmjax/host.py), so that both sides run with the same allocator."""

    def __init__(self, keep_freed_memory: bool = True):
        import multiprocessing

        self._conn, child = multiprocessing.Pipe()
        self._proc = multiprocessing.get_context("spawn").Process(
            target=_serve, args=(child, keep_freed_memory), daemon=True
        )
        self._proc.start()

    def measure(self, **kwargs) -> dict:
        self._conn.send(kwargs)
        result = self._conn.recv()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join()


def _serve(conn, keep_freed_memory: bool) -> None:
    if keep_freed_memory:
        from lmjax import host

        host.keep_freed_memory()
    while (kwargs := conn.recv()) is not None:
        try:
            conn.send(measure(**kwargs))
        except Exception as e:  # noqa: BLE001 - handed to the caller, which raises it
            conn.send(e)


if __name__ == "__main__":
    for compiled in (False, True):
        print(
            measure(
                vocab=65,
                layers=4,
                heads=4,
                d=128,
                seq_len=64,
                batch=12,
                steps=50,
                warmup=10,
                compiled=compiled,
            )
        )
