"""Tokenizers behind one interface: character-level, word-level (word vectors) and sentencepiece (trained,
saved with a run, loaded), and those of pretrained models: a Hugging Face tokenizer.json (WordPiece,
byte-level BPE, ...) with its tokenizer_config.json, or a sentencepiece model (T5's spiece.model)."""

from __future__ import annotations

import collections
import io
import json
import re
from typing import Iterable, Protocol

import numpy as np
from etils import epath

from lmjax.errors import InputError, MissingInput

CHAR_FILE, WORD_FILE, SPM_FILE, HF_FILE = "char_vocab.json", "word_vocab.json", "spm.model", "tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"  # a Hugging Face directory's special tokens and chat template
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SPM_FILES = (SPM_FILE, "spiece.model")  # a run's own; T5's in a Hugging Face directory
CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
NUM_SENTINELS = 100  # T5's <extra_id_0> ... <extra_id_99>


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    pad_id: int
    eos_id: int

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def save(self, directory: epath.Path) -> None: ...

    def special_id(self, piece: str) -> int: ...

    def special_ids(self) -> np.ndarray: ...

    def word_starts(self) -> np.ndarray: ...


class _ThreeSpecials:
    """Ids 0, 1, 2 are <pad>, <eos>, <unk> (character and word vocabularies); no [MASK] or sentinels."""

    kind: str
    vocab_size: int
    SPECIALS = ("<pad>", "<eos>", "<unk>")
    pad_id, eos_id, unk_id = 0, 1, 2

    def special_id(self, piece: str) -> int:
        raise InputError(
            f"the {self.kind} tokenizer has no {piece} token; masked-LM and span-corruption objectives "
            "need data.tokenizer='sentencepiece'"
        )

    def special_ids(self) -> np.ndarray:
        return np.arange(len(self.SPECIALS), dtype=np.int32)

    def word_starts(self) -> np.ndarray:
        return np.ones(self.vocab_size, bool)


