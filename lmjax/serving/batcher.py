"""Continuous batching: a fixed batch of `slots` sequences, each with its own KV-cache row. A request waits in
a bounded queue, is prefilled into a free slot (a batch of one) and joins the running batch at the next
decode step (a request of at most one token, e.g. a prompt to score, is prefilled with others like it and
never takes a slot); every step decodes one token for all slots at once (runner.step writes each row at its
own slot), samples per row (temperature, top-p, seed) and streams text to the request's asyncio queue.
Finished or cancelled requests free their slot for the next in the queue.

The step always runs the full batch, so a row's numbers do not depend on what else is being served: at
temperature 0 a request gets the same text alone or among others."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np

from lmjax.models import decode
from lmjax.serving import functions
from lmjax.serving.runner import Runner

MIN_PREFILL = 8  # prompts are padded to a power of two (at least this) to bound prefill compilations


class QueueFull(Exception):
    pass


@dataclasses.dataclass
class Request:
    """One completion: token ids in, text deltas out through `events` ('text', str) then ('done', reason) or
    ('error', message), put there on `loop` (the server's event loop)."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    loop: asyncio.AbstractEventLoop | None = None
    events: asyncio.Queue = dataclasses.field(default_factory=asyncio.Queue)
    cancelled: bool = False
    ids: list[int] = dataclasses.field(default_factory=list)
    sent: int = 0  # characters of text already sent
    finish_reason: str | None = None
    # logprobs: the alternatives wanted at each position (None: no log-probabilities); echo: the prompt's too
    logprobs: int | None = None
    echo: bool = False
    # filled before 'done': (log-probability or None, [(token id, log-probability), ...]) a token
    prompt_scores: list = dataclasses.field(default_factory=list)
    scores: list = dataclasses.field(default_factory=list)  # of each token in ids (and of stop_token)
    stop_token: int | None = None  # the end-of-sequence token that finished it, when logprobs are wanted

    @property
    def slotless(self) -> bool:
        """Finished by its prefill alone (at most one token): scored with others, never given a slot."""
        return self.max_tokens <= 1


def _deliver(events: list) -> None:
    for r, event in events:
        r.events.put_nowait(event)


@functools.partial(jax.jit, static_argnames=("vocab",))
def sample_rows(logits_BV, temperature_B, top_p_B, seeds_B, counts_B, *, vocab: int):
    """One token per row: argmax where the temperature is 0, else a draw from softmax(logits / T) cut to the
    top-p nucleus, with the row's own key fold_in(key(seed), count) (independent of the other rows)."""
    logits_BV = logits_BV[:, :vocab].astype(jnp.float32)
    scaled_BV = logits_BV / jnp.maximum(temperature_B, 1e-6)[:, None]

    def nucleus(scaled_BV):
        return decode.top_p_filter(scaled_BV, top_p_B[:, None])

    scaled_BV = jax.lax.cond(jnp.all(top_p_B >= 1.0), lambda x: x, nucleus, scaled_BV)
    keys_B = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.key(s), n))(seeds_B, counts_B)
    drawn_B = jax.vmap(jax.random.categorical)(keys_B, scaled_BV)
    return jnp.where(temperature_B == 0.0, jnp.argmax(logits_BV, axis=-1), drawn_B).astype(jnp.int32)


@jax.jit
def _next_scores(logits_BV, tokens_B):
    return functions.token_scores(logits_BV[:, None], tokens_B[:, None])


def _alternatives(values, ids, k: int) -> list[tuple[int, float]]:
    return [(int(i), float(v)) for v, i in zip(values[:k], ids[:k], strict=True)]


