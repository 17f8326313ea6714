"""Task examples -> fixed-length arrays for a task head, and the grain pipelines over them.

Every example holds inputs int32[L], input_mask int32[L] (1 on real tokens; inputs are right-padded) and:
  classification        labels int32[], weights float32[] (encoders: [CLS] a [SEP] (b [SEP]) with segments;
                        decoders: a [EOS], read at the last token)
  regression            labels float32[] (the score), weights float32[]; texts framed as classification's
  token_classification  labels int32[L], weights float32[L] (each word's label on its first piece)
  span_qa               start, end int32[] (0, 0: the answer is cut off), answer_mask int32[L],
                        weights float32[] (one example a window of a row: qa_windows.py)
  text_to_text          decoder_inputs, targets int32[T], weights float32[T]: the label's words (a task
                        from files: the target's tokens, at most T), then EOS
  language_model        targets int32[L] (the next token), weights float32[L]: 1 where the next token is
                        the answer's (a decoder on prompt + target or a conversation: prompts.py); rows
                        longer than L are cut
Evaluation batches cover a split exactly: the last batch is filled with copies whose weights are 0.
Batches may shed padding: cut to a multiple of some tokens (TrimPadding), or, for classification, their
texts packed into shared rows (PackTexts: document_ids, positions, text_rows and text_documents added).
"""

from __future__ import annotations

from typing import Iterator

import grain
import numpy as np

from lmjax.data.pipeline import AddChars
from lmjax.data.tokenizers import CLS, SEP, Tokenizer
from lmjax.errors import InputError
from lmjax.tasks import prompts
from lmjax.tasks.catalog import Task


def _text(x) -> str:
    return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


LABEL_TOKENS = 8  # text-to-text targets of the named tasks: a label's name and EOS


