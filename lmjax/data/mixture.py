"""data.mixture = 'NAME:WEIGHT,NAME:WEIGHT,...': training rows drawn from several corpora by weight.

A NAME is a built-in corpus (shakespeare, wiki_sample), a text file path or glob (local or gs://) or a TFDS
catalog name. Each source is a `corpora.Corpus` of its own, tokenized and packed on its own; grain's mixing
(`IterDataset.mix`) draws each row of a batch from one source, by weight, and its iterator state (every
source's position) is what checkpoints save. Each source is evaluated on its own validation split
(`eval/<name>/...`); a source of weight 0 is evaluated but never trained on.

  --config.data.mixture='shakespeare:0.7,wiki_sample:0.3'
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re

import tensorflow_datasets as tfds
from etils import epath
from ml_collections import ConfigDict

from lmjax import storage
from lmjax.data import corpora
from lmjax.errors import InputError, MissingInput


@dataclasses.dataclass(frozen=True)
class Source:
    name: str  # its metrics' prefix: eval/<name>/loss
    weight: float  # its share of the training rows (the weights sum to 1)
    corpus: corpora.Corpus


@dataclasses.dataclass(frozen=True)
class Mixture:
    name: str  # data.mixture as given
    sources: tuple[Source, ...]

    @property
    def trained(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if s.weight > 0)


def parse(spec: str) -> list[tuple[str, float]]:
    """'a:0.7,b:0.3' -> [('a', 0.7), ('b', 0.3)], the weights checked (not yet normalised)."""
    parts = []
    for item in spec.split(","):
        name, sep, weight = item.strip().rpartition(":")
        try:
            value = float(weight)
        except ValueError:
            value = None
        if not sep or not name or value is None or not math.isfinite(value):
            raise InputError(
                f"data.mixture item {item.strip()!r} is not NAME:WEIGHT; write e.g. "
                "'shakespeare:0.7,wiki_sample:0.3'"
            )
        if value < 0:
            raise InputError(f"data.mixture weight of {name!r} is {value}; weights must be >= 0")
        parts.append((name, value))
    if not sum(w for _, w in parts):
        raise InputError(
            f"data.mixture={spec!r} has no positive weight; give at least one source a weight > 0"
        )
    return parts


def _files(pattern: str) -> list[str]:
    """The files a path or glob names (local or gs://), sorted."""
    if storage.is_gcs(pattern):
        path = corpora.text_path(pattern)
        if not any(c in pattern for c in "*?["):
            return [pattern] if path.is_file() else []
        parent = epath.Path(re.split(r"[*?\[]", pattern, maxsplit=1)[0].rsplit("/", 1)[0])
        return sorted(os.fspath(p) for p in parent.glob(pattern[len(os.fspath(parent)) + 1 :]) if p.is_file())
    return sorted(p for p in glob.glob(os.path.expanduser(pattern)) if os.path.isfile(p))


def _looks_like_path(name: str) -> bool:
    return storage.is_gcs(name) or any(c in name for c in "*?[") or os.sep in name or "." in name


def _source_config(data: ConfigDict, **change) -> ConfigDict:
    return ConfigDict(
        data.to_dict() | dict(mixture="", corpus="shakespeare", text_files="", tfds_name="") | change
    )


def _source(data: ConfigDict, name: str) -> tuple[str, corpora.Corpus]:
    """(its metrics name, its corpus) of one mixture NAME."""
    if name in corpora.CORPORA:
        return name, corpora.load(_source_config(data, corpus=name))
    files = _files(name)
    if files:
        stem = os.path.splitext(os.path.basename(name.rstrip("/")))[0]  # a glob's: what it fixes
        label = re.sub(r"\[.*?\]|[*?]", "", stem).strip("._-")
        label = label or os.path.basename(os.path.dirname(name)) or "files"
        return label, corpora.load(_source_config(data, text_files=",".join(files)))
    if name.split("/")[0].split(":")[0] in tfds.list_builders(with_community_datasets=False):
        return name.replace("/", "_").replace(":", "_"), corpora.load(_source_config(data, tfds_name=name))
    if _looks_like_path(name):
        raise MissingInput(f"data.mixture source {name!r} matches no file; fix the path or glob")
    raise InputError(
        f"data.mixture source {name!r} is unknown: not a built-in corpus ({', '.join(corpora.CORPORA)}), "
        "not a file and not a TFDS dataset; fix the name"
    )


def load_corpus(data: ConfigDict) -> corpora.Corpus | Mixture:
    """The data.* corpus: a `corpora.Corpus`, or with data.mixture a `Mixture` of several."""
    return load(data) if data.mixture else corpora.load(data)


def load(data: ConfigDict) -> Mixture:
    if data.text_files or data.tfds_name:
        raise InputError("data.mixture replaces data.text_files and data.tfds_name; set only data.mixture")
    parts = parse(data.mixture)
    total = sum(w for _, w in parts)
    sources, seen = [], set()
    for name, weight in parts:
        label, corpus = _source(data, name)
        base, n = label, 2
        while label in seen:  # two globs ending alike
            label, n = f"{base}_{n}", n + 1
        seen.add(label)
        sources.append(Source(label, weight / total, corpus))
    return Mixture(data.mixture, tuple(sources))
