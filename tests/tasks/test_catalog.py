import numpy as np
import pytest
import tensorflow_datasets as tfds
from ml_collections import ConfigDict

from lmjax.data import tokenizers
from lmjax.tasks import catalog, qa_windows
from lmjax.tasks import pipeline as task_pipeline
from lmjax.training import pretrained
from lmjax.training.pretrained import MINILM, init_path


def task_config(name, cache_dir="", num_labels=0):
    return ConfigDict(dict(name=name, tfds_data_dir="", num_labels=num_labels, cache_dir=str(cache_dir)))


@pytest.fixture(scope="module")
def wordpiece():
    return tokenizers.load(init_path(MINILM))


def test_rotten_tomatoes_splits_are_fixed_disjoint_and_deduplicated(cache_dir):
    task = catalog.load(task_config("rotten_tomatoes", cache_dir))
    sizes = {k: len(v) for k, v in task.sources.items()}
    assert sizes == {"train": 10216, "validation": 1276, "test": 1259} and sum(sizes.values()) == 12751
    texts = {
        k: {v[i]["text"].decode().strip().lower() for i in range(len(v))} for k, v in task.sources.items()
    }
    assert sum(map(len, texts.values())) == 12751  # no repeats, within or across splits
    assert task.label_names == ("rotten", "fresh")
    labels = [task.sources["test"][i]["label"] for i in range(len(task.sources["test"]))]
    assert 0.5 < np.mean(labels) < 0.65
    assert all(catalog.split_of(t) == "test" for t in list(texts["test"])[:50])


def test_eval_batches_cover_a_split_exactly(cache_dir, wordpiece):
    task = catalog.load(task_config("rotten_tomatoes", cache_dir))
    batches = list(
        task_pipeline.eval_batches(task, wordpiece, "test", head="classification", seq_len=64, batch_size=100)
    )
    assert len(batches) == 13 and sum(b["weights"].sum() for b in batches) == 1259
    first = batches[0]
    assert first["inputs"][0, 0] == wordpiece.special_id("[CLS]")
    n = first["input_mask"][0].sum()
    assert first["inputs"][0, n - 1] == wordpiece.special_id("[SEP]") and (first["inputs"][0, n:] == 0).all()


def test_trimmed_batches_score_as_full_length_ones(cache_dir):
    """task.trim_multiple: each batch cut to a multiple of 16 holding its longest text; MiniLM's mean-pooled
    outputs equal those of the same batch at the full 64 tokens."""
    import jax.numpy as jnp
    from flax import nnx

    from lmjax import models
    from lmjax.models import heads

    pre = pretrained.load(MINILM)
    task = catalog.load(task_config("rotten_tomatoes", cache_dir))
    kw = dict(head="classification", seq_len=64, batch_size=8)
    full = list(task_pipeline.eval_batches(task, pre.tokenizer, "test", **kw))[:20]
    cut = list(task_pipeline.eval_batches(task, pre.tokenizer, "test", trim_multiple=16, **kw))[:20]
    lengths = {b["inputs"].shape[1] for b in cut}
    assert len(lengths) > 1 and lengths <= {16, 32, 48, 64}
    model = models.build(pre.model_config, nnx.Rngs(0))
    nnx.update(model, pre.params())
    shorter = [(f, c) for f, c in zip(full, cut, strict=True) if c["inputs"].shape[1] < 64]
    for f, c in shorter[:3]:
        L = c["inputs"].shape[1]
        assert f["input_mask"][:, L:].sum() == 0 and (f["inputs"][:, :L] == c["inputs"]).all()
        pooled = [
            heads.pool(
                model.encode(jnp.asarray(b["inputs"]), mask_BL=b["input_mask"]), b["input_mask"], "mean"
            )
            for b in (f, c)
        ]
        np.testing.assert_allclose(pooled[1], pooled[0], atol=2e-5)
    train = iter(task_pipeline.train_dataset(task, pre.tokenizer, seed=0, trim_multiple=16, **kw))
    assert {next(train)["input_mask"].shape[1] for _ in range(20)} <= {16, 32, 48, 64}


def test_pack_texts_places_each_text_once_in_a_document_of_its_own():
    lengths = np.array([10, 3, 7, 2, 5, 1, 4])
    ids = np.arange(7)[:, None] * 100 + np.arange(1, 11)
    mask = (np.arange(10) < lengths[:, None]).astype(np.int32)
    batch = {
        "inputs": (ids * mask).astype(np.int32),
        "segments": (np.arange(10) >= 2).astype(np.int32) * mask,
        "input_mask": mask,
        "labels": np.arange(7, dtype=np.int32),
        "weights": np.ones(7, np.float32),
    }
    out = task_pipeline.PackTexts(pad_id=9, row_multiple=3).map(batch)
    # first fit, longest first: [10], [7, 3], [5, 4, 1], [2]; then padded to a multiple of 3 rows
    assert out["inputs"].shape == (6, 10) and (out["document_ids"][4:] == 0).all()
    assert (out["labels"] == batch["labels"]).all() and (out["weights"] == 1).all()
    assert out["input_mask"].sum() == lengths.sum() and (out["inputs"][out["input_mask"] == 0] == 9).all()
    for t, n in enumerate(lengths):
        row, document = out["text_rows"][t], out["text_documents"][t]
        here = out["document_ids"][row] == document
        assert here.sum() == n and (out["input_mask"][row][here] == 1).all()
        assert (out["inputs"][row][here] == ids[t, :n]).all()
        assert (out["segments"][row][here] == batch["segments"][t, :n]).all()
        assert (out["positions"][row][here] == np.arange(n)).all()


