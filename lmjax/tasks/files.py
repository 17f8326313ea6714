"""Fine-tuning tasks from the user's own files: task.kind, task.train_file (and validation_file, test_file),
JSONL for every kind and CSV (or TSV) for the flat ones, local paths or gs:// URLs.

  kind            columns (task.columns.*)             head
  classification  text (+ text_pair), label            classification; the label set is train's labels,
                                                       strings or integers as the file gives them
  regression      text (+ text_pair), score            regression (MSE on a number)
  tokens          tokens, tags (lists of equal length) token_classification; the tag set is train's tags
  span_qa         question, context, answers           span_qa: SQuAD's answers {"text": [...],
                                                       "answer_start": [...]} (train reads the first);
                                                       long contexts in windows (lmjax/tasks/qa_windows.py)
  seq2seq         source, target                       generation: a decoder's own LM head on prompt +
                                                       target, or an encoder-decoder's (tasks/prompts.py)
  chat            messages (OpenAI's role and content) generation: a decoder's, on its assistant turns

A text pair is read when the train file's first row has the text_pair column; every row then needs it.
Each example of Task.sources keeps its row's answer as the file gives it under `reference` (the label, the
score, the tag list): predictions are written in the same terms (lmjax/tasks/predictions.py). Bad input stops
with one line naming the file (and line), the column and the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math

from lmjax import storage
from lmjax.errors import InputError, MissingInput
from lmjax.tasks import prompts, qa_windows
from lmjax.tasks.catalog import Task, TaskSpec

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class Kind:
    head: str
    columns: tuple[str, ...]  # the task.columns keys every row needs
    pair: bool  # a text_pair column is read when train has it
    flat: bool  # one value a column: CSV works
    text_keys: tuple[str, ...] = ("text",)  # the example's inputs (TaskSpec.text_keys)
    label_key: str = "label"  # the example's answer (TaskSpec.label_key)


KINDS = {
    "classification": Kind("classification", ("text", "label"), True, True),
    "regression": Kind("regression", ("text", "score"), True, True),
    "tokens": Kind("token_classification", ("tokens", "tags"), False, False, ("tokens",)),
    "span_qa": Kind(
        "span_qa", ("question", "context", "answers"), False, False, ("question", "context"), "answers"
    ),
    "seq2seq": Kind("generation", ("source", "target"), False, True, ("source",), "target"),
    "chat": Kind("generation", ("messages",), False, False, ("messages",), "messages"),
}
ROLES = ("system", "user", "assistant")


def kind_of(task_config) -> Kind:
    if task_config.kind not in KINDS:
        raise InputError(f"task.kind={task_config.kind!r} is unknown; use one of {sorted(KINDS)}")
    return KINDS[task_config.kind]


def read_rows(path: str, role: str, flat: bool) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL file (one object a line; blank lines skipped) or a CSV / TSV file."""
    file = storage.workdir(path)
    if not file.is_file():
        raise MissingInput(f"task.{role}_file={path!r} does not exist")
    text = file.read_text(encoding="utf-8")
    suffix = file.suffix.lower()
    if suffix in (".csv", ".tsv"):
        if not flat:
            raise InputError(f"{path}: a CSV file cannot hold this kind's lists; give a JSONL file")
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        rows = [(reader.line_num, row) for row in reader]
    elif suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"{path}:{n}: not valid JSON ({e.msg}); a JSONL file holds one object a line"
                ) from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: a JSON {type(row).__name__}, not an object of columns")
            rows.append((n, row))
    else:
        raise InputError(f"{path}: give a .jsonl file{' or a .csv / .tsv file' if flat else ''}")
    if not rows:
        raise InputError(f"task.{role}_file={path!r} is empty: it holds no rows")
    return rows