class CharTokenizer(_ThreeSpecials):
    """One id per character seen in training; ids 0, 1, 2 are <pad>, <eos>, <unk>."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.vocab_size = len(self.SPECIALS) + len(self.chars)
        codes = np.frombuffer(self.chars.encode("utf-32-le"), np.uint32)
        # Dense code point -> id table, so encoding a text is one vectorised lookup.
        self._table = np.full(int(codes.max(initial=0)) + 2, self.unk_id, np.int32)
        self._table[codes] = np.arange(len(self.SPECIALS), self.vocab_size, dtype=np.int32)
        self._id_to_char = list(self.SPECIALS) + list(self.chars)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 0) -> "CharTokenizer":
        del vocab_size  # a character vocabulary is what the corpus contains
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        if not chars:
            raise InputError(
                "cannot build a character vocabulary from an empty corpus; check data.text_files"
            )
        return cls("".join(chars))

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), np.uint32)
        return self._table[np.minimum(codes, len(self._table) - 1)]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self._id_to_char[i] for i in ids if i >= len(self.SPECIALS) and i < self.vocab_size)

    def save(self, directory: epath.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CHAR_FILE).write_text(json.dumps({"chars": self.chars}), encoding="utf-8")


class WordTokenizer(_ThreeSpecials):
    """Lower-cased words (letters and digits, inner apostrophes kept) seen at least min_count times, most
    frequent first, with their training counts (word2vec's subsampling and noise distribution use them);
    ids 0, 1, 2 are <pad>, <eos>, <unk>."""

    kind = "word"
    WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

    def __init__(self, words: list[str], counts: list[int]):
        self.words, self.counts_V = (
            list(self.SPECIALS) + list(words),
            np.asarray([0, 0, 0] + list(counts), np.int64),
        )
        self.vocab_size = len(self.words)
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def split(cls, text: str) -> list[str]:
        return cls.WORD.findall(text.lower())

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 0, min_count: int = 1) -> "WordTokenizer":
        """All words seen min_count times (the vocab_size most frequent of them when vocab_size > 0)."""
        counts = collections.Counter(w for t in texts for w in cls.split(t))
        kept = sorted(((c, w) for w, c in counts.items() if c >= min_count), key=lambda cw: (-cw[0], cw[1]))
        want = vocab_size - len(cls.SPECIALS) if vocab_size else len(kept)
        if not kept or len(kept) < want:
            raise InputError(
                f"the corpus has {len(kept)} distinct words seen at least data.min_count={min_count} "
                f"times ({sum(counts.values())} words in all), too few for data.vocab_size={vocab_size}; "
                "give a larger corpus, or lower data.min_count or data.vocab_size (0: every word kept)"
            )
        return cls([w for _, w in kept[:want]], [c for c, _ in kept[:want]])

    def encode(self, text: str) -> np.ndarray:
        return np.fromiter((self.index.get(w, self.unk_id) for w in self.split(text)), np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self.words[i] for i in ids if len(self.SPECIALS) <= i < self.vocab_size)

    def save(self, directory: epath.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / WORD_FILE).write_text(
            json.dumps({"words": self.words[3:], "counts": self.counts_V[3:].tolist()}), encoding="utf-8"
        )


class SentencePieceTokenizer:
    """A sentencepiece model (BPE or unigram); trained here it keeps whitespace and newlines (pad 0, unk 1,
    eos 2).

    Trained vocabularies also hold [CLS], [SEP], [MASK] and T5's 100 sentinels <extra_id_i>.
    """

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.model_proto = model_proto
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.vocab_size = self._sp.vocab_size()
        # trained here: pad 0, eos 2; T5's spiece.model: pad 0, eos 1; a model without padding pads with eos
        self.eos_id = self._sp.eos_id()
        self.pad_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.eos_id

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int, model_type: str = "bpe"
    ) -> "SentencePieceTokenizer":
        import sentencepiece as spm

        lines = (line for t in texts for line in t.split("\n") if line)
        proto = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=lines,
                model_writer=proto,
                vocab_size=vocab_size,
                model_type=model_type,
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                user_defined_symbols=["\n", CLS, SEP, MASK] + [sentinel(i) for i in range(NUM_SENTINELS)],
                pad_id=0,
                unk_id=1,
                bos_id=-1,
                eos_id=2,
                byte_fallback=True,
                hard_vocab_limit=False,
                minloglevel=2,
                num_threads=2,
            )
        except RuntimeError as e:
            raise InputError(
                f"sentencepiece training failed: {str(e).splitlines()[0]}; adjust data.vocab_size "
                "(byte fallback needs 256 + 104 special tokens + the corpus's characters at least) or give a "
                "larger corpus"
            ) from None
        return cls(proto.getvalue())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)])

    def encode_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """encode(text) and each piece's [start, end) characters in text: int32[N, 2]."""
        pieces = self._sp.encode(text, return_type="proto").pieces
        chars_at = np.cumsum([0] + [len(c.encode("utf-8")) for c in text])  # byte offset of each char
        spans = [np.searchsorted(chars_at, (p.begin, p.end)) for p in pieces]
        return np.asarray([p.id for p in pieces], np.int32), np.asarray(spans, np.int32).reshape(-1, 2)

    def save(self, directory: epath.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / SPM_FILE).write_bytes(self.model_proto)

    def special_id(self, piece: str) -> int:
        i = self._sp.piece_to_id(piece)
        if i == self._sp.unk_id() or not self._user_defined(i):
            raise InputError(
                f"this sentencepiece vocabulary has no {piece} token (it was trained before lmjax added "
                "special tokens); train a new one: drop data.tokenizer_path and use a new --workdir"
            )
        return i

    def _user_defined(self, i: int) -> bool:
        return self._sp.id_to_piece(i) in (CLS, SEP, MASK) or self._sp.id_to_piece(i).startswith("<extra_id_")

    def special_ids(self) -> np.ndarray:
        """pad, unk, eos and the special symbols: never masked, never drawn as random replacements."""
        return np.asarray(
            [
                i
                for i in range(self.vocab_size)
                if self._sp.is_control(i) or self._sp.is_unknown(i) or self._user_defined(i)
            ],
            np.int32,
        )

    def word_starts(self) -> np.ndarray:
        """bool[V]: the piece begins a word (whole-word masking groups a start with the pieces after it)."""
        return np.asarray(
            [not p or p[0] in "\u2581\n<[" for p in map(self._sp.id_to_piece, range(self.vocab_size))]
        )


class HFTokenizer:
    """A Hugging Face `tokenizers` tokenizer read from a model directory's tokenizer.json (WordPiece: BERT's;
    byte-level BPE: GPT-2's, Llama 3's, SmolLM's; ...) with its special tokens and chat template from
    tokenizer_config.json. Not trained here: it comes with the pretrained weights. Its kind is the model type
    in lower case ('wordpiece', 'bpe', 'unigram'). End of sequence: the config's eos_token, else [SEP];
    padding: its pad_token, else [PAD], else the end-of-sequence token."""

    def __init__(self, json_text: str, config: dict | None = None):
        from tokenizers import Tokenizer as _Tokenizer

        self.json_text, self.config = json_text, dict(config or {})
        self._tok = _Tokenizer.from_str(json_text)
        self._tok.no_padding()
        self._tok.no_truncation()
        self.kind = json.loads(json_text)["model"]["type"].lower()
        self.vocab_size = self._tok.get_vocab_size()
        self.chat_template = self.config.get("chat_template")
        self.eos_id = self._named("eos_token", SEP)
        self.pad_id = self._named("pad_token", "[PAD]", fallback=self.eos_id)
        self._specials = sorted(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special)

    def _token(self, key: str) -> str:
        """tokenizer_config.json's `key` token ('' when it names none)."""
        token = self.config.get(key)
        return (token.get("content") if isinstance(token, dict) else token) or ""  # an AddedToken, serialised

    def _named(self, key: str, default: str, fallback: int | None = None) -> int:
        i = self._tok.token_to_id(self._token(key) or default)
        if i is None and fallback is None:
            raise InputError(
                f"this {self.kind} tokenizer names no {key} in tokenizer_config.json and has no {default} "
                "token; use the model directory's own tokenizer files"
            )
        return fallback if i is None else i

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "HFTokenizer":
        raise InputError(
            "WordPiece vocabularies come with pretrained weights; set data.tokenizer_path to the "
            "model's directory (holding tokenizer.json), or use data.tokenizer='sentencepiece'"
        )

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_token(self, i: int) -> str:
        """The vocabulary's own entry for id i (a special token's name; decode drops specials)."""
        return self._tok.id_to_token(i)

    def encode_offsets(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """encode(text) and each piece's [start, end) characters in text: int32[N, 2]."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        return np.asarray(encoding.ids, np.int32), np.asarray(encoding.offsets, np.int32).reshape(-1, 2)

    def save(self, directory: epath.Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / HF_FILE).write_text(self.json_text, encoding="utf-8")
        if self.config:
            (directory / HF_CONFIG_FILE).write_text(json.dumps(self.config, indent=2), encoding="utf-8")

    def special_id(self, piece: str) -> int:
        i = self._tok.token_to_id(piece)
        if i is None:
            raise InputError(
                f"this {self.kind} vocabulary has no {piece} token; use a BERT-style tokenizer.json"
            )
        return i

    def special_ids(self) -> np.ndarray:
        return np.asarray(self._specials, np.int32)

    def apply_chat_template(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The model's chat template (Jinja, sandboxed as transformers renders it) applied to `messages`
        ({'role', 'content'} dicts), ending with the prompt for the assistant's turn when
        add_generation_prompt."""
        if not self.chat_template:
            raise InputError(
                "this tokenizer has no chat template (tokenizer_config.json chat_template); use "
                "sample.prompt instead of sample.chat"
            )
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        tokens = {key: self._token(key) for key in ("bos_token", "eos_token")}
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, **tokens
        )

    def word_starts(self) -> np.ndarray:
        """Whether each piece starts a word: WordPiece marks continuations with '##', byte-level BPE marks
        starts with 'Ġ' (a space) and SentencePiece-style vocabularies with '▁'."""
        vocab = sorted(self._tok.get_vocab().items(), key=lambda kv: kv[1])
        if self.kind == "wordpiece":
            return np.asarray([not piece.startswith("##") for piece, _ in vocab])
        return np.asarray([piece.startswith(("Ġ", "▁")) for piece, _ in vocab])


KINDS = {
    "char": CharTokenizer,
    "word": WordTokenizer,
    "sentencepiece": SentencePieceTokenizer,
    "wordpiece": HFTokenizer,
}


def train(kind: str, texts: Iterable[str], vocab_size: int, min_count: int = 1) -> Tokenizer:
    if kind not in KINDS:
        raise InputError(f"data.tokenizer={kind!r} is unknown; use one of {sorted(KINDS)}")
    if kind == "word":
        return WordTokenizer.train(texts, vocab_size, min_count)
    return KINDS[kind].train(texts, vocab_size)


def same(a: Tokenizer, b: Tokenizer) -> bool:
    """Both map every id to the same piece (the same vocabulary, so ids mean the same to a model)."""
    return (a.kind, a.vocab_size) == (b.kind, b.vocab_size) and all(
        a.decode([i]) == b.decode([i]) for i in range(a.vocab_size)
    )


def differing(path: str | epath.PathLike, tok: Tokenizer) -> Tokenizer | None:
    """The tokenizer saved at `path` if its vocabulary is not `tok`'s, else None."""
    other = load(epath.Path(path))
    return None if same(other, tok) else other


def load(directory: epath.Path) -> Tokenizer:
    directory = epath.Path(directory)
    if (directory / CHAR_FILE).exists():
        return CharTokenizer(json.loads((directory / CHAR_FILE).read_text(encoding="utf-8"))["chars"])
    if (directory / WORD_FILE).exists():
        saved = json.loads((directory / WORD_FILE).read_text(encoding="utf-8"))
        return WordTokenizer(saved["words"], saved["counts"])
    if (directory / HF_FILE).exists():
        config_path = directory / HF_CONFIG_FILE
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
        if (directory / CHAT_TEMPLATE_FILE).exists():  # transformers 5 writes the template beside the config
            config["chat_template"] = (directory / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
        return HFTokenizer((directory / HF_FILE).read_text(encoding="utf-8"), config)
    for name in SPM_FILES:
        if (directory / name).exists():
            return SentencePieceTokenizer((directory / name).read_bytes())
    raise MissingInput(
        f"no tokenizer in {directory} (expected {CHAR_FILE}, {WORD_FILE}, {HF_FILE} or "
        f"{' / '.join(SPM_FILES)}); "
        "point data.tokenizer_path at a directory a run saved"
    )