def test_packed_minilm_batches_hold_the_same_texts_and_scores(cache_dir):
    """task.pack on the real data: the train stream's batches hold the padded stream's texts (packed into
    about half the rows), and MiniLM's mean-pooled classifier scores each text as in its padded row."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from lmjax import models
    from lmjax.models import heads

    pre = pretrained.load(MINILM)
    task = catalog.load(task_config("rotten_tomatoes", cache_dir))
    kw = dict(head="classification", seq_len=64, batch_size=16)
    padded = iter(task_pipeline.train_dataset(task, pre.tokenizer, seed=3, **kw))
    packed = iter(task_pipeline.train_dataset(task, pre.tokenizer, seed=3, pack=True, **kw))
    model = heads.TaskModel(
        models.build(pre.model_config, nnx.Rngs(0)),
        head="classification",
        num_labels=2,
        pooling="mean",
        dropout=0.0,
        rngs=nnx.Rngs(1),
    )
    nnx.update(model.backbone, pre.params())
    for _ in range(2):
        p, q = next(padded), next(packed)
        assert (p["labels"] == q["labels"]).all() and q["inputs"].shape[0] <= 10
        for t in range(16):
            here = q["document_ids"][q["text_rows"][t]] == q["text_documents"][t]
            assert (q["inputs"][q["text_rows"][t]][here] == p["inputs"][t][p["input_mask"][t] > 0]).all()
        logits = [model(jax.tree.map(jnp.asarray, b))["logits"] for b in (p, q)]
        np.testing.assert_allclose(logits[1], logits[0], atol=2e-5)


def test_label_mismatch_fails_clearly(cache_dir):
    with pytest.raises(ValueError, match=r"task.num_labels=5 but rotten_tomatoes has 2 labels"):
        catalog.load(task_config("rotten_tomatoes", cache_dir, num_labels=5))
    with pytest.raises(ValueError, match="task.name='nope' is unknown"):
        catalog.load(task_config("nope"))


@pytest.mark.parametrize(
    "name,head",
    [
        ("glue/sst2", "classification"),
        ("imdb_reviews", "classification"),
        ("conll2003", "token_classification"),
        ("squad", "span_qa"),
    ],
)
def test_catalog_tasks_by_name(name, head, wordpiece):
    with tfds.testing.mock_data(num_examples=6):
        task = catalog.load(task_config(name))
        assert task.spec.head == head and len(task.sources["train"]) == 6
        task = qa_windows.expand(task, wordpiece, 32, 0)
        batch = next(
            iter(task_pipeline.train_dataset(task, wordpiece, head=head, seq_len=32, batch_size=3, seed=0))
        )
    assert batch["inputs"].shape == (3, 32) and batch["input_mask"].sum() > 0
    if head == "classification":
        assert batch["labels"].shape == (3,) and (batch["labels"] < task.num_labels).all()
    if head == "token_classification":
        assert task.num_labels == 9 and batch["labels"].shape == (3, 32)
    if head == "span_qa":
        assert batch["start"].shape == (3,) and (batch["start"] <= batch["end"]).all()


def ner_task():
    spec = catalog.TASKS["conll2003"]
    rows = [{"tokens": [b"EU", b"rejects", b"German", b"call"], "ner": np.asarray([3, 0, 7, 0])}]
    return catalog.Task(
        "conll2003",
        spec,
        {"train": rows, "validation": rows, "test": rows},
        ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"),
    )


def test_token_labels_sit_on_each_words_first_piece(wordpiece):
    ex = task_pipeline.Encode(ner_task(), wordpiece, 16, "token_classification").map(
        ner_task().sources["train"][0]
    )
    n = ex["input_mask"].sum()
    pieces = [wordpiece.decode([i]) for i in ex["inputs"][:n]]
    assert not ex["weights"][n:].any()  # padding is not scored
    scored = [
        (p, int(label)) for p, label, w in zip(pieces, ex["labels"][:n], ex["weights"][:n], strict=True) if w
    ]
    assert [label for _, label in scored] == [3, 0, 7, 0]
    assert [p for p, _ in scored][0] == "eu" and ex["weights"][0] == 0  # [CLS] is not scored


def test_squad_rows_read_in_windows_and_their_answer_maps_to_its_pieces(wordpiece):
    spec = catalog.TASKS["squad"]
    context = "The Normans were a people who in the 10th and 11th centuries gave their name to Normandy."
    row = catalog.squad_row(
        {
            "question": b"When did the Normans name Normandy?",
            "context": context.encode(),
            "answers": {
                "text": np.asarray([b"10th and 11th centuries"]),
                "answer_start": np.asarray([context.index("10th")]),
            },
        }
    )
    assert row["reference"] == ["10th and 11th centuries"] and row["answers"]["answer_start"] == [37]
    task = catalog.Task("squad", spec, {"train": [row]}, (), "span_qa")
    (window,) = qa_windows.expand(task, wordpiece, 64, 0).sources["train"]
    ex = task_pipeline.Encode(task, wordpiece, 64, "span_qa").map(window)
    assert wordpiece.decode(ex["inputs"][ex["start"] : ex["end"] + 1]) == "10th and 11th centuries"
    assert ex["answer_mask"][ex["start"]] and ex["answer_mask"][0] and not ex["answer_mask"][1]
    windows = qa_windows.expand(task, wordpiece, 16, 4).sources["train"]  # the answer is in a later window
    assert (windows[0]["start"], windows[0]["end"]) == (0, 0)
    assert any(w["start"] > 0 for w in windows)