class Encode(grain.transforms.Map):
    def __init__(
        self,
        task: Task,
        tokenizer: Tokenizer,
        seq_len: int,
        head: str,
        target_len: int = 64,
        prompt: str = "",
    ):
        self.task, self.tok, self.L, self.head, self.T = task, tokenizer, seq_len, head, target_len
        self.prompt = prompt
        generates = head in ("text_to_text", "language_model")
        self.bert_style = not generates and _has(tokenizer, CLS) and _has(tokenizer, SEP)
        if head == "text_to_text" and not task.kind:  # a named task's label names
            self.T = LABEL_TOKENS
            self.label_ids = [
                np.append(tokenizer.encode(" " + n.replace("_", " ")), tokenizer.eos_id).astype(np.int32)
                for n in task.label_names
            ]
            if max(map(len, self.label_ids)) > self.T:
                raise InputError(
                    f"a label of {task.name} is longer than {self.T} tokens; shorten the label names"
                )

    def _frame(self, pieces: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and segment ids of the pieces, BERT-style or plain, cut to seq_len (longest piece
        first)."""
        budget = self.L - (len(pieces) + 1 if self.bert_style else 1)
        lengths = [len(p) for p in pieces]
        while sum(lengths) > budget:
            lengths[lengths.index(max(lengths))] -= max(1, (sum(lengths) - budget) // len(lengths))
        pieces = [p[:n] for p, n in zip(pieces, lengths, strict=True)]
        if not self.bert_style:
            ids = np.concatenate(pieces + [[self.tok.eos_id]])
            return ids, np.zeros_like(ids)
        cls_id, sep_id = self.tok.special_id(CLS), self.tok.special_id(SEP)
        ids, segs = [[cls_id]], [[0]]
        for s, p in enumerate(pieces):
            ids += [p, [sep_id]]
            segs += [np.full(len(p) + 1, s)]
        return np.concatenate(ids), np.concatenate(segs)

    def _pad(self, ids: np.ndarray, segments: np.ndarray) -> dict:
        n = len(ids)
        return {
            "inputs": np.pad(ids, (0, self.L - n), constant_values=self.tok.pad_id).astype(np.int32),
            "segments": np.pad(segments, (0, self.L - n)).astype(np.int32),
            "input_mask": (np.arange(self.L) < n).astype(np.int32),
        }

    def map(self, ex: dict) -> dict:
        spec = self.task.spec
        if spec.head == "token_classification":
            return self._tokens(ex)
        if spec.head == "span_qa":
            return self._span(ex)
        if self.head == "language_model":
            return self._lm(ex)
        out = self._pad(*self._frame([self.tok.encode(_text(ex[k])) for k in spec.text_keys]))
        if spec.head == "regression":
            return out | {"labels": np.float32(ex[spec.label_key]), "weights": np.float32(1.0)}
        if self.head == "text_to_text":
            if self.task.kind:
                target = np.append(self.tok.encode(ex[spec.label_key])[: self.T - 1], self.tok.eos_id)
            else:
                target = self.label_ids[int(ex[spec.label_key])]
            targets = np.pad(target, (0, self.T - len(target)), constant_values=self.tok.pad_id)
            return out | {
                "decoder_inputs": np.concatenate([[0], targets[:-1]]).astype(np.int32),
                "targets": targets,
                "weights": (np.arange(self.T) < len(target)).astype(np.float32),
            }
        return out | {"labels": np.int32(ex[spec.label_key]), "weights": np.float32(1.0)}

    def _lm(self, ex: dict) -> dict:
        pieces = prompts.pieces(self.tok, self.prompt, ex)
        ids = np.concatenate([p for p, _ in pieces])[: self.L + 1].astype(np.int32)
        trained = np.concatenate([np.full(len(p), t) for p, t in pieces])[: self.L + 1]
        n = len(ids) - 1
        out = self._pad(ids[:n], np.zeros(n, np.int32))
        return out | {
            "targets": np.pad(ids[1:], (0, self.L - n), constant_values=self.tok.pad_id),
            "weights": np.pad(trained[1:], (0, self.L - n)).astype(np.float32),
        }

    def words(self, words: list) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
        """Token ids and segments of the words' pieces, and where each word's first piece sits (None: the
        word has no piece, or was cut off at seq_len)."""
        pieces = [self.tok.encode(_text(w)).astype(np.int32) for w in words]
        ids, segs = self._frame([np.concatenate(pieces) if pieces else np.zeros(0, np.int32)])
        first = 1 if self.bert_style else 0  # after [CLS]
        starts = first + np.cumsum([0] + [len(p) for p in pieces])[:-1]
        end = len(ids) - 1  # [SEP] or EOS
        at = [int(s) if len(p) and s < end else None for s, p in zip(starts, pieces, strict=True)]
        return ids, segs, at

    def _tokens(self, ex: dict) -> dict:
        words, tags = ex[self.task.spec.text_keys[0]], ex[self.task.spec.label_key]
        n = min(len(words), len(tags))  # equal lengths; TFDS's mock data draws them apart
        ids, segs, at = self.words(list(words[:n]))
        labels = np.full(self.L, -1)
        for position, tag in zip(at, tags[:n], strict=True):
            if position is not None:
                labels[position] = tag
        return self._pad(ids, segs) | {
            "labels": np.maximum(labels, 0).astype(np.int32),
            "weights": (labels >= 0).astype(np.float32),
        }

    def _span(self, ex: dict) -> dict:
        """A window of a span_qa row (qa_windows.py)."""
        answer_mask = np.zeros(self.L, np.int32)
        answer_mask[0] = 1
        answer_mask[ex["offset"] : ex["offset"] + len(ex["spans"])] = 1
        return self._pad(ex["window"], ex["segments"]) | {
            "start": ex["start"],
            "end": ex["end"],
            "answer_mask": answer_mask,
            "weights": np.float32(1.0),
        }


def _has(tokenizer: Tokenizer, piece: str) -> bool:
    try:
        tokenizer.special_id(piece)
        return True
    except ValueError:
        return False


class TrimPadding(grain.transforms.Map):
    """Cuts a batch's length axis to the shortest multiple of `multiple` tokens that holds its longest
    example (at most seq_len): a batch of short texts runs a shorter step, and each length compiles once."""

    def __init__(self, seq_len: int, multiple: int, head: str):
        self.L, self.multiple = seq_len, multiple
        self.keys = {"inputs", "segments", "input_mask", "answer_mask", "chars"}
        if head in ("token_classification", "language_model"):
            self.keys |= {"labels", "targets", "weights"}

    def map(self, batch: dict) -> dict:
        longest = max(int(batch["input_mask"].sum(axis=1).max()), 1)
        L = min(-(-longest // self.multiple) * self.multiple, self.L)
        return {k: v[:, :L] if k in self.keys else v for k, v in batch.items()}


class PackTexts(grain.transforms.Map):
    """A batch of T right-padded classification texts -> the same texts packed first fit (longest first) into
    as few rows of the batch's length as hold them: document_ids (1, 2, ... per text in its row; 0: padding)
    and per-text positions, so that attention stays within each text; text_rows / text_documents int32[T]
    say where each text sits (the head pools there). Labels and weights stay one per text. Rows are padded
    to a multiple of row_multiple (the batch shards); each row count compiles once."""

    TOKEN_KEYS = ("inputs", "segments", "input_mask")

    def __init__(self, pad_id: int, row_multiple: int = 1):
        self.pad_id, self.row_multiple = pad_id, row_multiple

    def map(self, batch: dict) -> dict:
        lengths_T = batch["input_mask"].sum(axis=1).astype(np.int32)
        T, L = batch["inputs"].shape
        R = -(-T // self.row_multiple) * self.row_multiple  # room for one text a row; cut below
        out = {k: np.zeros((R, L), batch[k].dtype) for k in self.TOKEN_KEYS if k in batch}
        out["inputs"][:] = self.pad_id
        out |= {"document_ids": np.zeros((R, L), np.int32), "positions": np.zeros((R, L), np.int32)}
        used_R, count_R = np.zeros(R, np.int32), np.zeros(R, np.int32)
        rows_T, documents_T = np.zeros(T, np.int32), np.zeros(T, np.int32)
        for t in np.argsort(-lengths_T, kind="stable"):  # first fit, longest first
            n = lengths_T[t]
            row = rows_T[t] = np.argmax(used_R + n <= L)  # rows fill in order: an unused one always fits
            count_R[row] += 1
            documents_T[t], span = count_R[row], slice(used_R[row], used_R[row] + n)
            for k in self.TOKEN_KEYS:
                if k in out:
                    out[k][row, span] = batch[k][t, :n]
            out["document_ids"][row, span], out["positions"][row, span] = count_R[row], np.arange(n)
            used_R[row] += n
        rows = -(-int(np.count_nonzero(count_R)) // self.row_multiple) * self.row_multiple
        rest = {k: v for k, v in batch.items() if k not in self.TOKEN_KEYS}
        return (
            rest
            | {k: v[:rows] for k, v in out.items()}
            | {"text_rows": rows_T, "text_documents": documents_T}
        )


def batch_transforms(
    tokenizer: Tokenizer, seq_len: int, head: str, trim_multiple: int, pack: bool, row_multiple: int
) -> list[grain.transforms.Map]:
    """What cuts a batch's padding: TrimPadding (trim_multiple > 0) or PackTexts (pack)."""
    if pack:
        return [PackTexts(tokenizer.pad_id, row_multiple)]
    return [TrimPadding(seq_len, trim_multiple, head)] if trim_multiple else []


def train_dataset(
    task: Task,
    tokenizer: Tokenizer,
    *,
    head: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    chars: np.ndarray | None = None,
    trim_multiple: int = 0,
    pack: bool = False,
    row_multiple: int = 1,
    target_len: int = 64,
    prompt: str = "",
) -> grain.IterDataset:
    """Infinite, reshuffled every epoch, checkpointable; `batch_size` is this process's share. With a
    character table (pipeline.char_table, for ELMo) batches also hold the inputs' characters; with
    trim_multiple, batches are cut to a multiple of that many tokens (TrimPadding); with pack, each batch's
    texts are packed into rows (PackTexts)."""
    source = grain.MapDataset.source(task.sources["train"])[shard_index::shard_count]
    batches = (
        source.shuffle(seed=seed)
        .repeat()
        .map(Encode(task, tokenizer, seq_len, head, target_len, prompt))
        .batch(batch_size, drop_remainder=True)
    )
    batches = batches if chars is None else batches.map(AddChars(chars))
    for transform in batch_transforms(tokenizer, seq_len, head, trim_multiple, pack, row_multiple):
        batches = batches.map(transform)
    return batches.to_iter_dataset()


def eval_rows(n: int, batch_size: int, shard_count: int) -> list[np.ndarray]:
    """Which example each row of each global evaluation batch holds (eval_batches' order): every shard takes
    a contiguous run of the split, a batch its shards' rows in turn; a row >= n is a padding copy."""
    per_shard = -(-n // (batch_size * shard_count)) * batch_size
    shards = np.arange(shard_count)[:, None] * per_shard
    return [(shards + start + np.arange(batch_size)).ravel() for start in range(0, per_shard, batch_size)]


def eval_batches(
    task: Task,
    tokenizer: Tokenizer,
    split: str,
    *,
    head: str,
    seq_len: int,
    batch_size: int,
    shard_index: int = 0,
    shard_count: int = 1,
    chars: np.ndarray | None = None,
    trim_multiple: int = 0,
    pack: bool = False,
    row_multiple: int = 1,
    target_len: int = 64,
    prompt: str = "",
) -> Iterator[dict]:
    """All of `split` in order; the final batch is padded with weight-0 copies so every example counts
    once; cut or packed as train_dataset's."""
    source = grain.MapDataset.source(task.sources[split])
    n = len(source)
    encode = Encode(task, tokenizer, seq_len, head, target_len, prompt)
    transforms = batch_transforms(tokenizer, seq_len, head, trim_multiple, pack, row_multiple)
    for global_rows in eval_rows(n, batch_size, shard_count):
        rows = global_rows[shard_index * batch_size : (shard_index + 1) * batch_size]
        examples = [encode.map(source[min(r, n - 1)]) for r in rows]
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
        real = np.asarray([r < n for r in rows], np.float32)
        batch["weights"] = batch["weights"] * real.reshape(-1, *([1] * (batch["weights"].ndim - 1)))
        batch = batch if chars is None else AddChars(chars).map(batch)
        for transform in transforms:
            batch = transform.map(batch)
        yield batch
