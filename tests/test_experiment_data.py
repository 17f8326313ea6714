"""The experiments' data scripts (experiments/data/): Brown part-of-speech files, Lee document pairs, the
SWORD Bible reader and the First Folio line alignment."""

import json
import subprocess
import sys

import numpy as np

from experiments.data import bible_pairs, brown_pos, folio_pairs, lee_pairs


def test_brown_files_split_by_file_with_coarse_tags_and_a_baseline(tmp_path):
    brown = tmp_path / "package"
    brown.mkdir()
    for i in range(500):
        name = f"c{'abcdefghjklmnpr'[i // 34]}{i % 34 + 1:02d}"
        (brown / name).write_text(f"\n\n\tThe/at Jury/nn-tl said/vbd not/* f{i}/np --/-- it/pps ./.\n")
    (brown / "cats.txt").write_text("ignored\n")
    out = subprocess.run(
        [sys.executable, "-m", "experiments.data.brown_pos", f"--brown={brown}", f"--out={tmp_path / 'pos'}"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    rows = {
        s: [json.loads(x) for x in (tmp_path / "pos" / f"{s}.jsonl").read_text().splitlines()]
        for s in brown_pos.SPLITS
    }
    assert [len(rows[s]) for s in brown_pos.SPLITS] == [400, 50, 50]
    assert rows["test"][0] == {
        "tokens": ["The", "Jury", "said", "not", "f0", "--", "it", "."],
        "tags": ["at", "nn", "vbd", "*", "np", "-", "pps", "."],
    }
    # every word but the unseen names (f0, f10, ...: tagged with the most frequent tag, 'at') is right
    assert (
        "most-frequent-tag validation accuracy 0.8750; most-frequent-tag test accuracy 0.8750" in out.stdout
    )


def test_lee_folds_keep_test_and_validation_documents_out_of_training():
    docs, pairs = lee_pairs.pairs()
    assert len(docs) == 50 and len(pairs) == 1225 and all(0 <= s <= 1 for *_, s in pairs)
    for k in range(lee_pairs.FOLDS):
        test = lee_pairs.within(k, pairs)
        assert len(test) == 45 and {i % 5 for i, j, _ in test} == {k} == {j % 5 for i, j, _ in test}
    assert np.isclose(pairs[0][2], 0.3)  # documents 0 and 1 (similarities0-1.txt, first row)


def test_sword_ztext_entries_follow_the_kjv_numbering_with_book_and_chapter_headings(tmp_path):
    import struct
    import zlib

    verses = [1001001, 1001002, 1002001, 2001001, 40001001, 40001002]  # Gen 1:1-2, 2:1, Exod 1:1, Matt 1:1-2
    for testament, ids in (("ot", verses[:4]), ("nt", verses[4:])):
        entries, book, chapter = ["", "<milestone/>"], None, None
        for v in ids:
            if v // 1_000_000 != book:
                book, chapter = v // 1_000_000, None
                entries.append(f"<div type='book' n='{book}'/>")
            if v // 1000 != chapter:
                chapter = v // 1000
                entries.append(f"<chapter n='{chapter % 1000}'/>")
            entries.append(f'<w lemma="x">verse</w> {v}<note type="x">a note</note>.')
        block = "".join(entries).encode()
        data = zlib.compress(block)
        (tmp_path / f"{testament}.bzz").write_bytes(data)
        (tmp_path / f"{testament}.bzs").write_bytes(struct.pack("<III", 0, len(data), len(block)))
        index, at = b"", 0
        for e in entries:
            index += struct.pack("<IIH", 0, at, len(e.encode()))
            at += len(e.encode())
        (tmp_path / f"{testament}.bzv").write_bytes(index)
    assert bible_pairs.sword_verses(tmp_path, verses) == {v: f"verse {v}." for v in verses}
    assert bible_pairs.split_of(8001001) == "test" and bible_pairs.split_of(31001001) == "validation"


def test_folio_lines_pair_with_the_modern_line_of_the_same_words(tmp_path):
    folio = "  Ham. To be, or not to be, that is the Question:\nWhether 'tis Nobler in the minde to suffer\n"
    folio += "The Slings and Arrowes of outragious Fortune,\nOr to take Armes against a Sea\nof troubles\n"
    modern = (
        "Ham.\nTo be, or not to be,--that is the question:--\nWhether 'tis nobler in the mind to suffer\n"
    )
    modern += "The slings and arrows of outrageous fortune\nOr to take arms against a sea of troubles,\n"
    (tmp_path / "hamlet_gut_f.txt").write_text(folio)
    (tmp_path / "hamlet_gut.txt").write_text(modern)
    (plays,) = folio_pairs.plays(tmp_path).values()
    assert folio_pairs.aligned(*plays) == [
        ("To be, or not to be, that is the Question:", "To be, or not to be,--that is the question:--"),
        ("Whether 'tis Nobler in the minde to suffer", "Whether 'tis nobler in the mind to suffer"),
    ]  # left out: a spelling the folding does not reach (outragious), a line re-wrapped over two
