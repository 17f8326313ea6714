"""Extractive QA over contexts longer than a row (task.kind='span_qa'), as BERT's run_squad.py reads them:
each row's context is cut into windows of the tokens that fit beside its question, window starts doc_stride
tokens apart, every window an example of its own ([CLS] question [SEP] context piece [SEP]). A window trains
on the first answer when it holds that answer whole, else on [CLS] (position 0). A row's prediction is the
best span over all its windows (start + end logit), read back from the context's characters.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lmjax.data.tokenizers import CLS, SEP, Tokenizer
from lmjax.errors import InputError
from lmjax.tasks.catalog import Task

MAX_ANSWER = 30  # tokens in a predicted span, as run_squad.py's max_answer_length


def expand(task: Task, tok: Tokenizer, seq_len: int, doc_stride: int) -> Task:
    """A span_qa task from files with each split's rows cut into windows (other tasks as they are)."""
    if task.kind != "span_qa":
        return task
    if not hasattr(tok, "encode_offsets"):
        raise InputError(f"span QA reads answers by character offsets, which a {tok.kind} tokenizer lacks")
    try:
        cls_id, sep_id = tok.special_id(CLS), tok.special_id(SEP)
    except (InputError, ValueError):
        raise InputError("span QA needs a tokenizer with [CLS] and [SEP] (a BERT-style encoder's)") from None
    sources = {
        split: [
            w for i, row in enumerate(rows) for w in windows(i, row, tok, seq_len, doc_stride, cls_id, sep_id)
        ]
        for split, rows in task.sources.items()
    }
    return dataclasses.replace(task, sources=sources)


def windows(
    row_index: int, row: dict, tok: Tokenizer, seq_len: int, doc_stride: int, cls_id: int, sep_id: int
) -> list[dict]:
    """The windows of one row: ids and segments (unpadded), the answer's start and end position (0, 0: not in
    this window), where the context starts (`offset`) and each context token's characters (`spans`)."""
    question = tok.encode(row["question"])[: seq_len // 3]
    context_ids, context_spans = tok.encode_offsets(row["context"])
    room = seq_len - len(question) - 3
    step = doc_stride or max(room // 2, 1)
    first = row["answers"]["answer_start"][0]
    last = first + len(row["answers"]["text"][0])
    answer = np.flatnonzero((context_spans[:, 1] > first) & (context_spans[:, 0] < last))
    offset, out, begin = len(question) + 2, [], 0
    while True:
        n = min(room, len(context_ids) - begin)
        ids = np.concatenate([[cls_id], question, [sep_id], context_ids[begin : begin + n], [sep_id]])
        segments = np.concatenate([np.zeros(offset, np.int32), np.ones(n + 1, np.int32)])
        start = end = 0
        if answer.size and answer[0] >= begin and answer[-1] < begin + n:
            start, end = offset + answer[0] - begin, offset + answer[-1] - begin
        out.append(
            {
                "window": np.asarray(ids, np.int32),
                "segments": segments,
                "start": np.int32(start),
                "end": np.int32(end),
                "offset": offset,
                "spans": context_spans[begin : begin + n],
                "context": row["context"],
                "row": row_index,
                "reference": row["reference"],
            }
        )
        if begin + n >= len(context_ids):
            return out
        begin += min(step, n)


def best_span(window: dict, start_L: np.ndarray, end_L: np.ndarray) -> tuple[float, str]:
    """(start + end logit, answer text) of the best span of context tokens in one window."""
    offset, spans = window["offset"], window["spans"]
    if not len(spans):
        return -np.inf, ""
    s, e = start_L[offset : offset + len(spans)], end_L[offset : offset + len(spans)]
    gap = np.arange(len(spans))[None, :] - np.arange(len(spans))[:, None]  # end - start
    score = np.where((gap >= 0) & (gap < MAX_ANSWER), s[:, None] + e[None, :], -np.inf)
    i, j = np.unravel_index(np.argmax(score), score.shape)
    return float(score[i, j]), window["context"][spans[i][0] : spans[j][1]].strip()


def by_row(source: list, predictions: list) -> tuple[list, list]:
    """(predictions, references) a row: each row's best window prediction ((score, text) a window), or the
    predictions as they are for tasks without windows."""
    if not source or "window" not in source[0]:
        return predictions, [example["reference"] for example in source]
    best: dict[int, tuple[float, str]] = {}
    references = {}
    for window, (score, text) in zip(source, predictions, strict=True):
        row = window["row"]
        references[row] = window["reference"]
        if row not in best or score > best[row][0]:
            best[row] = (score, text)
    return [best[r][1] for r in sorted(best)], [references[r] for r in sorted(best)]
