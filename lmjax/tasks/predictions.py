"""Predictions of a task from the user's files, in the file's own terms, and their metrics from the libraries
the field reports them with (each metric is recomputable from predictions/<split>.jsonl):

  classification  the label as given          accuracy, macro_f1 (scikit-learn)
  regression      the score                   pearson, spearman (scipy), mse (scikit-learn)
  tokens          one tag a token             token_accuracy (scikit-learn); where every tag is O, B-X or
                  (null: cut off at seq_len)  I-X, entity_precision / recall / f1 (seqeval, CoNLL's
                                              entity-level scoring; a null tag counts as O)
  span_qa         the answer's text (reference: exact_match, f1: SQuAD v1.1's evaluate-v1.1.py (its answer
                  the gold answers)           normalisation; the best over a row's gold answers), 0 to 1
  seq2seq, chat   the generated text          bleu, chrf (sacrebleu's corpus scores, 0 to 100), rouge1,
                                              rouge2, rougeL (rouge-score's mean F-measure with stemming,
                                              0 to 1), exact_match (after stripping whitespace, 0 to 1)
"""

from __future__ import annotations

import collections
import json
import re
import string

import numpy as np
from etils import epath

from lmjax.tasks import pipeline as task_pipeline
from lmjax.tasks import qa_windows
from lmjax.tasks.catalog import Task

PREDICTIONS_DIR = "predictions"
PUNCTUATION = frozenset(string.punctuation)


def predict(task: Task, encode: task_pipeline.Encode, example: dict, outputs: dict):
    """One example's prediction from its row of the model's outputs (numpy); span_qa: (score, text) of a
    window (qa_windows.by_row picks a row's)."""
    if task.kind == "span_qa":
        return qa_windows.best_span(example, outputs["start_logits"], outputs["end_logits"])
    if task.kind == "regression":
        return float(outputs["scores"])
    if task.kind == "classification":
        return task.values[int(np.argmax(outputs["logits"]))]
    tags_L = np.argmax(outputs["logits"], -1)
    _, _, at = encode.words(example["tokens"])
    return [None if a is None else task.values[int(tags_L[a])] for a in at]


def is_bio(tags) -> bool:
    return all(t == "O" or (isinstance(t, str) and t[:2] in ("B-", "I-")) for t in tags)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's normalize_answer: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def squad_f1(prediction: str, gold: str) -> float:
    """SQuAD v1.1's f1_score: the F1 of the normalised words that prediction and gold share."""
    predicted, true = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((collections.Counter(predicted) & collections.Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = list(zip(predictions, references, strict=True))
    rouge = [scorer.score(r, p) for p, r in pairs]
    out = {
        "bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
        "chrf": sacrebleu.corpus_chrf(predictions, [references]).score,
    }
    out |= {k: np.mean([x[k].fmeasure for x in rouge]) for k in ("rouge1", "rouge2", "rougeL")}
    return out | {"exact_match": np.mean([p.strip() == r.strip() for p, r in pairs])}


def score(kind: str, predictions: list, references: list) -> dict[str, float]:
    """The kind's metrics of predictions against references (both in the file's terms)."""
    from sklearn import metrics

    if kind in ("seq2seq", "chat"):
        return {k: float(v) for k, v in generation_scores(predictions, references).items()}
    if kind == "span_qa":
        pairs = list(zip(predictions, references, strict=True))
        return {
            "exact_match": float(
                np.mean([max(squad_normalize(p) == squad_normalize(g) for g in golds) for p, golds in pairs])
            ),
            "f1": float(np.mean([max(squad_f1(p, g) for g in golds) for p, golds in pairs])),
        }
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
