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
