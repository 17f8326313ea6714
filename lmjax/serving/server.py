"""--config.mode=serve: an OpenAI-compatible HTTP server (FastAPI on uvicorn) over the continuous-batching
engine. POST /v1/completions (prompts as text or token ids, one or a list; echo and logprobs: what
lm-evaluation-harness scores with), POST /v1/chat/completions (the tokenizer's chat template; logprobs),
server-sent events with "stream": true, GET /v1/models, GET /health, and vLLM's POST /tokenize, POST
/detokenize and GET /tokenizer_info.

It listens on serve.host (127.0.0.1 by default); on any other address it refuses to start without an API key
in the environment variable serve.api_key_env, and with a key set every /v1 request must carry
`Authorization: Bearer <key>` (401 otherwise). Errors are OpenAI's shape {"error": {"message", "type",
"param", "code"}}: 400 for a bad body, 401, 404 for an unknown model or route, 503 when serve.max_queue
requests already wait. SIGTERM stops accepting connections, finishes the requests in flight and exits 0."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import secrets
import time

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from lmjax.serving import batcher, protocol


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


def _error_response(status: int, message: str, code=None, kind="invalid_request_error") -> JSONResponse:
    return JSONResponse(protocol.error(message, kind, code), status_code=status)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def _api_error(request, e: ApiError):
    return _error_response(e.status, e.message, e.code, e.kind)


async def _invalid(request, e: RequestValidationError):
    first = e.errors()[0]
    if first.get("type") == "json_invalid":
        return _error_response(400, f"the request body is not valid JSON: {first.get('msg')}", "invalid_json")
    where = ".".join(str(x) for x in first.get("loc", ())[1:2]) or None  # the top-level field
    message = f"{where or 'body'}: {first.get('msg')}"
    return JSONResponse(protocol.error(message, code="invalid_value", param=where), status_code=400)


async def _http(request, e: HTTPException):
    if e.status_code == 400:  # FastAPI could not read the body (not UTF-8, ...)
        return _error_response(400, "the request body is not UTF-8 JSON", "invalid_json")
    code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
    return _error_response(e.status_code, str(e.detail), code)


class Api:
    """The OpenAI-compatible API over a started batcher: one method a route, and the checks they share;
    max_tokens caps what one request may ask for."""

    def __init__(self, engine: batcher.Batcher, *, model_name: str, api_key: str | None, max_tokens: int):
        self.engine, self.model_name, self.api_key, self.max_tokens = engine, model_name, api_key, max_tokens
        self.tok, self.S = engine.runner.tokenizer, engine.runner.cache_len

    def authorized(self, authorization: str | None = Header(None)) -> None:
        if self.api_key is not None and not secrets.compare_digest(
            authorization or "", f"Bearer {self.api_key}"
        ):
            raise ApiError(
                401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key"
            )

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {self.model_name!r}",
                "model_not_found",
            )

    def limits(self, ids: list[int], asked: int | None) -> int:
        if not ids:
            raise ApiError(400, "the prompt is empty; give at least one token of text", "empty_prompt")
        if asked is not None and asked <= 1 and len(ids) <= self.S:  # scored by its prefill: no slot needed
            return asked
        if len(ids) >= self.S:
            raise ApiError(
                400,
                f"the prompt is {len(ids)} tokens; this model's context is {self.S} tokens, so prompts must "
                f"be shorter than {self.S}",
                "context_length_exceeded",
            )
        if asked is not None and asked > self.max_tokens:
            raise ApiError(
                400, f"max_tokens={asked} is above this server's limit of {self.max_tokens}", "invalid_value"
            )
        if asked is not None and len(ids) + asked > self.S:
            raise ApiError(
                400,
                f"the prompt ({len(ids)} tokens) + max_tokens={asked} exceed this model's context of "
                f"{self.S} tokens; ask for fewer tokens or shorten the prompt",
                "context_length_exceeded",
            )
        return asked if asked is not None else min(self.max_tokens, self.S - len(ids))

    def submit(
        self,
        body: protocol._Sampling,
        ids: list[int],
        asked: int | None,
        logprobs: int | None = None,
        echo=False,
    ) -> batcher.Request:
        r = batcher.Request(
            prompt_ids=ids,
            max_tokens=self.limits(ids, asked),
            temperature=body.temperature,
            top_p=body.top_p,
            seed=random.randrange(2**32) if body.seed is None else body.seed,
            stop=body.stops(),
            ignore_eos=body.ignore_eos,
            loop=asyncio.get_running_loop(),
            logprobs=logprobs,
            echo=echo,
        )
        if self.engine.error is not None:
            raise ApiError(500, f"the engine failed: {self.engine.error}", "engine_failed", "server_error")
        try:
            self.engine.submit(r)
        except batcher.QueueFull:
            raise ApiError(
                503,
                f"the server is busy ({self.engine.max_queue} requests queued); retry later",
                "server_busy",
            ) from None
        return r

    async def events(self, r: batcher.Request, http: Request, poll: bool):
        """The request's events (text that arrived together merged into one); cancels the request (freeing
        its slot) when the client goes away."""
        try:
            while True:
                if poll:  # a plain response: nothing else notices the client going away
                    try:
                        kind, value = await asyncio.wait_for(r.events.get(), timeout=1.0)
                    except TimeoutError:
                        if await http.is_disconnected():
                            return
                        continue
                else:  # a stream: starlette stops it when the client has gone
                    kind, value = await r.events.get()
                while kind == "text" and not r.events.empty():  # text that piled up: one chunk
                    more_kind, more = r.events.get_nowait()
                    if more_kind != "text":
                        yield kind, value
                        kind, value = more_kind, more
                        break
                    value += more
                yield kind, value
                if kind != "text":
                    return
        finally:
            r.cancelled = True  # no-op once finished

    async def collect(self, r: batcher.Request, http: Request) -> tuple[str, str | None]:
        """(the generated text, the finish reason: None when the client went away) of a plain response."""
        parts, reason = [], None
        async for kind, value in self.events(r, http, poll=True):
            if kind == "text":
                parts.append(value)
            elif kind == "done":
                reason = value
            else:
                raise ApiError(500, value, "engine_failed", "server_error")
        return "".join(parts), reason

    def kept(self, r: batcher.Request, text: str) -> int:
        """How many generated tokens make `text` (a stop string may have cut the last ones off)."""
        n = 0
        while n < len(r.ids) and len(self.tok.decode(r.ids[:n])) < len(text):
            n += 1
        return n

    def piece(self, i: int) -> str:
        return self.tok.decode([i])

    def no_stream_with(self, body, what: str) -> None:
        if body.stream:
            raise ApiError(400, f"{what} come in plain responses only; set stream=false", "invalid_value")

    async def answer(self, r, http, body, rid, whole, chunk_of, chunk_kind, first=None):
        if body.stream:

            async def stream():
                if first is not None:
                    yield _sse(first)
                async for kind, value in self.events(r, http, poll=False):
                    if kind == "text":
                        yield _sse(chunk_of(value, None))
                    elif kind == "done":
                        yield _sse(chunk_of(None, value))
                        if body.stream_options is not None and body.stream_options.include_usage:
                            use = protocol.usage(len(r.prompt_ids), len(r.ids))
                            yield _sse(protocol.usage_chunk(chunk_kind, self.model_name, rid, use))
                    else:
                        yield _sse(protocol.error(value, "server_error", "engine_failed"))
                yield _sse("[DONE]")

            return StreamingResponse(stream(), media_type="text/event-stream")
        text, reason = await self.collect(r, http)
        if reason is None:  # the client went away
            return JSONResponse({}, status_code=499)
        return whole(text, reason, protocol.usage(len(r.prompt_ids), len(r.ids)))

    async def health(self):
        status = "ok" if self.engine.error is None else "failed"
        return {
            "status": status,
            "model": self.model_name,
            "slots": self.engine.slots,
            "busy": self.engine.busy,
            "queued": self.engine.queued,
        } | self.engine.stats

    async def models(self):
        card = {"id": self.model_name, "object": "model", "created": int(time.time()), "owned_by": "lmjax"}
        return {"object": "list", "data": [card]}

    def template(self, messages: list[protocol.Message], add_generation_prompt: bool = True) -> str:
        if not getattr(self.tok, "chat_template", None):
            raise ApiError(
                400,
                f"this model's {self.tok.kind} tokenizer has no chat template; use /v1/completions",
                "no_chat_template",
            )
        try:
            return self.tok.apply_chat_template([m.model_dump() for m in messages], add_generation_prompt)
        except Exception as e:  # the template's own checks (roles it does not take, ...)
            raise ApiError(400, f"messages: the chat template refused them: {e}", "invalid_value") from None

    def prompt_ids(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return [int(i) for i in self.tok.encode(prompt)]
        bad = [i for i in prompt if not 0 <= i < self.tok.vocab_size]
        if bad:
            raise ApiError(
                400,
                f"prompt: token id {bad[0]} is outside the vocabulary (0..{self.tok.vocab_size - 1})",
                "invalid_value",
            )
        return prompt

    async def completions(self, body: protocol.CompletionRequest, http: Request):
        self.check_model(body.model)
        prompts = body.prompts()
        if not prompts:
            raise ApiError(
                400, "prompt: give a prompt (a string, token ids, or a list of either)", "invalid_value"
            )
        if len(prompts) > 1 or body.echo or body.logprobs is not None:
            self.no_stream_with(body, "several prompts, echo and logprobs")
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens=0 answers nothing without echo=true", "invalid_value")
        ids = [self.prompt_ids(p) for p in prompts]  # every prompt checked before any is queued
        requests = []
        try:
            for one in ids:
                requests.append(self.submit(body, one, body.max_tokens, body.logprobs, body.echo))
        except ApiError:
            for r in requests:
                r.cancelled = True
            raise
        rid = protocol.new_id("cmpl")
        if body.stream:

            def chunk_of(delta, reason):
                return protocol.completion(self.model_name, rid, delta or "", reason)

            return await self.answer(requests[0], http, body, rid, None, chunk_of, "text_completion")
        choices = []
        for index, r in enumerate(requests):
            text, reason = await self.collect(r, http)
            if reason is None:
                for other in requests:
                    other.cancelled = True
                return JSONResponse({}, status_code=499)
            n = self.kept(r, text)
            prompt_text = (
                self.tok.decode(r.prompt_ids) if isinstance(prompts[index], list) else prompts[index]
            )
            logprobs = None
            if body.logprobs is not None:  # an end-of-sequence token is scored too (it has no text)
                last = [r.stop_token] if r.stop_token is not None and n == len(r.ids) else []
                all_ids = (r.prompt_ids if body.echo else []) + r.ids[:n] + last
                scores = (r.prompt_scores if body.echo else []) + r.scores[: n + len(last)]
                offsets = [len(self.tok.decode(all_ids[:j])) for j in range(len(all_ids))]
                logprobs = protocol.completion_logprobs(
                    [self.piece(i) for i in all_ids], scores, offsets, self.piece
                )
            text = prompt_text + text if body.echo else text
            choices.append(protocol.completion_choice(index, text, reason, logprobs))
        use = protocol.usage(sum(len(r.prompt_ids) for r in requests), sum(len(r.ids) for r in requests))
        return protocol.completions(self.model_name, rid, choices, use)

    async def chat(self, body: protocol.ChatRequest, http: Request):
        self.check_model(body.model)
        prompt = self.template(body.messages)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs=true", "invalid_value")
        if body.logprobs:
            self.no_stream_with(body, "logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        asked = body.max_completion_tokens or body.max_tokens
        r = self.submit(body, [int(i) for i in self.tok.encode(prompt)], asked, logprobs)
        rid = protocol.new_id("chatcmpl")

        def chunk_of(delta, reason):
            return protocol.chat_chunk(
                self.model_name, rid, {} if delta is None else {"content": delta}, reason
            )

        def whole(text, reason, use):
            if logprobs is None:
                return protocol.chat(self.model_name, rid, text, reason, use)
            n = self.kept(r, text)
            scored = protocol.chat_logprobs([self.piece(i) for i in r.ids[:n]], r.scores[:n], self.piece)
            return protocol.chat(self.model_name, rid, text, reason, use, scored)

        first = protocol.chat_chunk(self.model_name, rid, {"role": "assistant", "content": ""}, None)
        return await self.answer(r, http, body, rid, whole, chunk_of, "chat.completion.chunk", first)

    async def tokenize(self, body: protocol.TokenizeRequest):
        """vLLM's: a prompt's token ids (or the chat template's, for messages)."""
        if body.model is not None:
            self.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give either prompt or messages", "invalid_value")
        text = (
            body.prompt if body.messages is None else self.template(body.messages, body.add_generation_prompt)
        )
        ids = [int(i) for i in self.tok.encode(text)]
        return {"count": len(ids), "max_model_len": self.S, "tokens": ids, "token_strs": None}

    async def detokenize(self, body: protocol.DetokenizeRequest):
        if body.model is not None:
            self.check_model(body.model)
        return {"prompt": self.tok.decode(self.prompt_ids(body.tokens))}

    async def tokenizer_info(self):
        """What a client needs to tokenize as the server does (lm-evaluation-harness's remote tokenizer)."""
        eos = getattr(self.tok, "eos_id", None)
        return {
            "tokenizer_class": type(self.tok).__name__,
            "kind": self.tok.kind,
            "vocab_size": self.tok.vocab_size,
            "model_max_length": self.S,
            "eos_token_id": eos,
            "eos_token": None if eos is None else getattr(self.tok, "id_to_token", self.piece)(eos),
            "bos_token": None,  # lmjax's tokenizers add none
            "pad_token": None,
            "chat_template": getattr(self.tok, "chat_template", None),
        }


def create_app(engine: batcher.Batcher, *, model_name: str, api_key: str | None, max_tokens: int) -> FastAPI:
    """The app serving `Api`'s routes over a started engine."""
    api = Api(engine, model_name=model_name, api_key=api_key, max_tokens=max_tokens)
    app = FastAPI(title="lmjax", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
    auth = [Depends(api.authorized)]
    app.get("/health")(api.health)
    app.get("/v1/models", dependencies=auth)(api.models)
    app.post("/v1/completions", dependencies=auth)(api.completions)
    app.post("/v1/chat/completions", dependencies=auth)(api.chat)
    app.post("/tokenize", dependencies=auth)(api.tokenize)
    app.post("/detokenize", dependencies=auth)(api.detokenize)
    app.get("/tokenizer_info", dependencies=auth)(api.tokenizer_info)
    return app


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False
