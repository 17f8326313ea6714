"""The experiments' data scripts (experiments/data/): Brown part-of-speech files and Lee document pairs."""

import json
import subprocess
import sys

import numpy as np

from experiments.data import brown_pos, lee_pairs


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
