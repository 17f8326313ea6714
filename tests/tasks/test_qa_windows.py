"""Span QA over long contexts (lmjax/tasks/qa_windows.py): windows that overlap by doc_stride, an answer past
the first window labelled where it lies and read back from the context's characters, and a row's answer
chosen as the best span over its windows; EM and F1 as SQuAD v1.1's script computes them."""

import numpy as np
import pytest

from lmjax.data import tokenizers
from lmjax.tasks import pipeline as task_pipeline
from lmjax.tasks import predictions as task_metrics
from lmjax.tasks import qa_windows
from lmjax.tasks.catalog import Task, TaskSpec

WORDS = "the cat sat on a mat while dogs ran in park and birds sang near home".split()


@pytest.fixture(scope="module")
def tok():
    rng = np.random.default_rng(0)
    return tokenizers.train("sentencepiece", [" ".join(rng.choice(WORDS, 400)) + " Zoë's 1990."], 500)


def squad_row(context: str, answer: str) -> dict:
    start = context.index(answer)
    answers = {"text": [answer], "answer_start": [start]}
    return {
        "question": "where did the cat sit?",
        "context": context,
        "answers": answers,
        "reference": [answer],
    }


def test_an_answer_past_the_first_window_is_labelled_and_found(tok):
    context = " ".join(WORDS * 3) + " and then Zoë's cat sat in 1990."
    row = squad_row(context, "Zoë's cat")
    task = Task(
        "t", TaskSpec("span_qa", ("question", "context"), "answers", ()), {"test": [row]}, (), "span_qa"
    )
    windows = qa_windows.expand(task, tok, seq_len=32, doc_stride=8).sources["test"]
    assert len(windows) > 3 and windows[0]["start"] == 0 == windows[0]["end"]
    encode = task_pipeline.Encode(task, tok, 32, "span_qa")
    holding = [w for w in windows if w["start"] > 0]
    assert holding, "no window holds the answer"
    for w in holding:  # the labelled tokens are the answer's characters
        spans = w["spans"][w["start"] - w["offset"] : w["end"] - w["offset"] + 1]
        assert context[spans[0][0] : spans[-1][1]].strip() == "Zoë's cat"  # a piece may hold its space
        batch = encode.map(w)
        assert batch["inputs"].shape == (32,) and batch["answer_mask"][w["start"]] == 1
    # consecutive windows start doc_stride context tokens apart, and together cover the context
    assert all(len(w["window"]) <= 32 for w in windows)
    assert sum(len(w["spans"]) for w in windows[:1]) + 8 * (len(windows) - 1) >= len(tok.encode(context))

    # the model's logits: high at the answer in the last window that holds it, lower elsewhere
    predictions = []
    for w in windows:
        start_L, end_L = np.zeros(32), np.zeros(32)
        if w is holding[-1]:
            start_L[w["start"]], end_L[w["end"]] = 5.0, 5.0
        else:
            start_L[w["offset"]], end_L[w["offset"]] = 2.0, 2.0
        predictions.append(qa_windows.best_span(w, start_L, end_L))
    rows, references = qa_windows.by_row(windows, predictions)
    assert rows == ["Zoë's cat"] and references == [["Zoë's cat"]]


def test_a_short_context_is_one_window_and_a_cut_question_still_fits(tok):
    row = squad_row("the cat sat on a mat", "a mat")
    row["question"] = " ".join(WORDS * 4)
    task = Task(
        "t", TaskSpec("span_qa", ("question", "context"), "answers", ()), {"train": [row]}, (), "span_qa"
    )
    (window,) = qa_windows.expand(task, tok, seq_len=48, doc_stride=0).sources["train"]
    assert len(window["window"]) <= 48 and window["start"] > 0


# (prediction, gold answers): articles, punctuation, case, extra words and several gold answers
WRITTEN = [
    ("the Denver Broncos", ["Denver Broncos", "The Broncos"]),
    ("Broncos!", ["Denver Broncos", "the Broncos."]),
    ("in 1990", ["1990", "the year 1990"]),
    ("an apple a day", ["apple day"]),
    ("Santa Clara, California", ["Levi's Stadium", "Santa Clara"]),
    ("", ["anything"]),
    ("Zoë's  cat", ["zoës cat"]),
]


def test_exact_match_and_f1_are_squad_v1_1s():
    squad = pytest.importorskip(
        "torchmetrics.functional.text", reason="needs torchmetrics (make test has it)"
    )
    predictions, references = [p for p, _ in WRITTEN], [g for _, g in WRITTEN]
    ours = task_metrics.score("span_qa", predictions, references)
    theirs = squad.squad(
        [{"prediction_text": p, "id": str(i)} for i, p in enumerate(predictions)],
        [
            {"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)}
            for i, g in enumerate(references)
        ],
    )
    assert ours["exact_match"] == pytest.approx(float(theirs["exact_match"]) / 100, abs=1e-6)
    assert ours["f1"] == pytest.approx(float(theirs["f1"]) / 100, abs=1e-6)
    for p, golds in WRITTEN:  # and row by row
        one = task_metrics.score("span_qa", [p], [golds])
        theirs = squad.squad(
            [{"prediction_text": p, "id": "0"}],
            [{"answers": {"text": golds, "answer_start": [0]}, "id": "0"}],
        )
        assert one["f1"] == pytest.approx(float(theirs["f1"]) / 100, abs=1e-6), p
    assert 0 < ours["exact_match"] < ours["f1"] < 1
