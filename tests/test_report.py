"""experiments/report.py: the replay table's gains and losses against the base model, and the distillation
curves' training seconds summed from the log."""

import json
import math

import pytest

from experiments import report


def write(workdir, results=None, rows=(), batch=(2, 4)):
    workdir.mkdir(parents=True)
    if results is not None:
        (workdir / "results.json").write_text(json.dumps(results))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (workdir / "config.json").write_text(json.dumps({"data": {"batch_size": batch[0], "seq_len": batch[1]}}))


def test_replay_table_and_plot(tmp_path):
    for arm, (s, w) in {"base": (4.0, 3.0), "0": (3.0, 3.5), "30": (3.2, 3.1)}.items():
        for split in ("val", "test"):
            write(tmp_path / f"{split}_{arm}", {"eval/shakespeare_test/loss": s, "eval/wiki_test/loss": w})
    table = report.replay(tmp_path, tmp_path / "replay.png").splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| base model", "| 0%", "| 30%"]
    gained, lost = (float(x) for x in table[3].strip(" |").split(" | ")[-2:])
    assert gained == pytest.approx(math.exp(4.0) - math.exp(3.0), abs=0.01)
    assert lost == pytest.approx(math.exp(3.5) - math.exp(3.0), abs=0.01)
    assert (tmp_path / "replay.png").stat().st_size > 0


def test_distill_curves_time_steps_at_the_median_step_time(tmp_path):
    rows = [
        {"step": 5, "train/tokens_per_s": 0.5},  # compiling: left out
        {"step": 10, "train/tokens_per_s": 8.0},  # 8 tokens a step at 8 tokens/s: 1 s a step
        {"step": 10, "eval/perplexity": 50.0},
        {"step": 15, "train/tokens_per_s": 2.0},  # slowed by something else: 4 s a step
        {"step": 20, "train/tokens_per_s": 8.0},
        {"step": 20, "eval/perplexity": 30.0},
    ]
    write(tmp_path / "runs" / "alpha0", rows=rows)
    assert report.curve(tmp_path / "runs" / "alpha0") == ([10, 20], [10.0, 20.0], [50.0, 30.0])
    assert "| alpha0 | 10: 50.0, 20: 30.0 | 20 |" in report.distill(tmp_path / "runs", tmp_path / "d.png")