def _held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of `text` not to send yet: a possible start of a stop string, or an incomplete
    UTF-8 character (decoded as U+FFFD)."""
    hold = len(text) - len(text.rstrip("\ufffd"))
    for s in stop:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                hold = max(hold, n)
                break
    return hold


class Batcher:
    """Runs `runner` in a background thread over `slots` rows; `submit` from the server's event loop."""

    def __init__(self, runner: Runner, *, slots: int, max_queue: int):
        self.runner, self.slots, self.max_queue = runner, slots, max_queue
        tok = runner.tokenizer
        self.eos_id, self.vocab = getattr(tok, "eos_id", None), tok.vocab_size
        self._queue: collections.deque[Request] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="lmjax-engine", daemon=True)
        self.error: BaseException | None = None
        self._active: list[Request | None] = []
        self.stats = {"finished": 0, "cancelled": 0, "tokens": 0}  # since the start (GET /health)
        self._outbox: list[tuple[Request, tuple]] = []  # events of this iteration, delivered together

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    def submit(self, request: Request) -> None:
        """Queues a request; QueueFull when max_queue requests already wait for a slot."""
        with self._wake:
            if len(self._queue) >= self.max_queue:
                raise QueueFull
            self._queue.append(request)
            self._wake.notify()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self._active)

    def warm_up(self) -> None:
        """Compiles the step and the sampler before the first request (prefills compile per prompt bucket)."""
        caches = self.runner.empty_caches(self.slots)
        logits, _ = self.runner.step(np.zeros(self.slots, np.int32), caches, np.zeros(self.slots, np.int32))
        zeros = np.zeros(self.slots, np.float32)
        sample_rows(
            logits, zeros, zeros + 1, zeros.astype(np.uint32), zeros.astype(np.int32), vocab=self.vocab
        )

    # -- the engine thread --------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: B036 - reported to every waiting request, then re-raised
            self.error = e
            logging.exception("lmjax serving engine failed")
            for r in list(self._queue) + [r for r in self._active if r is not None]:
                r.finish_reason = "error"
                self._emit(r, "error", f"the engine failed: {type(e).__name__}: {e}")
            self._flush()
            raise

    def _emit(self, r: Request, *event) -> None:
        self._outbox.append((r, event))

    def _flush(self) -> None:
        """Hands this iteration's events to the requests' event loops (one wake-up per loop)."""
        by_loop: dict = {}
        for r, event in self._outbox:
            by_loop.setdefault(r.loop, []).append((r, event))
        self._outbox = []
        for loop, events in by_loop.items():
            if loop is None:
                _deliver(events)
            else:
                loop.call_soon_threadsafe(_deliver, events)

    def _loop(self) -> None:
        N = self.slots
        caches = self.runner.empty_caches(N)
        active: list[Request | None] = [None] * N
        self._active = active
        tokens, lengths = np.zeros(N, np.int32), np.zeros(N, np.int32)
        temperature, top_p = np.zeros(N, np.float32), np.ones(N, np.float32)
        seeds, counts = np.zeros(N, np.uint32), np.zeros(N, np.int32)
        while True:
            with self._wake:
                while not self._stopping and not self._queue and not any(active):
                    self._wake.wait()
                if self._stopping:
                    return
                slotless = [r for r in self._queue if r.slotless][:N]
                for r in slotless:
                    self._queue.remove(r)
                admitted = []
                for i in range(N):
                    if active[i] is None and self._queue:
                        admitted.append((i, self._queue.popleft()))
            if slotless:
                self._prefill_only([r for r in slotless if not r.cancelled])
                self.stats["cancelled"] += sum(r.cancelled for r in slotless)
            for i, r in admitted:
                if r.cancelled:
                    self.stats["cancelled"] += 1
                    continue
                caches = self._prefill(r, i, caches)
                active[i] = r
                lengths[i], tokens[i] = len(r.prompt_ids), r.ids[-1] if r.ids else 0
                temperature[i], top_p[i], seeds[i], counts[i] = r.temperature, r.top_p, r.seed, 1
                if r.finish_reason is not None:
                    active[i] = None
            self._flush()
            for i, r in enumerate(active):
                if r is not None and r.cancelled:
                    active[i] = None
                    self.stats["cancelled"] += 1
            if not any(active):
                continue
            logits, caches = self.runner.step(tokens, caches, lengths)
            new_B = sample_rows(logits, temperature, top_p, seeds, counts, vocab=self.vocab)
            scored = any(r is not None and r.logprobs is not None for r in active)
            scores = jax.device_get(_next_scores(logits, new_B)) if scored else None
            new = np.asarray(new_B)
            for i, r in enumerate(active):
                if r is None:
                    continue
                lengths[i] += 1
                counts[i] += 1
                tokens[i] = new[i]
                self._add(r, int(new[i]), int(lengths[i]), scores and [x[i, 0] for x in scores])
                if r.finish_reason is not None:
                    active[i] = None
            self._flush()

    def _prefill(self, r: Request, row: int, caches: list) -> list:
        """r's prompt into cache row `row`, and its first token."""
        one = self._prefill_only([r])
        return self.runner.insert(caches, one, row)

    def _prefill_only(self, rs: list[Request]) -> list:
        """One prefill of the requests' prompts (padded to a power of two, at least MIN_PREFILL, of rows and
        of tokens: few shapes to compile); each gets its prompt's scores (echo) and its first token. Returns
        the caches (of a lone request: what its slot takes)."""
        if not rs:
            return []
        P = max(len(r.prompt_ids) for r in rs)
        bucket = min(max(MIN_PREFILL, 1 << (P - 1).bit_length()), self.runner.cache_len)
        rows = 1 << (len(rs) - 1).bit_length()
        padded, lengths = np.zeros((rows, bucket), np.int32), np.ones(rows, np.int32)
        for b, r in enumerate(rs):
            padded[b, : len(r.prompt_ids)], lengths[b] = r.prompt_ids, len(r.prompt_ids)
        logits, caches, *prompt = self.runner.prefill(padded, lengths)

        def column(values, count: int):
            return np.concatenate([values, np.ones(rows - count, values.dtype)])

        first = np.asarray(
            sample_rows(
                logits,
                column(np.asarray([r.temperature for r in rs], np.float32), len(rs)),
                column(np.asarray([r.top_p for r in rs], np.float32), len(rs)),
                column(np.asarray([r.seed for r in rs], np.uint32), len(rs)),
                np.zeros(rows, np.int32),
                vocab=self.vocab,
            )
        )
        wanted = [r.logprobs is not None for r in rs]
        if any(wanted) and not prompt:  # an export made before prefill gave scores: those requests fail
            for r in [r for r in rs if r.logprobs is not None]:
                r.finish_reason = "error"
                self._emit(
                    r, "error", "this export's prefill gives no log-probabilities; export the model again"
                )
        elif any(wanted):
            next_scores = jax.device_get(_next_scores(logits, first))
            logprobs_BP, values_BPK, ids_BPK = jax.device_get(prompt)
        for b, r in enumerate(rs):
            if r.finish_reason == "error":
                continue
            scores = None
            if r.logprobs is not None:
                scores = [next_scores[0][b, 0], next_scores[1][b, 0], next_scores[2][b, 0]]
                if r.echo:
                    r.prompt_scores = [(None, [])] + [
                        (
                            float(logprobs_BP[b, p]),
                            _alternatives(values_BPK[b, p - 1], ids_BPK[b, p - 1], r.logprobs),
                        )
                        for p in range(1, len(r.prompt_ids))
                    ]
            if r.max_tokens == 0:  # echo alone: the prompt's scores
                r.finish_reason = "length"
                self.stats["finished"] += 1
                self._emit(r, "done", "length")
            else:
                self._add(r, int(first[b]), len(r.prompt_ids), scores)
        return caches

    def _add(self, r: Request, token: int, filled: int, scores=None) -> None:
        """Appends a sampled token (the cache holds `filled` tokens before it) with its scores (its
        log-probability, the top values and ids); sends new text; finishes the request at its
        end-of-sequence token, a stop string, max_tokens or a full cache."""
        tok = self.runner.tokenizer
        self.stats["tokens"] += 1
        if token == self.eos_id and not r.ignore_eos:
            if r.logprobs is not None:  # scored (the harness reads the last token's), never text
                r.scores.append((float(scores[0]), _alternatives(scores[1], scores[2], r.logprobs)))
                r.stop_token = token
            return self._finish(r, "stop", tok.decode(r.ids))
        r.ids.append(token)
        if r.logprobs is not None:
            r.scores.append((float(scores[0]), _alternatives(scores[1], scores[2], r.logprobs)))
        text = tok.decode(r.ids)
        cuts = [c for c in (text.find(s, max(0, r.sent - len(s))) for s in r.stop) if c >= 0]
        if cuts:
            return self._finish(r, "stop", text[: min(cuts)])
        if len(r.ids) >= r.max_tokens or filled >= self.runner.cache_len:
            return self._finish(r, "length", text)
        end = len(text) - _held_back(text, r.stop)
        if end > r.sent:
            self._emit(r, "text", text[r.sent : end])
            r.sent = end

    def _finish(self, r: Request, reason: str, text: str) -> None:
        if len(text) > r.sent:
            self._emit(r, "text", text[r.sent :])
            r.sent = len(text)
        r.finish_reason = reason
        self.stats["finished"] += 1
        self._emit(r, "done", reason)
