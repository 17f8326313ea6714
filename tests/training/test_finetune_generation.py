"""experiments/configs/finetune_files.py:KIND end to end for span_qa, seq2seq and chat: span QA from a tiny
pretrained BERT over contexts longer than a row (windows), seq2seq and chat from a tiny Hugging Face chat
Llama (LoRA and beam search; lambda * L_pretrain on a Llama is tests/training/test_finetune.py's), seq2seq on
an encoder-decoder from its lmjax pretraining workdir. Every metric in results.json is recomputed from
predictions/<split>.jsonl with the field's library: SQuAD v1.1's (torchmetrics' port of it), sacrebleu and
rouge-score."""

import json

import numpy as np
import pytest
from etils import epath

from experiments.configs import finetune_files, t5_span
from lmjax import checkpoint
from lmjax.modes import finetune as finetune_mode

WORDS = "ann bo cy met saw the a red big cat dog in park at home".split()


def rows(kind: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 30 if kind == "span_qa" else 7))))
        text = " ".join(words)
        if kind == "span_qa":
            at = int(rng.integers(len(words)))
            start = len(" ".join(words[:at])) + (at > 0)
            answers = {"text": [words[at], " ".join(words[at : at + 2])], "answer_start": [start, start]}
            out.append({"question": f"which {at}?", "context": text, "answers": answers})
        elif kind == "seq2seq":
            out.append({"source": text, "target": " ".join(reversed(words))})
        else:
            turns = [{"role": "user", "content": text}, {"role": "assistant", "content": words[0]}]
            out.append({"messages": [{"role": "system", "content": "Echo."}] + turns})
    return out


def recompute(kind: str, lines: list[dict]) -> dict:
    pred, ref = [x["prediction"] for x in lines], [x["reference"] for x in lines]
    if kind == "span_qa":
        squad = pytest.importorskip("torchmetrics.functional.text").squad(
            [{"prediction_text": p, "id": str(i)} for i, p in enumerate(pred)],
            [{"answers": {"text": g, "answer_start": [0] * len(g)}, "id": str(i)} for i, g in enumerate(ref)],
        )
        return {k: float(v) / 100 for k, v in squad.items()}
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    out = {
        "bleu": sacrebleu.corpus_bleu(pred, [ref]).score,
        "chrf": sacrebleu.corpus_chrf(pred, [ref]).score,
        "exact_match": np.mean([p.strip() == r.strip() for p, r in zip(pred, ref, strict=True)]),
    }
    for key in ("rouge1", "rouge2", "rougeL"):
        out[key] = np.mean([scorer.score(r, p)[key].fmeasure for p, r in zip(pred, ref, strict=True)])
    return out


def reference_of(kind: str, row: dict):
    return {"span_qa": row.get("answers", {}).get("text"), "seq2seq": row.get("target")}.get(
        kind, row.get("messages", [{}])[-1].get("content")
    )


def run_kind(kind: str, c, tmp_path) -> tuple[dict, epath.Path]:
    for role, n, seed in (("train", 16, 0), ("validation", 6, 1), ("test", 7, 2)):
        path = tmp_path / f"{role}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows(kind, n, seed)))
        c.task[f"{role}_file"] = str(path)
    c.train.update(num_steps=4, eval_every=4, eval_batches=1, checkpoint_every=4, log_every=1, progress=False)
    c.optim.update(warmup_steps=1, learning_rate=1e-3)
    workdir = epath.Path(tmp_path / "run")
    result = finetune_mode.run(c, workdir)
    saved = json.loads((workdir / checkpoint.RESULTS_FILE).read_text())
    for split, n, seed in (("validation", 6, 1), ("test", 7, 2)):
        lines = [json.loads(x) for x in (workdir / "predictions" / f"{split}.jsonl").read_text().splitlines()]
        assert [x["reference"] for x in lines] == [reference_of(kind, r) for r in rows(kind, n, seed)]
        assert all(isinstance(x["prediction"], str) for x in lines)
        for metric, value in recompute(kind, lines).items():
            assert saved[f"{split}/{metric}"] == pytest.approx(value, abs=1e-6), (split, metric)
            assert result[f"{split}/{metric}"] == saved[f"{split}/{metric}"]
        assert f"{split}/loss" in saved
    return saved, workdir


def test_span_qa_reads_long_contexts_in_windows(bert_workdir, cache_dir, tmp_path):
    c = finetune_files.get_config("span_qa")
    c.finetune.init = str(bert_workdir)
    c.task.update(seq_len=24, doc_stride=6, batch_size=8)
    c.data.update(corpus="wiki_sample", cache_dir=str(cache_dir), seq_len=32, batch_size=8)
    saved, _ = run_kind("span_qa", c, tmp_path)
    assert 0 <= saved["test/exact_match"] <= saved["test/f1"] <= 1


def decoder_config(kind: str, hf_llama, cache_dir):
    c = finetune_files.get_config(kind)
    c.finetune.init = str(hf_llama[0])
    c.task.update(seq_len=48, batch_size=8, max_new_tokens=8)
    c.data.update(corpus="wiki_sample", cache_dir=str(cache_dir), seq_len=32, batch_size=8)
    return c


@pytest.mark.slow  # ~35 s; the chat test covers a decoder generating in the default suite
def test_decoder_seq2seq_with_lora_and_beams(hf_llama, cache_dir, tmp_path):
    c = decoder_config("seq2seq", hf_llama, cache_dir)
    c.task.update(prompt="Reverse: {source}\n", num_beams=2)
    c.optim.lora_rank = 2
    saved, _ = run_kind("seq2seq", c, tmp_path)
    assert 0 <= saved["test/bleu"] <= 100 and 0 <= saved["test/rougeL"] <= 1


def test_chat(hf_llama, cache_dir, tmp_path):
    saved, _ = run_kind("chat", decoder_config("chat", hf_llama, cache_dir), tmp_path)
    assert "pretrain/heldout_loss" in saved and 0 <= saved["test/exact_match"] <= 1


def test_encoder_decoder_seq2seq_from_its_pretraining_workdir(cache_dir, tmp_path):
    from lmjax.modes import train as train_mode

    pretraining = t5_span.get_config("smoke")
    pretraining.data.cache_dir = str(cache_dir)
    train_mode.run(pretraining, tmp_path / "t5")
    c = finetune_files.get_config("seq2seq")
    c.finetune.init = str(tmp_path / "t5")
    c.data, c.train.objective = pretraining.data, pretraining.train.objective
    c.task.update(seq_len=24, target_len=12, batch_size=8, max_new_tokens=10)
    run_kind("seq2seq", c, tmp_path)
