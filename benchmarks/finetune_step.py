"""The fine-tuning step of all-MiniLM-L6-v2 on Rotten Tomatoes batches: lmjax against Hugging Face
`transformers` + PyTorch on the same texts, side by side.

  .venv/bin/python benchmarks/finetune_step.py [--steps 20 --rounds 3 --batch-size 16]

lmjax runs experiments/configs/finetune_minilm.py's step (mean pooling, dropout 0.1, classifier head, AdamW
with its layer-wise groups, clipping) on the same --batch-size texts a step shaped two ways: packed into
shared rows (task.pack, the config's batching) and padded, each batch cut to a multiple of 16 tokens
(task.trim_multiple=16, the batching before packing). The reference is the same model read by transformers'
`BertModel` from the same directory, mean-pooled under the same dropout and linear head, with torch's AdamW
(fused) and the same clipping, eager and under `torch.compile`, on each batch padded to its longest text
(what transformers' DataCollatorWithPadding gives). A round times --steps steps after warm-up (the loss
read every step, as a training loop logs it); figures are medians over rounds, ratios the median of the
rounds' ratios.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from experiments.configs import finetune_minilm  # noqa: E402
from lmjax import host
from lmjax.tasks import pipeline as task_pipeline  # noqa: E402
from lmjax.tasks import resolve as task_resolve
from lmjax.training import (
    finetune,
    pretrained,  # noqa: E402
    start,
)


def lmjax_step(config, task, head: str, pre: pretrained.Pretrained, batches: list[dict]):
    """A function running len(batches) lmjax steps (the loss read after each) of the resolved config."""
    engine = finetune.setup(config, task.num_labels, head)
    state = engine.init(jax.random.PRNGKey(0))
    state = state.replace(params=start.load_backbone(state.params, pre.params()))
    device_batches = [engine.device_batch(b) for b in batches]
    box = {"state": state}

    def run() -> None:
        for b in device_batches:
            box["state"], metrics = engine.train_step(box["state"], b, None, None)
            float(metrics["loss"])

    return run


def torch_step(model_dir: Path, batches: list[dict], compiled: bool, lr: float):
    import torch
    from transformers import BertModel

    torch.manual_seed(0)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(model_dir, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, 2)

        def forward(self, ids, mask, labels):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)
            return torch.nn.functional.cross_entropy(self.head(self.dropout(pooled)), labels)

    model = Classifier().train()
    step_model = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, fused=True)
    tensors = [
        (
            torch.from_numpy(b["inputs"].astype(np.int64)),
            torch.from_numpy(b["input_mask"].astype(np.int64)),
            torch.from_numpy(b["labels"].astype(np.int64)),
        )
        for b in batches
    ]

    def run() -> None:
        for ids, mask, labels in tensors:
            loss = step_model(ids, mask, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss.item()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="texts a batch (the config's: 16)")
    args = parser.parse_args()
    host.tune_allocator()
    config = finetune_minilm.get_config("")
    config.task.update(batch_size=args.batch_size, pack=False, trim_multiple=0)  # whole rows, shaped below
    config.mesh.update(data=1, fsdp=1, tensor=1)
    workdir = Path(tempfile.mkdtemp(prefix="lmjax-ft-bench-"))
    resolved, tok, pre, _ = start.resolve_finetuning(config, workdir)
    task, head = task_resolve.task_and_head(resolved)
    L = resolved.task.seq_len
    stream = task_pipeline.train_dataset(task, tok, head=head, seq_len=L, batch_size=args.batch_size, seed=0)
    padded = list(itertools.islice(iter(stream), args.steps))
    packed = [task_pipeline.PackTexts(tok.pad_id).map(b) for b in padded]
    trimmed = [task_pipeline.TrimPadding(L, 16, head).map(b) for b in padded]
    longest = [task_pipeline.TrimPadding(L, 1, head).map(b) for b in padded]  # each batch to its longest text
    model_dir = pretrained.init_path(config.finetune.init)
    runs = {  # name: (its batches, a function running them)
        "lmjax, packed rows (task.pack)": (packed, lmjax_step(resolved, task, head, pre, packed)),
        "lmjax, padded to a multiple of 16": (trimmed, lmjax_step(resolved, task, head, pre, trimmed)),
        "transformers + PyTorch eager": (longest, torch_step(model_dir, longest, False, 1e-4)),
        "transformers + PyTorch, torch.compile": (longest, torch_step(model_dir, longest, True, 1e-4)),
    }
    tokens = {name: np.mean([b["inputs"].size for b in batches]) for name, (batches, _) in runs.items()}
    runners = {name: run for name, (_, run) in runs.items()}
    for run in runners.values():  # warm-up: compilation (lmjax, torch.compile) and allocator
        run()
    seconds = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            began = time.perf_counter()
            run()
            seconds[name].append((time.perf_counter() - began) / args.steps)
    first = next(iter(runners))
    print(f"\n{args.batch_size} texts a step; median of {args.rounds} rounds of {args.steps} steps")
    print("| step | tokens / step | ms / step | texts/s | lmjax packed speed-up |\n|---|---|---|---|---|")
    for name, times in seconds.items():
        ratio = statistics.median(t / m for t, m in zip(times, seconds[first], strict=True))
        print(
            f"| {name} | {tokens[name]:.0f} | {statistics.median(times) * 1e3:.1f} | "
            f"{args.batch_size / statistics.median(times):,.1f} | {ratio:.2f}x |"
        )


if __name__ == "__main__":
    main()
