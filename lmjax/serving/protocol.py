"""The OpenAI API's request bodies (strictly typed: a field of the wrong type is a 400, never coerced) and
its response, stream-chunk and error shapes."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    prompt: str | list[str] = Field(..., description="one prompt (a list of one string is accepted)")

    def text(self) -> str | None:
        if isinstance(self.prompt, str):
            return self.prompt
        return self.prompt[0] if len(self.prompt) == 1 else None


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[Message] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # the newer name of max_tokens


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
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
    return _head("text_completion", model, rid) | {"choices": [choice]} | ({"usage": use} if use else {})


def chat(model: str, rid: str, text: str, reason: str, use: dict) -> dict:
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return _head("chat.completion", model, rid) | {"choices": [choice], "usage": use}


def usage_chunk(kind: str, model: str, rid: str, use: dict) -> dict:
    return _head(kind, model, rid) | {"choices": [], "usage": use}


def chat_chunk(model: str, rid: str, delta: dict, reason: str | None) -> dict:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
    return _head("chat.completion.chunk", model, rid) | {"choices": [choice]}
