"""T5 span corruption (Raffel et al., 2020): noise spans of a document's window become sentinels in the
inputs and sentinel-delimited targets. NumPy, per example.

A corrupted window holds inputs, decoder_inputs (targets shifted right after the start token, which is padding
as in T5), targets and weights; `packed_example` turns a row of several packed ones into the model's batch
row: inputs int32[S], input_mask int32[S], input_document_ids / input_positions int32[S], decoder_inputs,
decoder_document_ids, decoder_positions, targets int32[T], weights float32[T].
"""

from __future__ import annotations

import grain
import numpy as np

from lmjax.data import tokenizers
from lmjax.data.tokenizers import Tokenizer
from lmjax.errors import InputError


def span_counts(length: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(noise tokens, noise spans) for a window of `length` tokens."""
    num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
    return num_noise, max(int(round(num_noise / mean_span)), 1)


def window_lengths(inputs_len: int, noise_density: float, mean_span: float) -> tuple[int, int]:
    """(raw window length, targets length): the longest window whose corrupted inputs (+ EOS) fit
    inputs_len."""
    raw = inputs_len
    while True:
        noise, spans = span_counts(raw + 1, noise_density, mean_span)
        if raw + 1 - noise + spans + 1 > inputs_len:
            break
        raw += 1
    noise, spans = span_counts(raw, noise_density, mean_span)
    return raw, noise + spans + 1


def noise_mask(length: int, rng: np.random.Generator, noise_density: float, mean_span: float) -> np.ndarray:
    """bool[length]: alternating clean/noise runs (clean first), num_spans of each, lengths drawn at
    random."""
    num_noise, num_spans = span_counts(length, noise_density, mean_span)

    def partition(total: int) -> np.ndarray:  # num_spans positive parts summing to total
        cuts = np.sort(rng.choice(np.arange(1, total), num_spans - 1, replace=False))
        return np.diff(np.concatenate([[0], cuts, [total]]))

    runs = np.stack([partition(length - num_noise), partition(num_noise)], axis=1).reshape(-1)
    return np.repeat(np.tile([False, True], num_spans), runs)


def corrupt(
    tokens: np.ndarray, mask: np.ndarray, sentinel_ids: np.ndarray, eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each noise span -> one sentinel in the inputs; targets list sentinel + span; both
    end in EOS."""
    starts = mask & ~np.r_[False, mask[:-1]]
    span_id = np.cumsum(starts) - 1
    inputs = np.where(starts, sentinel_ids[np.maximum(span_id, 0)], tokens)[~mask | starts]
    targets = np.insert(tokens[mask], np.flatnonzero(starts[mask]), sentinel_ids[: int(starts.sum())])
    return np.append(inputs, eos_id).astype(np.int32), np.append(targets, eos_id).astype(np.int32)


def uncorrupt(inputs: np.ndarray, targets: np.ndarray, sentinel_ids: np.ndarray, eos_id: int) -> np.ndarray:
    """The window `corrupt` started from (used by tests and for reading examples)."""
    is_sentinel = np.isin(targets, sentinel_ids)
    spans, out = {}, []
    bounds = np.r_[np.flatnonzero(is_sentinel), targets.size - 1]
    for s, e in zip(bounds[:-1], bounds[1:], strict=True):
        spans[int(targets[s])] = targets[s + 1 : e]
    for t in inputs[:-1]:
        out.extend(spans[int(t)] if int(t) in spans else [t])
    return np.asarray(out, np.int32)


class SpanCorruption(grain.transforms.RandomMap):
    def __init__(self, tokenizer: Tokenizer, noise_density: float, mean_span: float):
        self.noise_density, self.mean_span, self.eos = noise_density, mean_span, tokenizer.eos_id
        self.sentinels = np.asarray(
            [tokenizer.special_id(tokenizers.sentinel(i)) for i in range(tokenizers.NUM_SENTINELS)]
        )

    def random_map(self, packed: dict, rng: np.random.Generator) -> dict:
        tokens = packed["tokens"]
        if span_counts(tokens.size, self.noise_density, self.mean_span)[1] > self.sentinels.size:
            raise InputError(
                f"{tokens.size}-token windows need more than {self.sentinels.size} sentinels; "
                "shorten data.seq_len or raise data.mean_span"
            )
        mask = noise_mask(tokens.size, rng, self.noise_density, self.mean_span)
        inputs, targets = corrupt(tokens, mask, self.sentinels, self.eos)
        return {
            "inputs": inputs,
            "decoder_inputs": np.concatenate([[0], targets[:-1]]).astype(np.int32),
            "targets": targets,
            "weights": np.ones(targets.shape, np.float32),
        }


def packed_example(row: dict) -> dict:
    """A row of first-fit-packed corrupted windows (grain's `*_segment_ids` / `*_positions`) -> batch row."""
    return {
        "inputs": row["inputs"],
        "input_mask": (row["inputs_segment_ids"] > 0).astype(np.int32),
        "input_document_ids": row["inputs_segment_ids"],
        "input_positions": row["inputs_positions"],
        "decoder_inputs": row["decoder_inputs"],
        "decoder_document_ids": row["decoder_inputs_segment_ids"],
        "decoder_positions": row["decoder_inputs_positions"],
        "targets": row["targets"],
        "weights": row["weights"],
    }
