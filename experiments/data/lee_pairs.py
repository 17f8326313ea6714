"""gensim's Lee corpus as document-pair regression files for experiments/configs/finetune_files.py:regression,
cross-validated by document, with the zero-shot baseline; then the fine-tuned folds' pooled score.

  python -m experiments.data.lee_pairs prepare --out=data/lee      # fold{0..4}/{train,validation,test}.jsonl
  python -m experiments.data.lee_pairs score --runs=runs/lee --rates=5e-05,1e-04

The data: lee.cor (50 news documents) and similarities0-1.txt (the mean human similarity of each of the 1,225
document pairs) from gensim's test data. The 50 documents fall into 5 folds of 10 (document i in fold i mod
5). Fold k's files: test = the 45 pairs with both documents in fold k, validation = the 45 pairs within fold
k + 1, train = the 435 pairs of the other three folds' 30 documents; no document of a test or validation pair
occurs in training. Columns text, text_pair, score. `prepare` prints the zero-shot baseline on every fold's
test pairs: the cosine of all-MiniLM-L6-v2's mean-pooled embeddings of the two documents (each cut at 256
pieces), and its Spearman (scipy) over the 225 pooled test pairs. `score` reads
RUNS/lr=RATE/fold{k}/predictions/*.jsonl, picks the rate with the best mean validation Spearman, and prints
its test Spearman over the pooled pairs.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from scipy import stats

FOLDS = 5


def gensim_data() -> Path:
    import gensim

    return Path(os.path.dirname(gensim.__file__)) / "test" / "test_data"


def pairs() -> tuple[list[str], list[tuple[int, int, float]]]:
    docs = (gensim_data() / "lee.cor").read_text(encoding="latin-1").splitlines()
    sim = np.loadtxt(gensim_data() / "similarities0-1.txt")
    return docs, [(i, j, float(sim[i, j])) for i in range(len(docs)) for j in range(i + 1, len(docs))]


def within(fold: int, all_pairs: list) -> list[tuple[int, int, float]]:
    return [p for p in all_pairs if p[0] % FOLDS == fold and p[1] % FOLDS == fold]


def embeddings(docs: list[str], max_pieces: int = 256) -> np.ndarray:
    import jax.numpy as jnp
    from flax import nnx

    from lmjax import models
    from lmjax.models import heads
    from lmjax.training import pretrained

    pre = pretrained.load(pretrained.MINILM)
    model = models.build(pre.model_config, nnx.Rngs(0))
    nnx.update(model, pre.params())
    cls, sep = pre.tokenizer.special_id("[CLS]"), pre.tokenizer.special_id("[SEP]")
    out = []
    for doc in docs:
        ids = np.r_[cls, pre.tokenizer.encode(doc)[: max_pieces - 2], sep][None].astype(np.int32)
        h = model.encode(jnp.asarray(ids), mask_BL=jnp.ones_like(ids))
        out.append(np.asarray(heads.pool(h, jnp.ones_like(ids), "mean"))[0])
    e = np.stack(out)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def prepare(out: Path) -> None:
    docs, all_pairs = pairs()
    for k in range(FOLDS):
        test, validation = within(k, all_pairs), within((k + 1) % FOLDS, all_pairs)
        held = {k, (k + 1) % FOLDS}
        train = [p for p in all_pairs if p[0] % FOLDS not in held and p[1] % FOLDS not in held]
        (out / f"fold{k}").mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", train), ("validation", validation), ("test", test)):
            with open(out / f"fold{k}" / f"{split}.jsonl", "w") as f:
                f.writelines(
                    json.dumps({"text": docs[i], "text_pair": docs[j], "score": s}) + "\n" for i, j, s in rows
                )
    e = embeddings(docs)
    tests = [p for k in range(FOLDS) for p in within(k, all_pairs)]
    cosine = [float(e[i] @ e[j]) for i, j, _ in tests]
    human = [s for _, _, s in tests]
    per_fold = [
        stats.spearmanr(cosine[45 * k : 45 * k + 45], human[45 * k : 45 * k + 45]).statistic
        for k in range(FOLDS)
    ]
    everything = stats.spearmanr([float(e[i] @ e[j]) for i, j, _ in all_pairs], [s for *_, s in all_pairs])
    print(
        f"{len(all_pairs)} pairs; each fold: {len(train)} train, 45 validation, 45 test pairs; zero-shot "
        f"cosine Spearman over the {len(tests)} pooled test pairs "
        f"{stats.spearmanr(cosine, human).statistic:.4f}, "
        f"per fold {', '.join(f'{s:.3f}' for s in per_fold)} (mean {np.mean(per_fold):.4f}); over all "
        f"{len(all_pairs)} pairs {everything.statistic:.4f}"
    )


def read(path: Path) -> tuple[list[float], list[float]]:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [x["prediction"] for x in lines], [x["reference"] for x in lines]


def score(runs: Path, rates: list[str]) -> None:
    validation = {}
    for rate in rates:
        folds = [
            read(runs / f"lr={rate}" / f"fold{k}" / "predictions" / "validation.jsonl") for k in range(FOLDS)
        ]
        validation[rate] = np.mean([stats.spearmanr(*f).statistic for f in folds])
        print(f"lr {rate}: mean validation Spearman over the folds {validation[rate]:.4f}")
    pick = max(validation, key=validation.get)
    folds = [read(runs / f"lr={pick}" / f"fold{k}" / "predictions" / "test.jsonl") for k in range(FOLDS)]
    pooled = [sum((f[i] for f in folds), []) for i in (0, 1)]
    per_fold = [stats.spearmanr(*f).statistic for f in folds]
    print(
        f"pick lr {pick}: test Spearman over the {len(pooled[0])} pooled pairs "
        f"{stats.spearmanr(*pooled).statistic:.4f}, per fold {', '.join(f'{s:.3f}' for s in per_fold)} "
        f"(mean {np.mean(per_fold):.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("prepare", "score"))
    parser.add_argument("--out", help="prepare: where the fold directories go")
    parser.add_argument("--runs", help="score: the directory of lr=RATE/fold{k} workdirs")
    parser.add_argument("--rates", default="5e-05,1e-04", help="score: the learning rates run")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(Path(args.out))
    else:
        score(Path(args.runs), args.rates.split(","))


if __name__ == "__main__":
    main()
