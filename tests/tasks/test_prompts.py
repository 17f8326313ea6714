"""The loss masks of the generation kinds on a decoder (lmjax/tasks/prompts.py through task_pipeline.Encode):
seq2seq trains on the target (after task.prompt, or after the chat template's user turn), chat on the
assistant turns. Targets at prompt, system and user positions can change without changing the loss; a
change to one answer token changes it."""

import numpy as np
import pytest

from lmjax.data import tokenizers
from lmjax.interop import hf
from lmjax.tasks import pipeline as task_pipeline
from lmjax.tasks import prompts
from lmjax.tasks.catalog import Task, TaskSpec
from lmjax.training import losses

CHAT = [
    {"role": "system", "content": "Speak plainly."},
    {"role": "user", "content": "thou art"},
    {"role": "assistant", "content": "you are"},
    {"role": "user", "content": "wherefore"},
    {"role": "assistant", "content": "why"},
]
SEQ2SEQ = {"source": "thou art", "target": "you are"}


@pytest.fixture(scope="module")
def model_and_tok(hf_llama):
    directory = hf_llama[0]
    return hf.load(directory)[0], tokenizers.load(directory)


def without_template(tok):
    return tokenizers.HFTokenizer(tok.json_text, tok.config | {"chat_template": None})


def task(kind: str) -> Task:
    keys = ("messages",) if kind == "chat" else ("source",)
    return Task("t", TaskSpec("generation", keys, keys[-1] if kind == "chat" else "target", ()), {}, (), kind)


@pytest.mark.parametrize(
    "kind,prompt,row,answer",
    [
        ("seq2seq", "Modern English of '{source}':", SEQ2SEQ, "you are"),  # no chat template
        ("seq2seq", "Modern English of '{source}':", SEQ2SEQ, "you are\n"),  # the turn's end, a newline
        ("seq2seq", "", SEQ2SEQ, "you are\n"),
        ("chat", "", {"messages": CHAT}, "you are\nwhy\n"),
    ],
    ids=["seq2seq-plain", "seq2seq-chat-template", "seq2seq-source-alone", "chat"],
)
def test_only_answer_tokens_carry_loss(model_and_tok, kind, prompt, row, answer, request):
    model, tok = model_and_tok
    if request.node.callspec.id == "seq2seq-plain":
        tok = without_template(tok)
    batch = task_pipeline.Encode(task(kind), tok, 96, "language_model", prompt=prompt).map(row)
    trained = batch["weights"] > 0
    assert (
        tok.decode(batch["targets"][trained]) == answer
    )  # decode drops the special tokens (EOS, <|im_end|>)
    assert tok.eos_id in batch["targets"][trained]  # the answer ends where generation should stop
    # the inputs are the row, shifted: the first input is the prompt's first token
    n = int(batch["input_mask"].sum())
    assert (batch["inputs"][1:n] == batch["targets"][: n - 1]).all()

    def loss(b):
        b = {k: v[None] for k, v in b.items()}
        return float(losses.text_to_text(model.forward(b), b)[0])

    rng = np.random.default_rng(0)
    base = loss(batch)
    untrained = batch | {"targets": np.where(trained, batch["targets"], rng.integers(0, tok.vocab_size, 96))}
    assert (untrained["targets"] != batch["targets"]).sum() > 5
    assert loss(untrained) == base
    first = np.flatnonzero(trained)[0]
    changed = batch | {"targets": batch["targets"].copy()}
    changed["targets"][first] = (changed["targets"][first] + 1) % tok.vocab_size
    assert loss(changed) != base


def test_prompts_for_generation_end_where_the_answer_starts(model_and_tok):
    _, tok = model_and_tok
    conversation = {"messages": CHAT, "reference": "why"}
    text = tok.decode(prompts.prompt_ids(tok, "", conversation))
    assert text.endswith("wherefore\nassistant\n") and "why" not in text
    text = tok.decode(prompts.prompt_ids(tok, "Q: {source} A:", SEQ2SEQ))
    assert text.endswith("user\nQ: thou art A:\nassistant\n")
    assert (
        tok.decode(prompts.prompt_ids(without_template(tok), "Q: {source} A:", SEQ2SEQ)) == "Q: thou art A:"
    )
    with pytest.raises(ValueError, match=r"task.prompt='Q:' has no '\{source\}'"):
        prompts.prompt_ids(tok, "Q:", SEQ2SEQ)
    char = tokenizers.train("char", ["abc"], 0)
    with pytest.raises(
        ValueError, match="task.kind='chat' renders conversations with the model's chat template"
    ):
        prompts.pieces(char, "", {"messages": CHAT})
