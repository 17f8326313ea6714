"""Where numbers go: console progress, TensorBoard events, a metrics JSONL, a loss-curve PNG; and the
training FLOPs of every model family (for throughput and MFU)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import tqdm

JSONL, PLOT, TB_DIR = "metrics.jsonl", "loss.png", "tensorboard"


class Writer:
    """Scalars to TensorBoard and to a JSONL (one line per logging step); text samples to both."""

    def __init__(self, workdir: Path, resume_step: int = 0, enabled: bool = True):
        self.path = Path(workdir) / JSONL
        self.enabled = enabled
        if not enabled:
            return
        if self.path.exists():  # a resumed run redoes the steps after its checkpoint: drop their old lines
            lines = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
            self.path.write_text("".join(l + "\n" for l in lines))
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(str(Path(workdir) / TB_DIR))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")

    def text(self, step: int, name: str, value: str) -> None:
        if not self.enabled:
            return
        self.tb.add_text(name, value, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, name: value}) + "\n")

    def close(self) -> None:
        if self.enabled:
            self.tb.close()


def read_jsonl(workdir: Path) -> list[dict]:
    path = Path(workdir) / JSONL
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def plot_losses(workdir: Path) -> Path:
    """Train and validation loss against step, from the JSONL, as loss.png in the workdir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(workdir)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train/loss", "train"), ("eval/loss", "validation")):
        pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if pts:
            ax.plot(*zip(*pts), label=label, marker="o" if key.startswith("eval") else None, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(workdir) / PLOT
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


class Progress:
    """A tqdm bar showing step, loss, tokens/s and the ETA."""

    def __init__(self, start: int, total: int, enabled: bool = True):
        self.bar = tqdm.tqdm(total=total, initial=start, disable=not enabled, unit="step", dynamic_ncols=True,
                             mininterval=1.0, smoothing=0.1)

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.bar.set_postfix_str(f"loss={loss:.4f} tok/s={tokens_per_s:,.0f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


def train_flops(model, seq_len: int, target_len: int = 0) -> tuple[float, int]:
    """(training FLOPs, tokens) per example for a model config: 6 x matmul parameters x the tokens they
    see (forward 2, backward 4; PaLM appendix B) + 12 x attention width x query x key lengths per layer
    (the QK^T and AV products, counted without causal savings). Embedding lookups are free; the output
    head (V x D) is a matmul. With A = heads x head size, m = 3 for gated MLPs else 2:

      decoder          6·T·(L·(4·D·A + m·D·F) + D·V) + 12·L·A·T²
      encoder          6·T·(L·(4·D·A + m·D·F) + D·V + D²) + 12·L·A·T²        (D²: the MLM transform)
      encoder-decoder  6·[S·Le·(4DA + mDF) + T·Ld·(6DA + mDF) + S·Ld·2DA + T·D·V]
                       + 12·A·(Le·S² + Ld·T² + Ld·T·S)                 (S inputs, T = target_len targets)
    """
    D, F, V = model.d_model, model.d_ff or 4 * model.d_model, model.vocab_size
    A = model.num_heads * (model.head_dim or model.d_model // model.num_heads)
    layer = 4 * D * A + (3 if model.activation in ("swiglu", "geglu") else 2) * D * F
    if model.family == "encoder_decoder":
        S, T = seq_len, target_len
        Le, Ld = model.num_layers, model.num_decoder_layers or model.num_layers
        matmul = S * Le * layer + T * Ld * (layer + 2 * D * A) + S * Ld * 2 * D * A + T * D * V
        return 6.0 * matmul + 12.0 * A * (Le * S * S + Ld * T * T + Ld * T * S), S + T
    T, L = seq_len, model.num_layers
    head = D * V + (D * D if model.family == "encoder" else 0)
    return 6.0 * T * (L * layer + head) + 12.0 * L * A * T * T, T
