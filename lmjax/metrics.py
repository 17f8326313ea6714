"""Where numbers go: console progress, TensorBoard events, a metrics JSONL, a loss-curve PNG; and the
training FLOPs of every model family (for throughput and MFU)."""

from __future__ import annotations

import io
import json
import math
import os
import sys
import time

import tqdm
from etils import epath

JSONL, PLOT, TB_DIR = "metrics.jsonl", "loss.png", "tensorboard"


class Writer:
    """Scalars to TensorBoard and to a JSONL (one line per logging step); text samples to both.

    Objects in a bucket cannot be appended to, so the JSONL is rewritten whole, at most every FLUSH_SECONDS
    and on close (and `flush`); a resumed run first drops the lines of the steps after its checkpoint.
    """

    FLUSH_SECONDS = 10.0

    def __init__(self, workdir: epath.PathLike, resume_step: int = 0, enabled: bool = True):
        self.path = epath.Path(workdir) / JSONL
        self.enabled, self.lines, self.flushed = enabled, [], time.monotonic()
        if not enabled:
            return
        if self.path.exists():  # a resumed run redoes the steps after its checkpoint: drop their old lines
            self.lines = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= resume_step
            ]
            self.flush()
        from tensorboardX import SummaryWriter

        _register_bucket_writer()
        self.tb = SummaryWriter(os.fspath(epath.Path(workdir) / TB_DIR))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for k, v in values.items():
            self.tb.add_scalar(k, v, step)
        self._add({"step": step, **{k: float(v) for k, v in values.items()}})

    def text(self, step: int, name: str, value: str) -> None:
        if not self.enabled:
            return
        self.tb.add_text(name, value, step)
        self._add({"step": step, name: value})

    def _add(self, row: dict) -> None:
        self.lines.append(json.dumps(row))
        if time.monotonic() - self.flushed > self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.enabled:
            self.path.write_text("".join(line + "\n" for line in self.lines))
            self.flushed = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self.flush()
            self.tb.close()


class _BucketEventFile:
    """A TensorBoard event file in a bucket, through epath: buffered, the whole object rewritten on flush."""

    def __init__(self, path: str):
        self.path, self.buffer, self.written = epath.Path(path), io.BytesIO(), 0

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        if self.buffer.tell() != self.written:
            self.path.write_bytes(self.buffer.getvalue())
            self.written = self.buffer.tell()

    def close(self) -> None:
        self.flush()


class _BucketEventFiles:
    def open(self, path: str) -> _BucketEventFile:
        return _BucketEventFile(path)

    def directory_check(self, path: str) -> None:
        pass  # buckets have no directories to create


def _register_bucket_writer() -> None:
    """tensorboardX writes gs:// through google-cloud-storage; lmjax's buckets go through epath instead."""
    from tensorboardX import record_writer

    record_writer.register_writer_factory("gs", _BucketEventFiles())


def read_jsonl(workdir: epath.PathLike) -> list[dict]:
    path = epath.Path(workdir) / JSONL
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # read while a live run rewrites the file: its last line is cut
        lines.pop()
    return [json.loads(line) for line in lines if line.strip()]


def plot_losses(workdir: epath.PathLike) -> epath.Path:
    """Train and validation loss against step, from the JSONL, as loss.png in the workdir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(workdir)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("train/loss", "train"), ("eval/loss", "validation")):
        pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        if pts:
            ax.plot(
                *zip(*pts, strict=True),
                label=label,
                marker="o" if key.startswith("eval") else None,
                markersize=3,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    plt.close(fig)
    out = epath.Path(workdir) / PLOT
    out.write_bytes(png.getvalue())
    return out


class Progress:
    """Step, loss, tokens/s and the ETA: a tqdm bar when stderr is a terminal; elsewhere (nohup, a log file,
    a notebook) one timestamped line per logging step, without carriage returns. Messages go to stdout."""

    def __init__(self, start: int, total: int, enabled: bool = True):
        self.enabled, self.start, self.total = enabled, start, total
        self.bar = (
            tqdm.tqdm(
                total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0, smoothing=0.1
            )
            if enabled and sys.stderr.isatty()
            else None
        )
        self.started = time.monotonic()

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f"loss={loss:.4f} tok/s={tokens_per_s:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.enabled:
            elapsed = time.monotonic() - self.started
            left = elapsed / max(step - self.start, 1) * (self.total - step)
            self.write(
                f"step {step}/{self.total} loss={loss:.4f} tok/s={tokens_per_s:,.0f} "
                f"elapsed {_duration(elapsed)} eta {_duration(left)}"
            )

    def write(self, message: str) -> None:
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(time.strftime("%Y-%m-%d %H:%M:%S ") + message, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


# Dense bf16 peak TFLOP/s of one chip, by a piece of jax's device_kind (the first piece found wins, so the
# more specific names come first). TPUs: Google Cloud's system-architecture pages; NVIDIA: the data sheets'
# dense (not 2:4 sparse) tensor-core figures, SXM parts unless the kind names PCIe.
PEAK_TFLOPS = (
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v6e", 918.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),  # v5p reports itself as 'TPU v5'
    ("TPU v4", 275.0),
    ("GB200", 2500.0),
    ("B200", 2250.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("H800", 989.4),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("V100", 125.0),
)


def peak_tflops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak TFLOP/s, or None for kinds the table does not know (CPUs)."""
    kind = device_kind.lower()
    return next((peak for name, peak in PEAK_TFLOPS if name.lower() in kind), None)


def train_flops(model, seq_len: int, target_len: int = 0) -> tuple[float, int]:
    """(training FLOPs, tokens) per example for a model config: 6 x matmul parameters x the tokens they
    see (forward 2, backward 4; PaLM appendix B) + 12 x attention width x query x key lengths per layer
    (the QK^T and AV products, counted without causal savings). Embedding lookups are free; the output
    head (V x D) is a matmul. With A = heads x head size, m = 3 for gated MLPs else 2 (with grouped-query
    attention the K and V projections count 2·D·A_kv instead of 2·D·A, A_kv = K/V heads x head size):

      decoder          6·T·(L·(4·D·A + m·D·F) + D·V) + 12·L·A·T²
      encoder          6·T·(L·(4·D·A + m·D·F) + D·V + D²) + 12·L·A·T²        (D²: the MLM transform)
      encoder-decoder  6·[S·Le·(4DA + mDF) + T·Ld·(6DA + mDF) + S·Ld·2DA + T·D·V]
                       + 12·A·(Le·S² + Ld·T² + Ld·T·S)                 (S inputs, T = target_len targets)
    """
    D, F, V = model.d_model, model.d_ff or 4 * model.d_model, model.vocab_size
    K = model.head_dim or model.d_model // model.num_heads
    A, A_kv = model.num_heads * K, (model.get("num_kv_heads", 0) or model.num_heads) * K
    layer = 2 * D * A + 2 * D * A_kv + (3 if model.activation in ("swiglu", "geglu") else 2) * D * F
    if model.family == "encoder_decoder":
        S, T = seq_len, target_len
        Le, Ld = model.num_layers, model.num_decoder_layers or model.num_layers
        matmul = S * Le * layer + T * Ld * (layer + 2 * D * A) + S * Ld * 2 * D * A_kv + T * D * V
        return 6.0 * matmul + 12.0 * A * (Le * S * S + Ld * T * T + Ld * T * S), S + T
    T, L = seq_len, model.num_layers
    head = D * V + (D * D if model.family == "encoder" else 0)
    return 6.0 * T * (L * layer + head) + 12.0 * L * A * T * T, T
