"""Rows of the generation kinds (task.kind seq2seq and chat) as a decoder reads them: token pieces of which
only the answer's carry loss, and the prompt a model generates from.

  seq2seq  the model's chat template over one user turn, task.prompt with '{source}' filled in (empty: the
           source alone), and the assistant's, the target; a tokenizer without a chat template reads
           task.prompt (empty: '{source}\\n') followed by the target and EOS
  chat     the chat template over the conversation; the loss falls on the assistant turns (each turn's
           content and the template's end of turn), never on system or user turns

A conversation's pieces come from rendering it turn by turn (each assistant turn: the template before it,
with the generation prompt, then the turn), so a template that renders no prefix of itself is refused.
"""

from __future__ import annotations

import numpy as np

from lmjax.errors import InputError

PLAIN = "{source}\n"


def conversation(tok, prompt: str, example: dict) -> list[dict] | None:
    """The row as chat messages, or None when it is read with a plain prompt template."""
    if "messages" in example:
        if not getattr(tok, "chat_template", None):
            raise InputError(
                "task.kind='chat' renders conversations with the model's chat template, which this "
                f"{tok.kind} tokenizer lacks; start from a chat model (finetune.init)"
            )
        return example["messages"]
    if not getattr(tok, "chat_template", None):
        return None
    user = fill(prompt, example["source"]) if prompt else example["source"]
    return [{"role": "user", "content": user}, {"role": "assistant", "content": example["target"]}]


def fill(prompt: str, source: str) -> str:
    if "{source}" not in prompt:
        raise InputError(f"task.prompt={prompt!r} has no '{{source}}' to put the source text in")
    return prompt.replace("{source}", source)


def pieces(tok, prompt: str, example: dict) -> list[tuple[np.ndarray, bool]]:
    """(token ids, trained) pieces of a row, in order: trained pieces carry the loss."""
    messages = conversation(tok, prompt, example)
    if messages is None:
        target = np.append(tok.encode(example["target"]), tok.eos_id)
        return [(tok.encode(fill(prompt or PLAIN, example["source"])), False), (target, True)]
    texts, done = [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tok.apply_chat_template(messages[:i], add_generation_prompt=True)
        after = tok.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and after.startswith(before)):
            raise InputError(
                "the chat template does not render a conversation's start as a prefix of the whole; "
                "its turns cannot be told apart for an assistant-only loss"
            )
        texts += [(before[len(done) :], False), (after[len(before) :], True)]
        done = after
    return [(tok.encode(text).astype(np.int32), trained) for text, trained in texts if text]


def prompt_ids(tok, prompt: str, example: dict) -> np.ndarray:
    """What the model generates the reference from: the prompt of a seq2seq row, or a conversation up to its
    last assistant turn (the template's generation prompt last)."""
    messages = conversation(tok, prompt, example)
    if messages is None:
        return tok.encode(fill(prompt or PLAIN, example["source"]))
    return tok.encode(tok.apply_chat_template(messages[:-1], add_generation_prompt=True))
