"""Tasks from the user's files (lmjax/tasks/files.py): the columns each kind reads, the label sets, and a
one-line refusal for each kind of bad file, which leaves the workdir as it was."""

import json

import numpy as np
import pytest

from experiments.configs import finetune_files
from lmjax.data import tokenizers
from lmjax.tasks import files as task_files
from lmjax.tasks import pipeline as task_pipeline
from lmjax.tasks import resolve as task_resolve
from lmjax.training import prepare


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task_config(kind, **files):
    c = finetune_files.get_config(kind).task
    c.update(**files)
    return c


def test_classification_from_csv_with_pairs_and_string_labels(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text('premise,hypothesis,gold\n"a cat, asleep",a cat,yes\ndogs run,cats sit,no\nx,y,maybe\n')
    test = tmp_path / "test.csv"
    test.write_text("premise,hypothesis,gold\nbirds fly,birds,yes\n")
    c = task_config("classification", train_file=str(train), test_file=str(test))
    c.columns.update(text="premise", text_pair="hypothesis", label="gold")
    task = task_files.load(c)
    assert task.name == "train" and task.kind == "classification" and set(task.sources) == {"train", "test"}
    assert task.values == ("maybe", "no", "yes") and task.num_labels == 3
    assert task.spec.text_keys == ("text", "text_pair") and task.spec.head == "classification"
    first = {"text": "a cat, asleep", "text_pair": "a cat", "label": 2, "reference": "yes"}
    assert task.sources["train"][0] == first
    tok = tokenizers.train("char", ["a cat asleep dogs run birds fly"], 0)
    batches = task_pipeline.eval_batches(task, tok, "test", head="classification", seq_len=32, batch_size=2)
    batch = next(batches)
    assert batch["labels"].tolist() == [2, 2] and batch["weights"].tolist() == [1.0, 0.0]


def test_integer_labels_keep_their_order_and_type(tmp_path):
    rows = [{"text": t, "label": y} for t, y in (("a", 10), ("b", 2), ("c", 2))]
    task = task_files.load(task_config("classification", train_file=write_jsonl(tmp_path / "t.jsonl", rows)))
    assert task.values == (2, 10) and [e["label"] for e in task.sources["train"]] == [1, 0, 0]
    assert task.spec.text_keys == ("text",)


def test_regression_and_tokens(tmp_path):
    rows = [{"text": "a", "text_pair": "b", "score": 0.5}, {"text": "c", "text_pair": "d", "score": "3"}]
    task = task_files.load(task_config("regression", train_file=write_jsonl(tmp_path / "r.jsonl", rows)))
    assert [e["label"] for e in task.sources["train"]] == [0.5, 3.0] and task.num_labels == 0
    tok = tokenizers.train("char", ["abcd"], 0)
    batch = next(task_pipeline.eval_batches(task, tok, "train", head="regression", seq_len=8, batch_size=2))
    assert batch["labels"].dtype == np.float32 and batch["labels"].tolist() == [0.5, 3.0]

    rows = [{"words": ["Ann", "met", "Bo"], "ner": ["B-PER", "O", "B-PER"]}, {"words": ["hi"], "ner": ["O"]}]
    c = task_config("tokens", train_file=write_jsonl(tmp_path / "t.jsonl", rows))
    c.columns.update(tokens="words", tags="ner")
    task = task_files.load(c)
    assert task.values == ("B-PER", "O") and task.spec.head == "token_classification"
    assert task.sources["train"][0]["label"] == [0, 1, 0]
    tok = tokenizers.train("char", ["Ann met Bo hi"], 0)
    encode = task_pipeline.Encode(task, tok, 6, "token_classification")
    example = encode.map(task.sources["train"][0])
    assert example["weights"].tolist() == [1, 0, 0, 1, 0, 0]  # each word's first piece (plain: no [CLS])
    assert encode.words(["Ann", "met", "Bo"])[2] == [0, 3, None]  # Bo is cut off (EOS takes the last slot)


BAD = {
    "missing column": (
        [{"text": "a", "label": "x"}, {"txt": "b", "label": "y"}],
        None,
        r"t.jsonl:2: no column 'text' \(task.columns.text\); the row has \['label', 'txt'\]",
    ),
    "empty file": ([], None, r"task.train_file=.*t.jsonl' is empty: it holds no rows"),
    "unseen label": (
        [{"text": "a", "label": "x"}],
        [{"text": "b", "label": "x"}, {"text": "c", "label": "z"}],
        r"v.jsonl:2: the label 'z' never occurs in the train file, whose labels are \['x'\]",
    ),
    "bad json": ('{"text": "a", "label": "x"}\n{"text": "b", label: 1}\n', None, "t.jsonl:2: not valid JSON"),
    "bad score": ([{"text": "a", "score": "high"}], None, "t.jsonl:1: the score 'high' is not a finite"),
    "answer elsewhere": (
        [{"question": "q", "context": "a cat", "answers": {"text": ["cat"], "answer_start": [0]}}],
        None,
        "t.jsonl:1: the answer 'cat' is not at character 0 of the context",
    ),
    "no answers": (
        [{"question": "q", "context": "a", "answers": {"text": [], "answer_start": []}}],
        None,
        r"t.jsonl:1: column 'answers' must be SQuAD's",
    ),
    "no assistant": (
        [{"messages": [{"role": "user", "content": "hi"}]}],
        None,
        "t.jsonl:1: column 'messages' must be a list of .* at least one assistant turn",
    ),
    "missing target": (
        [{"source": "a", "tgt": "b"}],
        None,
        r"t.jsonl:1: no column 'target' \(task.columns.targ",
    ),
}
KIND_OF = {"bad score": "regression", "answer elsewhere": "span_qa", "no answers": "span_qa"}
KIND_OF |= {"no assistant": "chat", "missing target": "seq2seq"}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_files_end_in_one_line_naming_the_file(case, tmp_path):
    train, validation, pattern = BAD[case]
    path = tmp_path / "t.jsonl"
    path.write_text(train) if isinstance(train, str) else write_jsonl(path, train)
    files = dict(train_file=str(path))
    if validation:
        files["validation_file"] = write_jsonl(tmp_path / "v.jsonl", validation)
    with pytest.raises(ValueError, match=pattern) as error:
        task_files.load(task_config(KIND_OF.get(case, "classification"), **files))
    assert "\n" not in str(error.value)


def test_bad_settings_end_in_one_line(tmp_path):
    csv = tmp_path / "t.csv"
    csv.write_text("tokens,tags\na,O\n")
    with pytest.raises(ValueError, match="t.csv: a CSV file cannot hold this kind's lists; give a JSONL"):
        task_files.load(task_config("tokens", train_file=str(csv)))
    c = task_config("classification", train_file=str(csv))
    c.kind = "spans"
    with pytest.raises(
        ValueError, match=r"task.kind='spans' is unknown; use one of \['chat', 'classification'"
    ):
        task_files.load(c)
    with pytest.raises(ValueError, match="task.train_file='.*nowhere.jsonl' does not exist"):
        task_files.load(task_config("classification", train_file=str(tmp_path / "nowhere.jsonl")))
    c = finetune_files.get_config("classification")
    with pytest.raises(ValueError, match="task.kind='classification' needs its data: set task.train_file"):
        prepare.check_config(c)
    c.task.update(kind="", train_file=str(csv))
    with pytest.raises(ValueError, match="task.train_file needs task.kind: classification, regression, "):
        prepare.check_config(c)
    with pytest.raises(ValueError, match="finetune_files.py takes a kind, one of"):
        finetune_files.get_config("seq2seqq")
    # a kind the model cannot do: an encoder-decoder writes label names of the named tasks only
    c = finetune_files.get_config("classification")
    c.task.train_file = write_jsonl(tmp_path / "c.jsonl", [{"text": "a", "label": 1}])
    c.model.family = "encoder_decoder"
    with pytest.raises(ValueError, match="model.family='encoder_decoder' fine-tunes .* not task.kind="):
        task_resolve.task_and_head(c)

    # a kind the model cannot do: an encoder does not generate, an encoder-decoder does not chat
    for kind, family in (("seq2seq", "encoder"), ("chat", "encoder_decoder")):
        c = finetune_files.get_config(kind)
        c.task.train_file = write_jsonl(tmp_path / "g.jsonl", [{"source": "a", "target": "b"}])
        if kind == "chat":
            c.task.train_file = write_jsonl(
                tmp_path / "g.jsonl", [{"messages": [{"role": "assistant", "content": "b"}]}]
            )
        c.model.family = family
        with pytest.raises(ValueError, match=f"task.kind='{kind}' generates text, which a model.family="):
            task_resolve.task_and_head(c)


def test_span_qa_seq2seq_and_chat_rows(tmp_path):
    squad = {
        "question": "Who?",
        "context": "Ann met Bo.",
        "answers": {"text": ["Bo", "Bo."], "answer_start": [8, 8]},
    }
    task = task_files.load(task_config("span_qa", train_file=write_jsonl(tmp_path / "q.jsonl", [squad])))
    assert task.spec.head == "span_qa" and task.spec.text_keys == ("question", "context")
    assert task.sources["train"][0]["reference"] == ["Bo", "Bo."] and task.num_labels == 0

    csv = tmp_path / "s.csv"
    csv.write_text("old,new\nthou art,you are\n")
    c = task_config("seq2seq", train_file=str(csv))
    c.columns.update(source="old", target="new")
    task = task_files.load(c)
    assert task.sources["train"] == [{"source": "thou art", "target": "you are", "reference": "you are"}]

    turns = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi", "name": "x"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    task = task_files.load(
        task_config("chat", train_file=write_jsonl(tmp_path / "c.jsonl", [{"messages": turns}]))
    )
    example = task.sources["train"][0]
    assert example["reference"] == "Hello" and len(example["messages"]) == 3  # up to the last assistant turn
    assert example["messages"][1] == {"role": "user", "content": "Hi"}


def test_a_prompt_without_its_source_or_a_chat_without_a_template_stops_before_the_run(tmp_path):
    tok = tokenizers.train("char", ["abcdefghijklmnopqrstuvwxyz "], 0)
    c = task_config("seq2seq", train_file=write_jsonl(tmp_path / "s.jsonl", [{"source": "a", "target": "b"}]))
    c.prompt = "Translate:"
    with pytest.raises(ValueError, match=r"task.prompt='Translate:' has no '\{source\}'"):
        task_files.for_tokenizer(task_files.load(c), tok, c)
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    c = task_config("chat", train_file=write_jsonl(tmp_path / "c.jsonl", [{"messages": turns}]))
    with pytest.raises(
        ValueError, match="task.kind='chat' renders conversations with the model's chat template"
    ):
        task_files.for_tokenizer(task_files.load(c), tok, c)
