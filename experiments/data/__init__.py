"""Experiment data from packages as JSONL files for experiments/configs/finetune_files.py."""

from __future__ import annotations

import json
from pathlib import Path


def write_pairs(out: Path, rows: dict[str, list[dict]]) -> None:
    """Each split's {"source", "target"} rows to out/<split>.jsonl, and the copy-the-source baseline's
    scores printed (lmjax/tasks/predictions.py's: BLEU, chrF, ROUGE-L, exact match)."""
    from lmjax.tasks import predictions as task_metrics

    out.mkdir(parents=True, exist_ok=True)
    for split, split_rows in rows.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in split_rows)
        (out / f"{split}.jsonl").write_text(text, encoding="utf-8")
        sources, targets = [r["source"] for r in split_rows], [r["target"] for r in split_rows]
        copy = task_metrics.generation_scores(sources, targets)
        print(
            f"{split}: {len(split_rows)} pairs; copying the source: BLEU {copy['bleu']:.2f} chrF "
            f"{copy['chrf']:.2f} ROUGE-L {copy['rougeL']:.4f} exact match {copy['exact_match']:.4f}"
        )
