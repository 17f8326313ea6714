"""all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes to the end, by lmjax and by transformers + PyTorch, side by
side: test accuracy and wall time.

  .venv/bin/python benchmarks/finetune_race.py --workdir=DIR [--arg ''] [--epochs 3] [--config.KEY=VALUE ...]
      [--skip-lmjax | --skip-reference]

lmjax runs the command a user runs, `python -m lmjax.main --config=experiments/configs/finetune_minilm.py:ARG`
(plus any --config.* overrides), timed from launch to exit: imports, loading the weights, building the
dataset, compiling, training, evaluating validation and test. Its accuracy is its results.json.

The reference is what a transformers user writes for the same recipe (the config lmjax.main builds from the
same command line, overrides included): the same directory read by `BertModel`, mean pooling, dropout and a
linear head; the texts of the same splits tokenised by the model's fast tokenizer (truncated at the config's
task.seq_len), shuffled every epoch, batches of task.batch_size padded to their longest text
(DataCollatorWithPadding's way; lmjax packs each batch's texts into shared rows, task.pack, or pads them to
task.seq_len or a multiple of task.trim_multiple), torch's fused AdamW with lmjax's groups (head at
optim.head_learning_rate, weight decay on the backbone's matrices only), the same warm-up and cosine decay,
clipping at optim.grad_clip, eager (torch.compile is slower for this model on a 2-core CPU:
benchmarks/RESULTS.md). It trains --epochs epochs and is scored on validation and test after each, so that
the table gives the time at which it first reaches lmjax's test accuracy; evaluation time counts in its
clock as lmjax's evaluations count in lmjax's.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmjax.tasks import resolve as task_resolve  # noqa: E402
from lmjax.training import pretrained  # noqa: E402

CONFIG = "experiments/configs/finetune_minilm.py"


def run_lmjax(workdir: Path, arg: str, overrides: list[str]) -> dict:
    """Launches the lmjax command; returns its results plus wall seconds."""
    if workdir.exists():
        sys.exit(f"{workdir} exists: give a new --workdir (a finished run would only be re-read)")
    command = [sys.executable, "-m", "lmjax.main", f"--config={CONFIG}:{arg}", f"--workdir={workdir}"]
    start = time.perf_counter()
    subprocess.run(command + overrides, cwd=ROOT, check=True)
    seconds = time.perf_counter() - start
    return json.loads((workdir / "results.json").read_text()) | {"wall_seconds": seconds}


def lmjax_config(arg: str, overrides: list[str]):
    """The config lmjax.main builds from the same --config and overrides."""
    argv, values = [sys.argv[0], f"--config={ROOT / CONFIG}:{arg}", *overrides], flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def unsupported(config) -> str | None:
    """A setting of the recipe that the reference does not write (it would then train another recipe)."""
    checks = {
        "optim.freeze": config.optim.freeze,
        "optim.layer_decay": config.optim.layer_decay != 1.0,
        "optim.schedule": config.optim.schedule != "cosine",
        "finetune.l2sp": config.finetune.l2sp,
        "finetune.pretrain_lambda": config.finetune.pretrain_lambda,
    }
    return next((name for name, used in checks.items() if used), None)


def split_texts(config) -> dict[str, tuple[list[str], list[int]]]:
    task, _ = task_resolve.task_and_head(config)
    out = {}
    for split, source in task.sources.items():
        rows = [source[i] for i in range(len(source))]
        texts = [r["text"].decode() if isinstance(r["text"], bytes) else r["text"] for r in rows]
        out[split] = (texts, [int(r["label"]) for r in rows])
    return out


def run_reference(config, epochs: int, seed: int) -> list[dict]:
    """Trains the transformers + PyTorch reference; one row per epoch (validation / test accuracy, seconds
    since its start)."""
    start = time.perf_counter()
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.manual_seed(seed)
    model_dir = pretrained.init_path(config.finetune.init)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = split_texts(config)
    encoded = {
        split: (tokenizer(texts, truncation=True, max_length=config.task.seq_len)["input_ids"], labels)
        for split, (texts, labels) in data.items()
    }

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel.from_pretrained(model_dir, add_pooling_layer=False)
            self.dropout = torch.nn.Dropout(config.task.head_dropout)
            self.head = torch.nn.Linear(self.bert.config.hidden_size, 2)

        def forward(self, ids, mask):
            h = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            return self.head(self.dropout((h * m).sum(1) / m.sum(1).clamp(min=1.0)))

    model = Classifier()
    for module in model.bert.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = config.model.dropout
    opt_config = config.optim
    decay = [p for n, p in model.bert.named_parameters() if p.ndim >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in model.bert.named_parameters() if not (p.ndim >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": opt_config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": list(model.head.parameters()), "weight_decay": 0.0, "head": True},
        ],
        lr=opt_config.learning_rate,
        betas=(opt_config.b1, opt_config.b2),
        eps=opt_config.eps,
        fused=True,
    )
    ids, labels = encoded["train"]
    batch = config.task.batch_size
    total = epochs * math.ceil(len(ids) / batch)
    warmup = opt_config.warmup_steps

    def factor(step: int) -> float:  # optax.warmup_cosine_decay_schedule to min_learning_rate 0
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / (total - warmup)))

    def padded(rows: list[list[int]]):
        width = max(len(r) for r in rows)
        tensor = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            tensor[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
        return tensor, mask

    def accuracy(split: str) -> float:
        model.eval()
        split_ids, split_labels = encoded[split]
        right = 0
        with torch.no_grad():
            for i in range(0, len(split_ids), 256):
                logits = model(*padded(split_ids[i : i + 256]))
                right += int((logits.argmax(-1) == torch.tensor(split_labels[i : i + 256])).sum())
        model.train()
        return right / len(split_ids)

    rows, step = [], 0
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(ids), generator=generator).tolist()
        for i in range(0, len(order), batch):
            chosen = order[i : i + batch]
            for group in opt.param_groups:
                peak = opt_config.head_learning_rate if group.get("head") else opt_config.learning_rate
                group["lr"] = (peak or opt_config.learning_rate) * factor(step)
            logits = model(*padded([ids[j] for j in chosen]))
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor([labels[j] for j in chosen]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), opt_config.grad_clip)
            opt.step()
            step += 1
        row = {"epoch": epoch, "step": step, "validation": accuracy("validation"), "test": accuracy("test")}
        rows.append(row | {"seconds": time.perf_counter() - start})
        print(f"reference {json.dumps(rows[-1])}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a new directory for the lmjax run")
    parser.add_argument("--arg", default="", help="finetune_minilm.py's argument")
    parser.add_argument("--epochs", type=int, default=3, help="the reference's epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-lmjax", action="store_true", help="run the reference alone")
    parser.add_argument("--skip-reference", action="store_true", help="run lmjax alone")
    args, overrides = parser.parse_known_args()
    if any(not o.startswith("--config.") for o in overrides):
        parser.error(f"only --config.* overrides pass through to lmjax, not {overrides}")
    try:
        config = lmjax_config(args.arg, overrides)
    except (flags.Error, AttributeError) as error:  # an unknown key or a value of the wrong type
        parser.error(f"{' '.join(overrides)}: {error!r} (the keys are lmjax/config.py's)")
    if not args.skip_reference and (setting := unsupported(config)):
        parser.error(f"the reference does not implement {setting}; drop it or pass --skip-reference")
    ours = None if args.skip_lmjax else run_lmjax(Path(args.workdir).resolve(), args.arg, overrides)
    reference = [] if args.skip_reference else run_reference(config, args.epochs, args.seed)
    print("\n| run | validation accuracy | test accuracy | wall time (s) |\n|---|---|---|---|")
    if ours:
        print(
            f"| lmjax `{CONFIG}:{args.arg}` {' '.join(overrides)} | {ours['validation/accuracy']:.2%} | "
            f"{ours['test/accuracy']:.2%} | {ours['wall_seconds']:,.0f} |"
        )
    for row in reference:
        print(
            f"| transformers + PyTorch, epoch {row['epoch']} ({row['step']} steps) | "
            f"{row['validation']:.2%} | {row['test']:.2%} | {row['seconds']:,.0f} |"
        )
    if ours and reference:
        reached = [r for r in reference if r["test"] >= ours["test/accuracy"]]
        print(
            f"\nthe reference reaches lmjax's test accuracy after {reached[0]['seconds']:,.0f} s "
            f"(lmjax: {ours['wall_seconds']:,.0f} s)"
            if reached
            else f"\nthe reference does not reach lmjax's test accuracy in {args.epochs} epochs"
        )


if __name__ == "__main__":
    main()
