import json
import subprocess
import sys
from pathlib import Path


from experiments import sweep

ROOT = Path(__file__).resolve().parents[1]


def test_grid_expands_to_every_combination_with_tied_keys():
    points = sweep.expand({"finetune.pretrain_lambda": [0.0, 1.0], "seed": [0, 1],
                           ("optim.learning_rate", "optim.warmup_steps"): [(1e-3, 10), (1e-4, 0)]})
    assert len(points) == 8 and points[0] == {"finetune.pretrain_lambda": 0.0, "seed": 0, "optim.learning_rate": 1e-3,
                                              "optim.warmup_steps": 10}
    assert len({sweep.run_name(p) for p in points}) == 8


def write_sweep(tmp_path, grid, config):
    path = tmp_path / "s.py"
    path.write_text(f"def get_sweep():\n    return dict(config={config!r}, grid={grid!r}, x='optim.learning_rate',\n"
                    f"                metrics=('eval/loss',), overrides={{'train.num_steps': 3}})\n")
    return path


def run_sweep(*args):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=ROOT, capture_output=True, text=True)


def test_unknown_sweep_key_is_one_line_and_runs_nothing(tmp_path):
    path = write_sweep(tmp_path, {"optim.learning_rat": [0.1]}, "experiments/configs/shakespeare_char.py:tiny")
    result = run_sweep(f"--sweep={path}", f"--outdir={tmp_path / 'out'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown sweep key 'optim.learning_rat'; did you mean 'optim.learning_rate'? "
        "(keys are config paths such as finetune.pretrain_lambda)"]
    assert not (tmp_path / "out").exists()


def test_sweep_runs_skips_finished_and_writes_table_and_plot(tmp_path, corpus_file, cache_dir):
    path = write_sweep(tmp_path, {"optim.learning_rate": [1e-3, 3e-3]}, "experiments/configs/shakespeare_char.py:tiny")
    out = tmp_path / "out"
    sets = [f"--set=data.text_files={corpus_file}", f"--set=data.cache_dir={cache_dir}", "--set=train.eval_batches=2"]
    printed = run_sweep(f"--sweep={path}", f"--outdir={out}", "--launch=print", *sets)
    assert printed.returncode == 0 and len(printed.stdout.strip().splitlines()) == 2
    assert "--config.optim.learning_rate=0.003" in printed.stdout and not out.exists()
    first = run_sweep(f"--sweep={path}", f"--outdir={out}", *sets)
    assert first.returncode == 0, first.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {"results.csv", "results.md", "results.png", "learning_rate=0.001"}
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0] == "optim.learning_rate,eval/loss" and len(lines) == 3
    assert json.loads((out / "learning_rate=0.003" / "results.json").read_text())["eval/loss"] > 0
    again = run_sweep(f"--sweep={path}", f"--outdir={out}", *sets)
    assert again.stdout.count("finished, skipped") == 2
