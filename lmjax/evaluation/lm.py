"""An lmjax decoder as lm-evaluation-harness's `LM` (its TemplateLM: lm-eval's own tokenization of
context / continuation pairs and rolling windows). Prompts are scored by the compiled prefill the server runs
(lmjax/serving/functions.py), so in-process scores equal the server's; text is generated greedily by
lmjax.models.decode. Imports lm_eval: load it through lmjax.evaluation.harness, which says what to install."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx
from lm_eval.api.model import TemplateLM
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from lmjax.models import decode
from lmjax.serving import functions

MIN_BUCKET = 8  # prompts are padded to a power of two (at least this) of tokens and of rows


def _bucket(n: int, cap: int) -> int:
    return min(max(MIN_BUCKET, 1 << (n - 1).bit_length()), cap)


class LmjaxLM(TemplateLM):
    def __init__(self, graphdef: nnx.GraphDef, params: nnx.State, tok, *, max_len: int, batch_size: int = 16):
        super().__init__()
        self.graphdef, self.tok, self.max_len, self.batch_size = graphdef, tok, max_len, batch_size
        self.fns, self.weights = functions.build(graphdef, params, max_len, quantized=False)
        self.params = params
        self._scorers = {}  # width -> the prefill's scores (log-probabilities, top ids) over that many slots

    def _score(self, tokens_BP: np.ndarray, lengths_B: np.ndarray):
        width = tokens_BP.shape[1]
        if width not in self._scorers:  # a cache as long as the batch: attention over no empty slots
            fns = dataclasses.replace(self.fns, cache_len=width)
            self._scorers[width] = jax.jit(lambda w, t, n: fns.prefill(w, t, n)[2::2])
        return jax.device_get(self._scorers[width](self.weights, tokens_BP, lengths_B))

    def set_params(self, params: nnx.State) -> None:
        """New values of the same model (evaluation during training): nothing recompiles."""
        self.params = params
        self.weights = jax.tree.leaves(params.to_pure_dict() if hasattr(params, "to_pure_dict") else params)

    @property
    def eot_token_id(self) -> int:
        return int(self.tok.eos_id)

    @property
    def max_length(self) -> int:
        return self.max_len

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return [int(i) for i in self.tok.encode(string)]

    def tok_decode(self, tokens) -> str:
        return self.tok.decode(tokens)

    def _loglikelihood_tokens(
        self, requests, disable_tqdm: bool = False, **kwargs
    ) -> list[tuple[float, bool]]:
        """Each (context ids, continuation ids): the continuation's log-probability and whether greedy
        decoding gives it; the longest first, batch_size rows a prefill, the context cut from the left."""
        rows = []
        for _, context, continuation in requests:
            ids = (list(context) + list(continuation))[-self.max_len :]
            rows.append((ids, len(continuation)))
        results: list = [None] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            width = _bucket(max(len(rows[i][0]) for i in chunk), self.max_len)
            tokens = np.zeros((_bucket(len(chunk), self.batch_size), width), np.int32)
            lengths = np.ones(len(tokens), np.int32)
            for b, i in enumerate(chunk):
                tokens[b, : len(rows[i][0])], lengths[b] = rows[i][0], len(rows[i][0])
            logprobs_BP, top_ids_BPK = self._score(tokens, lengths)
            for b, i in enumerate(chunk):
                ids, n = rows[i]
                scored = range(len(ids) - n, len(ids))
                total = float(sum(logprobs_BP[b, p] for p in scored))
                greedy = all(int(top_ids_BPK[b, p - 1, 0]) == ids[p] for p in scored)
                results[i] = (total, greedy)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A whole text's log-probability in windows (the first conditioned on the end-of-sequence token) of
        max_len - 1 tokens, as lm-eval's API models cut them (one position kept for the token they generate),
        so that this route and the server's score the same windows."""
        out = []
        for (text,) in [r.args for r in requests]:
            windows = [
                make_disjoint_window(w)
                for w in get_rolling_token_windows(
                    self.tok_encode(text),
                    prefix_token=self.eot_token_id,
                    max_seq_len=self.max_len - 1,
                    context_len=1,
                )
            ]
            scores = self._loglikelihood_tokens([(None, c, p) for c, p in windows])
            out.append(sum(s for s, _ in scores))
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first of the request's `until` strings (or end of sequence)."""
        out = []
        for context, settings in [r.args for r in requests]:
            until = settings.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            num = min(int(settings.get("max_gen_toks", 256)), self.max_len - 1)
            prompt = self.tok_encode(context)[-(self.max_len - num) :]
            ids = decode.generate(
                self.graphdef,
                self.params,
                [prompt],
                jax.random.PRNGKey(0),
                num_tokens=num,
                temperature=0.0,
                eos_id=self.eot_token_id,
                pad_id=self.eot_token_id,
                pad_to=_bucket(len(prompt), self.max_len - num),
            )[0]
            ids = [int(i) for i in ids]
            text = self.tok.decode(ids[: ids.index(self.eot_token_id)] if self.eot_token_id in ids else ids)
            cuts = [text.find(s) for s in until if s and s in text]
            out.append(text[: min(cuts)] if cuts else text)
        return out
