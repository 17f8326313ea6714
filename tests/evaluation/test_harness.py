"""lm-evaluation-harness against lmjax, three ways on the offline tasks of experiments/harness/: the harness's
local-completions model against --config.mode=serve (the server's tokenizer detected through its endpoints;
each sample's log-likelihood equal to transformers' on the same weights), the in-process LM (the same scores
as the server's, for every kind of request), and train.harness_tasks during a tiny training run."""

import importlib.util
import json

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval", reason="make test installs lm-evaluation-harness")
torch = pytest.importorskip("torch", reason="make test installs torch")

from lmjax import metrics  # noqa: E402
from lmjax.evaluation import harness  # noqa: E402
from lmjax.evaluation.lm import LmjaxLM  # noqa: E402
from lmjax.modes import harness as harness_mode  # noqa: E402
from lmjax.modes import train as train_mode  # noqa: E402
from lmjax.training import pretrained  # noqa: E402
from tests.serving.conftest import running_server  # noqa: E402

MODEL = "tiny-llama"
TASKS = ["rt_sentiment", "shakespeare_ppl", "analogies"]
LIMIT = 6


@pytest.fixture
def chat_config(corpus_file, cache_dir, hf_llama):
    """The tiny decoder with the hf_llama fixture's tokenizer (tests/serving/conftest.py's)."""
    from experiments.configs import shakespeare_char

    c = shakespeare_char.get_config("tiny")
    c.data.update(text_files=str(corpus_file), cache_dir=str(cache_dir), tokenizer_path=str(hf_llama[0]))
    c.train.sample_tokens = 0
    return c


def run(lm, tasks=TASKS):
    return lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=harness.task_manager("experiments/harness"),  # built once a process
        limit=LIMIT,
        bootstrap_iters=0,
        log_samples=True,
    )


def responses(out, task):
    return [s["resps"][0][0] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]


@pytest.fixture(scope="module")
def served(hf_llama, tmp_path_factory):
    """The local-completions model's results against a server of the hf_llama directory."""
    from lm_eval.api.registry import get_model

    workdir = tmp_path_factory.mktemp("harness_server") / "serve"
    overrides = (f"--config.finetune.init={hf_llama[0]}", f"--config.serve.model_name={MODEL}")
    with running_server(workdir, *overrides) as (url, _):
        # the harness keeps max_length - 1 positions (one for the token an API model generates): 128
        lm = get_model("local-completions")(
            model=MODEL, base_url=f"{url}/v1/completions", max_length=129, num_concurrent=1, max_retries=1
        )
        assert lm.tokenizer_backend == "remote"  # detected from /tokenizer_info and /tokenize
        yield run(lm)


def test_local_completions_scores_each_sample_as_transformers(served, hf_llama):
    directory, reference, _ = hf_llama
    tok = pretrained.load(str(directory)).tokenizer
    samples = served["samples"]["rt_sentiment"]
    assert len(samples) == LIMIT
    for s in samples:
        for k, resp in enumerate(s["resps"]):  # one per choice
            context, continuation = s["arguments"][k]
            ids, n = list(tok.encode(context + continuation)), len(tok.encode(context))
            ids, n = ids[-128:], n - max(0, len(ids) - 128)  # the model's 128 positions: cut from the left
            with torch.no_grad():
                logp = torch.log_softmax(reference(torch.tensor([ids])).logits[0].double(), -1).numpy()
            want = sum(logp[p - 1, ids[p]] for p in range(n, len(ids)))
            assert resp[0][0] == pytest.approx(want, abs=1e-3)
    assert 0 <= served["results"]["rt_sentiment"]["acc,none"] <= 1


def test_the_in_process_lm_scores_as_the_server_for_every_kind_of_request(served, hf_llama):
    pre = pretrained.load(str(hf_llama[0]))
    model_config = pretrained.model_config_of(pre)
    from lmjax import models

    graphdef = models.graphdef(model_config)
    here = run(LmjaxLM(graphdef, pre.params(), pre.tokenizer, max_len=model_config.max_len, batch_size=4))
    for task in ("rt_sentiment", "shakespeare_ppl"):  # multiple choice; rolling windows of 128 tokens
        ours, theirs = responses(here, task), responses(served, task)
        np.testing.assert_allclose(
            np.asarray(ours, float).ravel(), np.asarray(theirs, float).ravel(), atol=1e-4, err_msg=task
        )
    assert responses(here, "analogies") == responses(served, "analogies")  # greedy generation
    for task, metric in (("rt_sentiment", "acc,none"), ("shakespeare_ppl", "word_perplexity,none")):
        assert here["results"][task][metric] == pytest.approx(served["results"][task][metric], rel=1e-5)


