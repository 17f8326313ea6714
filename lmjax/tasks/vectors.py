"""Word-vector tools: nearest neighbours, analogies (3CosAdd), word2vec text export (gensim's
`KeyedVectors.load_word2vec_format` reads it), and evaluation on word-similarity and analogy sets.

The evaluation sets are the ones gensim ships (WordSim-353, SimLex-999, Google's analogies); pairs and
questions with words outside the vocabulary are counted and reported, never an error. Words are compared
lower-cased."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from etils import epath

from lmjax.errors import InputError

SETS = {"wordsim353": "wordsim353.tsv", "simlex999": "simlex999.txt", "analogy": "questions-words.txt"}


def gensim_test_file(name: str) -> Path:
    import gensim

    return Path(gensim.__file__).parent / "test" / "test_data" / name


@dataclasses.dataclass
class WordVectors:
    words: list[str]  # most frequent first
    vectors_VD: np.ndarray

    def __post_init__(self):
        if len(self.words) != len(self.vectors_VD):
            raise InputError(f"{len(self.words)} words but {len(self.vectors_VD)} vectors")
        self.index = {w: i for i, w in enumerate(self.words)}
        norms = np.linalg.norm(self.vectors_VD, axis=1, keepdims=True)
        self.unit_VD = (self.vectors_VD / np.maximum(norms, 1e-12)).astype(np.float32)

    @classmethod
    def from_model(cls, model, tokenizer) -> "WordVectors":
        """A Word2Vec / GloVe model's vectors for the tokenizer's words (specials left out)."""
        first = len(tokenizer.SPECIALS)
        return cls(tokenizer.words[first:], np.asarray(model.vectors())[first : tokenizer.vocab_size])

    def nearest(self, word: str, k: int = 10) -> list[tuple[str, float]]:
        i = self.index.get(word.lower())
        if i is None:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self.words)} words)")
        sims_V = self.unit_VD @ self.unit_VD[i]
        sims_V[i] = -np.inf
        top = np.argsort(-sims_V)[:k]
        return [(self.words[j], float(sims_V[j])) for j in top]

    def analogy(self, a: str, b: str, c: str, k: int = 1) -> list[tuple[str, float]]:
        """a : b :: c : ?  by 3CosAdd, argmax over words other than a, b, c of cos(x, b - a + c) on unit
        vectors."""
        return [
            (self.words[j], s)
            for j, s in self._analogies(np.asarray([[self._id(w) for w in (a, b, c)]]), k)[0]
        ]

    def _id(self, word: str) -> int:
        if word.lower() not in self.index:
            raise KeyError(f"{word!r} is not in the vocabulary ({len(self.words)} words)")
        return self.index[word.lower()]

    def _analogies(
        self, abc_N3: np.ndarray, k: int, restrict: int = 0, chunk: int = 512
    ) -> list[list[tuple[int, float]]]:
        """Top-k answers among the `restrict` most frequent words (all: 0), which must include a, b and c."""
        unit_VD = self.unit_VD[:restrict] if restrict else self.unit_VD
        results = []
        for start in range(0, len(abc_N3), chunk):
            abc = abc_N3[start : start + chunk]
            query_ND = self.unit_VD[abc[:, 1]] - self.unit_VD[abc[:, 0]] + self.unit_VD[abc[:, 2]]
            sims_NV = query_ND @ unit_VD.T
            sims_NV[np.arange(len(abc))[:, None], abc] = -np.inf  # a, b, c are never the answer
            top_NK = np.argsort(-sims_NV, axis=1)[:, :k]
            results += [[(int(j), float(sims_NV[n, j])) for j in top_NK[n]] for n in range(len(abc))]
        return results

    def save_word2vec_format(self, path: str | epath.PathLike) -> None:
        """The word2vec text format: a 'V D' header, then one 'word v_1 ... v_D' line per word."""
        with epath.Path(path).open("w") as f:
            f.write(f"{len(self.words)} {self.vectors_VD.shape[1]}\n")
            for word, v in zip(self.words, self.vectors_VD, strict=True):
                f.write(word + " " + " ".join(f"{x:.6g}" for x in v) + "\n")

    @classmethod
    def load_word2vec_format(cls, path: str | Path) -> "WordVectors":
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        words = [line.split(" ", 1)[0] for line in lines[1:]]
        return cls(words, np.asarray([line.split(" ")[1:] for line in lines[1:]], np.float32))


def read_pairs(path: Path) -> list[tuple[str, str, float]]:
    rows = [
        line.split("\t")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [(a.lower(), b.lower(), float(s)) for a, b, s, *_ in rows]


def evaluate_similarity(wv: WordVectors, pairs: Sequence[tuple[str, str, float]]) -> dict[str, float]:
    """Spearman correlation of cosine similarity with human scores over the pairs both words of which are
    known."""
    from scipy import stats

    known = [(wv.index[a], wv.index[b], s) for a, b, s in pairs if a in wv.index and b in wv.index]
    out = {"pairs": len(known), "oov_pairs": len(pairs) - len(known), "spearman": float("nan")}
    if len(known) >= 2:
        i, j, human = map(np.asarray, zip(*known, strict=True))
        out["spearman"] = float(
            stats.spearmanr(np.sum(wv.unit_VD[i] * wv.unit_VD[j], axis=1), human).statistic
        )
    return out


def read_analogies(path: Path) -> list[tuple[str, str, str, str]]:
    return [
        tuple(line.lower().split())
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith(":")
    ]


def evaluate_analogies(
    wv: WordVectors, questions: Sequence[tuple[str, ...]], restrict: int = 300_000
) -> dict[str, float]:
    """3CosAdd accuracy over the questions whose four words are among the `restrict` most frequent (gensim's
    evaluate_word_analogies rule); the rest are counted as skipped."""
    limit = min(restrict, len(wv.words))
    known = [
        [wv.index[w] for w in q] for q in questions if all(w in wv.index and wv.index[w] < limit for w in q)
    ]
    out = {"questions": len(known), "oov_questions": len(questions) - len(known), "accuracy": float("nan")}
    if known:
        abcd = np.asarray(known)
        best = [r[0][0] for r in wv._analogies(abcd[:, :3], 1, restrict=limit)]
        out["accuracy"] = float(np.mean(np.asarray(best) == abcd[:, 3]))
    return out


def evaluate(wv: WordVectors) -> dict[str, float]:
    """Scores on gensim's three sets: {'wordsim353', 'simlex999' (Spearman), 'analogy' (accuracy)} and
    counts."""
    out = {}
    for name in ("wordsim353", "simlex999"):
        r = evaluate_similarity(wv, read_pairs(gensim_test_file(SETS[name])))
        out |= {name: r["spearman"], f"{name}_pairs": r["pairs"], f"{name}_oov": r["oov_pairs"]}
    r = evaluate_analogies(wv, read_analogies(gensim_test_file(SETS["analogy"])))
    return out | {
        "analogy": r["accuracy"],
        "analogy_questions": r["questions"],
        "analogy_oov": r["oov_questions"],
    }