class Reader:
    """One file's rows -> examples: the columns checked, labels and tags mapped to train's sets."""

    def __init__(self, task_config, kind: Kind):
        self.columns, self.kind, self.name = task_config.columns, kind, task_config.kind
        self.pair = False  # set from train's first row
        self.labels: dict = {}  # label or tag as given -> class id (filled from train)

    def column(self, where: str, row: dict, key: str):
        name = self.columns[key]
        if name not in row or row[name] is None:
            raise InputError(
                f"{where}: no column {name!r} (task.columns.{key}); the row has {sorted(row)[:8]}: name "
                f"yours with --config.task.columns.{key}=..."
            )
        return row[name]

    def text(self, where: str, row: dict, key: str) -> str:
        value = self.column(where, row, key)
        if not isinstance(value, str):
            raise InputError(f"{where}: column {self.columns[key]!r} holds {value!r}, not a text")
        return value

    def label(self, where: str, value, train: bool) -> int:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise InputError(f"{where}: the label {value!r} is neither a string nor an integer")
        if value not in self.labels:
            if not train:
                raise InputError(
                    f"{where}: the label {value!r} never occurs in the train file, whose labels are "
                    f"{sorted(self.labels, key=repr)[:20]}; fix the label or add examples of it to train"
                )
            self.labels[value] = -1  # numbered once train is read
        return value

    def answers(self, where: str, row: dict, context: str) -> dict:
        answers, name = self.column(where, row, "answers"), self.columns.answers
        texts, starts = (
            answers.get(k) if isinstance(answers, dict) else None for k in ("text", "answer_start")
        )
        if not (isinstance(texts, list) and isinstance(starts, list) and len(texts) == len(starts) and texts):
            raise InputError(
                f'{where}: column {name!r} must be SQuAD\'s {{"text": [...], "answer_start": [...]}}, lists '
                "of equal length with at least one answer"
            )
        for text, start in zip(texts, starts, strict=True):
            if not (
                isinstance(start, int) and isinstance(text, str) and context[start:][: len(text)] == text
            ):
                raise InputError(
                    f"{where}: the answer {text!r} is not at character {start!r} of the context; "
                    "answer_start counts characters from 0"
                )
        return {"text": texts, "answer_start": starts}

    def messages(self, where: str, row: dict) -> list[dict]:
        messages = self.column(where, row, "messages")
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok or not any(m["role"] == "assistant" for m in messages):
            raise InputError(
                f"{where}: column {self.columns.messages!r} must be a list of {{'role', 'content'}} with "
                f"roles in {ROLES} and at least one assistant turn"
            )
        return [{"role": m["role"], "content": m["content"]} for m in messages]

    def example(self, where: str, row: dict, train: bool) -> dict:
        if self.name == "span_qa":
            context = self.text(where, row, "context")
            answers = self.answers(where, row, context)
            out = {"question": self.text(where, row, "question"), "context": context, "answers": answers}
            return out | {"reference": answers["text"]}
        if self.name == "seq2seq":
            target = self.text(where, row, "target")
            return {"source": self.text(where, row, "source"), "target": target, "reference": target}
        if self.name == "chat":
            messages = self.messages(where, row)
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            return {"messages": messages[: last + 1], "reference": messages[last]["content"]}
        if self.kind.head == "token_classification":
            tokens, tags = (self.column(where, row, k) for k in ("tokens", "tags"))
            if not (isinstance(tokens, list) and isinstance(tags, list) and len(tokens) == len(tags)):
                raise InputError(
                    f"{where}: columns {self.columns.tokens!r} and {self.columns.tags!r} must be lists of "
                    "equal length (one tag a token)"
                )
            bad = [t for t in tokens if not isinstance(t, str)]
            if bad:
                raise InputError(f"{where}: the token {bad[0]!r} is not a string")
            return {"tokens": tokens, "label": [self.label(where, t, train) for t in tags], "reference": tags}
        out = {"text": self.text(where, row, "text")}
        if self.pair:
            out["text_pair"] = self.text(where, row, "text_pair")
        if self.kind.head == "classification":
            value = self.column(where, row, "label")
            return out | {"label": self.label(where, value, train), "reference": value}
        value = self.column(where, row, "score")
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise InputError(f"{where}: the score {value!r} is not a finite number")
        return out | {"label": score, "reference": score}

    def read(self, path: str, role: str) -> list[dict]:
        rows = read_rows(path, role, self.kind.flat)
        if role == "train":
            self.pair = self.kind.pair and self.columns.text_pair in rows[0][1]
        examples = [self.example(f"{path}:{n}", row, role == "train") for n, row in rows]
        if role == "train" and self.labels:
            for i, value in enumerate(sorted(self.labels, key=lambda v: (isinstance(v, str), v))):
                self.labels[value] = i
        return examples

    def number(self, example: dict) -> dict:
        """The example with its label (or tags) as class ids."""
        if "label" not in example or self.kind.head == "regression":
            return example
        label = example["label"]
        ids = [self.labels[t] for t in label] if isinstance(label, list) else self.labels[label]
        return example | {"label": ids}


def load(task_config) -> Task:
    """The task of task.kind from task.train_file, validation_file and test_file (the last two optional)."""
    kind = kind_of(task_config)
    reader = Reader(task_config, kind)
    sources = {}
    for role in SPLITS:
        path = task_config[f"{role}_file"]
        if path:
            sources[role] = [reader.number(e) for e in reader.read(path, role)]
        elif role == "train":
            raise InputError(f"task.kind={task_config.kind!r} needs task.train_file (JSONL or CSV)")
    text_keys = kind.text_keys + (("text_pair",) if reader.pair else ())
    spec = TaskSpec(kind.head, text_keys, kind.label_key, SPLITS)
    values = tuple(sorted(reader.labels, key=reader.labels.get))
    name = task_config.name or storage.workdir(task_config.train_file).stem
    task = Task(name, spec, sources, tuple(str(v) for v in values), kind=task_config.kind, values=values)
    if task_config.num_labels and task_config.num_labels != task.num_labels:
        raise InputError(
            f"task.num_labels={task_config.num_labels} but {task_config.train_file} has {task.num_labels} "
            f"labels; set task.num_labels=0 (the file's)"
        )
    return task


def for_tokenizer(task: Task, tok, task_config) -> Task:
    """The task as the model's tokenizer reads it: span_qa rows cut into windows (qa_windows.py); the first
    row of a generation kind rendered, so that a prompt without '{source}' or a chat kind without a chat
    template stops here, before the run writes anything."""
    if task.spec.head == "generation":
        prompts.pieces(tok, task_config.prompt, task.sources["train"][0])
    return qa_windows.expand(task, tok, task_config.seq_len, task_config.doc_stride)
