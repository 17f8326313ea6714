"""Predictions of a task from the user's files, in the file's own terms, and their metrics from the libraries
the field reports them with (each metric is recomputable from predictions/<split>.jsonl):

  classification  the label as given          accuracy, macro_f1 (scikit-learn)
  regression      the score                   pearson, spearman (scipy), mse (scikit-learn)
  tokens          one tag a token             token_accuracy (scikit-learn); where every tag is O, B-X or
                  (null: cut off at seq_len)  I-X, entity_precision / recall / f1 (seqeval, CoNLL's
                                              entity-level scoring; a null tag counts as O)
"""

from __future__ import annotations

import json

import numpy as np
from etils import epath

from lmjax.data import task_pipeline
from lmjax.data.tasks import Task

PREDICTIONS_DIR = "predictions"


def predict(task: Task, encode: task_pipeline.Encode, example: dict, outputs: dict):
    """One example's prediction from its row of the model's outputs (numpy)."""
    if task.kind == "regression":
        return float(outputs["scores"])
    if task.kind == "classification":
        return task.values[int(np.argmax(outputs["logits"]))]
    tags_L = np.argmax(outputs["logits"], -1)
    _, _, at = encode.words(example["tokens"])
    return [None if a is None else task.values[int(tags_L[a])] for a in at]


def is_bio(tags) -> bool:
    return all(t == "O" or (isinstance(t, str) and t[:2] in ("B-", "I-")) for t in tags)


def score(kind: str, predictions: list, references: list) -> dict[str, float]:
    """The kind's metrics of predictions against references (both in the file's terms)."""
    from sklearn import metrics

    if kind == "classification":
        return {
            "accuracy": metrics.accuracy_score(references, predictions),
            "macro_f1": metrics.f1_score(references, predictions, average="macro"),
        }
    if kind == "regression":
        from scipy import stats

        return {
            "pearson": float(stats.pearsonr(predictions, references).statistic),
            "spearman": float(stats.spearmanr(predictions, references).statistic),
            "mse": metrics.mean_squared_error(references, predictions),
        }
    flat_true = [t for tags in references for t in tags]
    flat_pred = [repr(t) if t is None else t for tags in predictions for t in tags]  # None: always wrong
    out = {"token_accuracy": metrics.accuracy_score(flat_true, flat_pred)}
    if is_bio(flat_true):
        from seqeval import metrics as seqeval

        predicted = [["O" if t is None else t for t in tags] for tags in predictions]
        out |= {
            f"entity_{name}": f(references, predicted)
            for name, f in (
                ("precision", seqeval.precision_score),
                ("recall", seqeval.recall_score),
                ("f1", seqeval.f1_score),
            )
        }
    return {k: float(v) for k, v in out.items()}


def write(workdir: epath.Path, split: str, predictions: list, references: list) -> None:
    """predictions/<split>.jsonl: one line a row of the split's file, in its order."""
    directory = epath.Path(workdir) / PREDICTIONS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    lines = (
        json.dumps({"prediction": p, "reference": r}) + "\n"
        for p, r in zip(predictions, references, strict=True)
    )
    (directory / f"{split}.jsonl").write_text("".join(lines))