def test_mode_harness_scores_a_hugging_face_directory_into_results_json(
    chat_config, hf_llama, tmp_path, capsys
):
    chat_config.update(mode="harness")
    chat_config.finetune.init = str(hf_llama[0])
    chat_config.harness.update(tasks="rt_sentiment", include_path="experiments/harness", limit=2)
    result = harness_mode.run(chat_config, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == result
    assert (
        0 <= result["harness/rt_sentiment/acc"] <= 1 and "harness/rt_sentiment/acc" in capsys.readouterr().out
    )
    with pytest.raises(ValueError, match="harness task 'no_such_task' is unknown to lm-evaluation-harness"):
        harness.evaluate(None, chat_config.harness, ["no_such_task"])


def test_train_harness_tasks_writes_harness_metrics(chat_config, tmp_path):
    chat_config.train.update(num_steps=2, eval_every=1, harness_tasks="rt_sentiment", harness_every=1)
    chat_config.harness.update(include_path="experiments/harness", limit=4)
    train_mode.run(chat_config, tmp_path)
    rows = [r for r in metrics.read_jsonl(tmp_path) if "harness/rt_sentiment/acc" in r]
    assert [r["step"] for r in rows] == [1, 2] and all(0 <= r["harness/rt_sentiment/acc"] <= 1 for r in rows)
    assert (
        json.loads((tmp_path / "results.json").read_text())["harness/rt_sentiment/acc"]
        == rows[-1]["harness/rt_sentiment/acc"]
    )


def test_without_the_harness_it_says_what_to_install(chat_config, tmp_path, monkeypatch):
    find = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else find(name, *a)
    )
    chat_config.update(mode="harness")
    chat_config.harness.tasks = "rt_sentiment"
    with pytest.raises(
        ValueError, match=r"mode=harness needs lm-evaluation-harness: pip install 'lmjax\[eval\]'"
    ):
        harness_mode.run(chat_config, tmp_path)
    chat_config.update(mode="train")
    chat_config.train.harness_tasks = "rt_sentiment"
    with pytest.raises(ValueError, match=r"train.harness_tasks needs lm-evaluation-harness"):
        train_mode.run(chat_config, tmp_path / "train")


@pytest.mark.slow  # fine-tuning with the harness at two steps (a minute)
def test_finetune_harness_tasks_score_the_backbone(hf_llama, tiny_config, tmp_path):
    """Fine-tuning a task head on the Hugging Face Llama with its backbone at learning rate 0: the harness
    scores taken during the run are mode=harness's on the directory itself."""
    from experiments.configs import finetune_bert_mlm
    from lmjax.modes import finetune as finetune_mode

    c = finetune_bert_mlm.get_config("smoke")
    c.data.update(tiny_config.data.to_dict() | dict(batch_size=8, seq_len=32))
    c.train.update(objective="causal_lm", num_steps=4, eval_every=2, harness_tasks="shakespeare_ppl")
    c.train.harness_every = 2
    c.task.update(pooling="last", seq_len=32, batch_size=8)
    c.optim.update(learning_rate=0.0, head_learning_rate=1e-2)
    c.finetune.init = str(hf_llama[0])
    c.harness.update(include_path="experiments/harness", limit=2)
    result = finetune_mode.run(c, tmp_path / "finetune")
    metric = "harness/shakespeare_ppl/word_perplexity"
    rows = [r for r in metrics.read_jsonl(tmp_path / "finetune") if metric in r]
    assert [r["step"] for r in rows] == [2, 4] and result[metric] == rows[-1][metric]

    c.update(mode="harness")
    c.harness.tasks = "shakespeare_ppl"
    base = harness_mode.run(c, tmp_path / "base")
    assert [r[metric] for r in rows] == pytest.approx([base[metric]] * 2, rel=1e-5)
