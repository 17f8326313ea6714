"""The OpenAI API's request bodies (strictly typed: a field of the wrong type is a 400, never coerced) and
its response, stream-chunk and error shapes."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from lmjax.serving.functions import TOP_LOGPROBS


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False  # a last chunk with no choices and the usage


class _Sampling(BaseModel):
    # unknown fields (user, logprobs=False, ...) are ignored, as OpenAI-compatible servers do
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**32)
    stream: bool = False
    n: int = Field(1, ge=1, le=1)  # one choice per request
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens even past end-of-sequence (benchmarks)

    def stops(self) -> tuple[str, ...]:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stop if s)


class CompletionRequest(_Sampling):
    # a text or its token ids, or a list of either (one choice each)
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=0)  # 0: with echo, the prompt's log-probabilities alone
    echo: bool = False  # the prompt is part of the answer (its text, and its tokens' log-probabilities)
    logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS)  # each token's, and this many alternatives

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens
    logprobs: bool = False  # each answer token's log-probability
    top_logprobs: int | None = Field(None, ge=0, le=TOP_LOGPROBS)  # and this many alternatives


class TokenizeRequest(BaseModel):
    """vLLM's POST /tokenize: a text, or messages through the chat template."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    model: str | None = None
    tokens: list[int]


def error(message: str, kind: str = "invalid_request_error", code: str | None = None, param=None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _head(kind: str, model: str, rid: str) -> dict:
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(model: str, rid: str, text: str, reason: str | None, use: dict | None = None) -> dict:
    return completions(model, rid, [completion_choice(0, text, reason)], use)


def completion_choice(index: int, text: str, reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}


def completions(model: str, rid: str, choices: list[dict], use: dict | None = None) -> dict:
    return _head("text_completion", model, rid) | {"choices": choices} | ({"usage": use} if use else {})


def completion_logprobs(pieces: list[str], scores: list, offsets: list[int], names) -> dict:
    """The completions API's logprobs: each token's text, log-probability (None: the first prompt token's),
    its alternatives by text (`names`: token id -> text) and where its text starts."""
    return {
        "tokens": pieces,
        "token_logprobs": [lp for lp, _ in scores],
        "top_logprobs": [None if lp is None else _by_text(top, names) for lp, top in scores],
        "text_offset": offsets,
    }


def _by_text(top: list, names) -> dict[str, float]:
    """Alternatives most likely first; of two ids with one text, the likelier's value."""
    out: dict[str, float] = {}
    for i, v in top:
        out.setdefault(names(i), v)
    return out


def chat_logprobs(pieces: list[str], scores: list, names) -> dict:
    """The chat API's logprobs: per answer token its text, log-probability, UTF-8 bytes and alternatives."""

    def entry(text: str, lp: float) -> dict:
        return {"token": text, "logprob": lp, "bytes": list(text.encode())}

    return {
        "content": [
            entry(text, lp) | {"top_logprobs": [entry(names(i), v) for i, v in top]}
            for text, (lp, top) in zip(pieces, scores, strict=True)
        ]
    }


def chat(model: str, rid: str, text: str, reason: str, use: dict, logprobs: dict | None = None) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    if logprobs is not None:
        choice["logprobs"] = logprobs
    return _head("chat.completion", model, rid) | {"choices": [choice], "usage": use}


def usage_chunk(kind: str, model: str, rid: str, use: dict) -> dict:
    return _head(kind, model, rid) | {"choices": [], "usage": use}


def chat_chunk(model: str, rid: str, delta: dict, reason: str | None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return _head("chat.completion.chunk", model, rid) | {"choices": [choice]}
