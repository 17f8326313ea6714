"""experiments/configs/finetune_files.py:KIND end to end, from a tiny pretrained BERT (the bert_workdir
fixture): each kind trains from its files (with lambda * L_pretrain, packing or LoRA) and writes
predictions/<split>.jsonl, and each reported metric is recomputed here from those files with the library the
field uses. The regression run reads its files from, and writes its workdir into, a gs:// bucket on the
emulator."""

import json

import numpy as np
import pytest
import scipy.stats
import seqeval.metrics
import sklearn.metrics
from etils import epath

from experiments.configs import finetune_files
from lmjax import checkpoint
from lmjax.modes import finetune as finetune_mode

WORDS = "ann bo cy met saw the a red big cat dog in park at home".split()


def rows(kind: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 9))))
        text = " ".join(words)
        if kind == "classification":
            out.append({"text": text, "text_pair": words[0], "label": ["yes", "no", "maybe"][len(words) % 3]})
        elif kind == "regression":
            out.append({"text": text, "text_pair": " ".join(words[:2]), "score": len(words) / 4})
        else:
            tags = ["B-PER" if w in ("ann", "bo", "cy") else "O" for w in words]
            out.append({"tokens": words, "tags": tags})
    return out


def config(kind: str, bert_workdir, cache_dir, files: dict):
    c = finetune_files.get_config(kind)
    c.finetune.init = str(bert_workdir)
    c.task.update(seq_len=16, batch_size=8, **files)
    c.data.update(corpus="wiki_sample", cache_dir=str(cache_dir), seq_len=32, batch_size=8)
    c.train.update(num_steps=4, eval_every=2, eval_batches=1, checkpoint_every=4, log_every=1, progress=False)
    c.optim.update(warmup_steps=1, learning_rate=1e-3)
    # the options that go with every kind, one a run: lambda * L_pretrain, packed texts, LoRA
    c.finetune.pretrain_lambda = 0.1 if kind == "classification" else 0.0
    c.task.pack = kind == "regression"
    c.optim.lora_rank = 2 if kind == "tokens" else 0
    return c


def recompute(kind: str, lines: list[dict]) -> dict:
    pred, ref = [x["prediction"] for x in lines], [x["reference"] for x in lines]
    if kind == "classification":
        return {
            "accuracy": sklearn.metrics.accuracy_score(ref, pred),
            "macro_f1": sklearn.metrics.f1_score(ref, pred, average="macro"),
        }
    if kind == "regression":
        return {
            "pearson": scipy.stats.pearsonr(pred, ref)[0],
            "spearman": scipy.stats.spearmanr(pred, ref)[0],
            "mse": sklearn.metrics.mean_squared_error(ref, pred),
        }
    flat_pred = [t if t is not None else "<cut>" for tags in pred for t in tags]
    pred = [[t or "O" for t in tags] for tags in pred]
    return {
        "token_accuracy": sklearn.metrics.accuracy_score([t for tags in ref for t in tags], flat_pred),
        "entity_precision": seqeval.metrics.precision_score(ref, pred),
        "entity_recall": seqeval.metrics.recall_score(ref, pred),
        "entity_f1": seqeval.metrics.f1_score(ref, pred),
    }


@pytest.mark.parametrize("kind", ["classification", "regression", "tokens"])
def test_each_kind_fine_tunes_from_files_and_its_metrics_are_the_libraries(
    kind, bert_workdir, cache_dir, tmp_path, request
):
    where = request.getfixturevalue("bucket") + "/files" if kind == "regression" else str(tmp_path)
    directory = epath.Path(where)
    files = {}
    for role, n, seed in (("train", 24, 0), ("validation", 10, 1), ("test", 11, 2)):
        text = "".join(json.dumps(r) + "\n" for r in rows(kind, n, seed))
        (directory / f"{role}.jsonl").write_text(text)
        files[f"{role}_file"] = f"{where}/{role}.jsonl"
    workdir = epath.Path(f"{where}/run")
    result = finetune_mode.run(config(kind, bert_workdir, cache_dir, files), workdir)

    saved = json.loads((workdir / checkpoint.RESULTS_FILE).read_text())
    for split, n, seed in (("validation", 10, 1), ("test", 11, 2)):
        lines = [json.loads(x) for x in (workdir / "predictions" / f"{split}.jsonl").read_text().splitlines()]
        reference = {"classification": "label", "regression": "score", "tokens": "tags"}[kind]
        assert [x["reference"] for x in lines] == [r[reference] for r in rows(kind, n, seed)]
        for metric, value in recompute(kind, lines).items():
            assert saved[f"{split}/{metric}"] == pytest.approx(value, abs=1e-6), (split, metric)
            assert result[f"{split}/{metric}"] == saved[f"{split}/{metric}"]
        assert f"{split}/loss" in saved
    logged = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    first = "validation/" + next(iter(recompute(kind, lines)))
    assert [r["step"] for r in logged if first in r] == [2, 4]

    if kind == "classification":  # bad input in the same workdir: one line, and the run's files stay

        def files_of_the_run():
            paths = [*workdir.iterdir(), *(workdir / "predictions").iterdir()]
            return {p.name: p.read_bytes() for p in paths if p.is_file()}

        before = files_of_the_run()
        assert {"results.json", "metrics.jsonl", "validation.jsonl", "test.jsonl"} <= set(before)
        bad = {"text": "a b", "text_pair": "a", "label": "unheard-of"}
        (directory / "validation.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(ValueError, match="validation.jsonl:1: the label 'unheard-of' never occurs"):
            finetune_mode.run(config(kind, bert_workdir, cache_dir, files), workdir)
        assert files_of_the_run() == before
