"""The benchmarks run end to end at their smallest settings (figures are printed, never asserted)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import input_pipeline  # noqa: E402
import throughput  # noqa: E402

from lmjax import metrics  # noqa: E402


@pytest.mark.parametrize("preset", throughput.PRESETS)
def test_presets_make_batches_of_their_objective_and_count_flops(preset):
    c = throughput.make_config(preset, "auto")
    batch = throughput.random_batch(c, np.random.default_rng(0))
    assert all(v.shape[0] == c.data.batch_size for v in batch.values())
    assert batch["inputs"].max() < c.model.vocab_size
    tokens, per_token = throughput.tokens_and_flops(c)
    flops, example_tokens = metrics.train_flops(
        c.model,
        c.data.seq_len,
        *([throughput.pipeline.span_lengths(c.data)[1]] if preset == "t5-base" else []),
    )
    assert tokens == c.data.batch_size * example_tokens and per_token == pytest.approx(flops / example_tokens)


@pytest.mark.slow  # compiles the baby step twice and decodes: make test-slow
def test_throughput_main_writes_a_row_per_device_count(tmp_path, monkeypatch):
    out = tmp_path / "rows.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "throughput.py",
            "--presets",
            "baby",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--devices",
            "1,2",
            "--remat",
            "full",
            "--json",
            str(out),
        ],
    )
    throughput.main()
    rows = json.loads(out.read_text())["rows"]
    assert [r["devices"] for r in rows] == [1, 2]
    assert all(
        r["tokens_per_s"] > 0 and r["decode_tokens_per_s"] > 0 and r["mfu"] is None and r["remat"] == "full"
        for r in rows
    )


@pytest.mark.slow  # a training run: make test-slow
def test_input_pipeline_measures_pipeline_and_loop(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"paragraph {i}: " + "the quick brown fox jumps. " * 20 for i in range(50)))
    c = throughput.make_config("baby", "float32")
    c.data.update(
        text_files=str(text), tokenizer="char", validation_fraction=0.1, batch_size=8
    )  # 8 test devices
    pipe, vocab = input_pipeline.pipeline_tokens_per_s(c, batches=5)
    assert pipe > 0 and 3 < vocab < 64
    c.model.vocab_size = vocab
    assert input_pipeline.loop_tokens_per_s(c, steps=6, log_every=2) > 0


def test_torch_reference_runs_in_a_process_of_its_own():
    pytest.importorskip("torch")
    import reference_torch

    reference = reference_torch.Process()
    try:
        r = reference.measure(vocab=16, layers=1, heads=2, d=8, seq_len=8, batch=2, steps=2, warmup=1)
        assert r["step_ms"] > 0 and r["tokens_per_s"] > 0
        with pytest.raises(TypeError):  # the reference's own errors reach the caller
            reference.measure(vocab=16, layers=1)
    finally:
        reference.close()


def test_compile_time_measures_both_layouts():
    import compile_time

    rows = [
        compile_time.measure("experiments/configs/shakespeare_char.py:tiny", 3, scan, 32, 2, "full")
        for scan in (False, True)
    ]
    assert rows[0]["params"] == rows[1]["params"] and all(r["compile_s"] > 0 for r in rows)
    assert rows[1]["stablehlo_lines"] < rows[0]["stablehlo_lines"]  # one block's program, not three


@pytest.mark.slow  # starts two servers: make test-slow
def test_serving_measures_every_level_and_the_serial_server(tmp_path, tiny_config):
    import serving

    from lmjax.modes import train as train_mode

    tiny_config.train.update(num_steps=2, eval_every=2, sample_tokens=0)
    train_mode.run(tiny_config, tmp_path / "run")
    rows = serving.main(
        [f"--workdir={tmp_path / 'run'}", "--clients=1,2", "--requests=4", "--max-tokens=6", "--rounds=1"]
        + ["--prompt-chars=5", "--no-transformers", f"--out={tmp_path / 'serving.json'}"]
    )
    assert set(rows) == {"batched, 1 clients", "batched, 2 clients", "one at a time (1 slot, 1 client)"}
    for row in rows.values():
        assert row["requests"] == 4 and row["tokens"] == 24 and row["same_text_as_first_level"] == 4
    assert json.loads((tmp_path / "serving.json").read_text()).keys() == rows.keys()
