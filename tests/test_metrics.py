import pytest

from lmjax import metrics


def test_writer_keeps_lines_up_to_the_resumed_step_and_plots(tmp_path):
    w = metrics.Writer(tmp_path)
    for step in (1, 2, 3, 4):
        w.scalars(step, {"train/loss": 4.0 - step / 2})
    w.scalars(2, {"eval/loss": 3.5})
    w.text(2, "sample", "hello")
    w.close()
    w = metrics.Writer(tmp_path, resume_step=2)  # a run resumed from step 2 redoes steps 3 and 4
    w.close()
    rows = metrics.read_jsonl(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 2, 2] and rows[3]["sample"] == "hello"
    png = metrics.plot_losses(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / metrics.TB_DIR).glob("events.out.tfevents.*"))


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("TPU v4", 275.0),
        ("TPU v5 lite", 197.0),
        ("TPU v5", 459.0),
        ("TPU v5p", 459.0),
        ("TPU v6 lite", 918.0),
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA L40S", 362.1),
        ("NVIDIA L4", 121.0),
        ("NVIDIA B200", 2250.0),
        ("cpu", None),
    ],
)
def test_peak_table_knows_tpus_and_current_nvidia_gpus(kind, peak):
    assert metrics.peak_tflops(kind) == peak
