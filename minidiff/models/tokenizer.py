"""Byte-level byte-pair encoding (BPE): text -> integer ids for the text encoder.

The idea
--------
Any string is a sequence of UTF-8 bytes, so 256 base tokens can spell every text, emoji and
non-Latin scripts included: nothing is ever "out of vocabulary". BPE then learns *merges* from a
corpus: repeatedly take the most frequent adjacent pair of tokens (a, b), give it a new id, and
replace it everywhere. After enough merges, frequent words ("circle", " above") are one token.

Ids
---
    0 <pad>    1 <start>    2 <end>          special tokens (never produced from text)
    3 .. 258   the bytes 0x00 .. 0xFF          (id = 3 + byte)
    259 ..     merge i creates id 259 + i      (``merges[i] = (a, b)``)

Steps of ``encode``
-------------------
1. normalise: lower-case, then collapse every run of whitespace to one space and strip the ends.
   ``decode(encode(x)) == normalise(x)`` for any string (any script, emoji included).
2. pre-tokenise with a regex into words with their leading space (" red", " circle", ",").
   Merges never cross a word boundary, which keeps them meaningful and training fast.
3. each word -> UTF-8 bytes -> apply the merges in the order they were learned (lowest rank
   first) until no learned pair is left.
4. <start> + tokens + <end>, then padded with <pad> to ``max_length``; ``mask`` is True on
   <start>..<end>. An over-long prompt is cut (with a warning) and keeps its <end>.

Training is deterministic: on a tie in pair count the smallest pair (a, b) wins.
"""
from __future__ import annotations

import heapq
import json
import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes

SPECIAL_TOKENS = ("<pad>", "<start>", "<end>")
PAD_ID, START_ID, END_ID = 0, 1, 2
BYTE_OFFSET = len(SPECIAL_TOKENS)      # id of byte b is BYTE_OFFSET + b
BASE_VOCAB = BYTE_OFFSET + 256         # the first merge gets this id
FORMAT = "minidiff-bpe-1"
MAX_FILE_BYTES = 64 << 20      # limits on a tokenizer.json (the shipped one: 2 kB, 40 merges)
MAX_MERGES = 100_000
MAX_TOKEN_BYTES = 1024         # merges can double a token's length each time: 40 merges would make 1 TB
MAX_TEXT_CHARS = 1000          # a prompt's limit: the text encoder reads 24 tokens, and BPE on a long word is quadratic
# a word: optional leading space + letters | digits | other symbols (emoji, punctuation, _); or spaces
WORD_PATTERN = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+")


def normalise(text: str) -> str:
    """Lower-case and collapse whitespace: the text ``decode(encode(text))`` gives back."""
    if not isinstance(text, str):
        raise TypeError(f"tokenizer: text must be a str, got {type(text).__name__} ({text!r:.60})")
    return " ".join(text.lower().split())


def _words(text: str) -> list:
    """Pre-tokenise a normalised text: the pieces concatenate back to exactly the text."""
    return WORD_PATTERN.findall(text)


def _merge(tokens: list, pair: tuple, new_id: int) -> list:
    """Replace every (a, b) in tokens, scanning left to right, by new_id."""
    out, i = [], 0
    while i < len(tokens):
        if i + 1 < len(tokens) and (tokens[i], tokens[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def _pairs(tokens) -> Counter:
    return Counter(zip(tokens, tokens[1:]))


def _check_token_lengths(merges, path):
    """ValueError if a merge would build a token longer than MAX_TOKEN_BYTES (lengths only, in ints:
    the tokens themselves are built after this check)."""
    lengths = [0] * BYTE_OFFSET + [1] * 256
    for rank, (a, b) in enumerate(merges):
        if not (0 <= a < len(lengths) and 0 <= b < len(lengths)):
            return                      # an id out of range: BPETokenizer(merges) says which
        lengths.append(lengths[a] + lengths[b])
        if lengths[-1] > MAX_TOKEN_BYTES:
            raise ValueError(f"tokenizer file {path}: merge {rank} {(a, b)} makes a token of {lengths[-1]:,} "
                             f"bytes, over the limit of {MAX_TOKEN_BYTES:,}")


class BPETokenizer:
    """Byte-level BPE with special tokens <pad>, <start>, <end>. Build with `train` or `load`."""

    def __init__(self, merges=()):
        self.merges = [tuple(int(i) for i in pair) for pair in merges]   # rank i creates 259 + i
        self.vocab = [b""] * BYTE_OFFSET + [bytes([b]) for b in range(256)]   # id -> bytes
        self.ranks = {}                                                  # (a, b) -> rank
        for rank, (a, b) in enumerate(self.merges):
            new_id = BASE_VOCAB + rank
            if not (BYTE_OFFSET <= a < new_id and BYTE_OFFSET <= b < new_id) or (a, b) in self.ranks:
                raise ValueError(f"tokenizer: merge {rank} {(a, b)} must join two existing "
                                 f"non-special ids < {new_id}, each pair once")
            self.vocab.append(self.vocab[a] + self.vocab[b])
            self.ranks[(a, b)] = rank
        self._cache = {}

    # ------------------------------------------------------------------------------- training
    @classmethod
    def train(cls, corpus, vocab_size: int) -> "BPETokenizer":
        """Learn ``vocab_size - 259`` merges from a list of strings.

        Works on the table of distinct words and their counts (a caption corpus of 20k lines has
        only a few dozen distinct words), keeps the count of every adjacent pair, and after each
        merge updates only the words that contained the merged pair. The most frequent pair wins;
        ties go to the smallest (a, b). If every word has become a single token before
        ``vocab_size`` is reached, training stops with a warning and the vocabulary is smaller.
        """
        if isinstance(corpus, str) or not all(isinstance(t, str) for t in corpus):
            raise TypeError("BPETokenizer.train: corpus must be a list of str")
        if not isinstance(vocab_size, (int, np.integer)) or vocab_size < BASE_VOCAB:
            raise ValueError(f"BPETokenizer.train: vocab_size must be an int >= {BASE_VOCAB} "
                             f"(3 specials + 256 bytes), got {vocab_size!r}")
        word_counts = Counter(w for text in corpus for w in _words(normalise(text)))
        words = [list(BYTE_OFFSET + b for b in w.encode("utf-8")) for w in word_counts]
        counts = list(word_counts.values())
        pair_counts = Counter()       # (a, b) -> number of occurrences in the corpus
        where = {}                    # (a, b) -> indices of words that contain it (may be stale)
        for index, (tokens, count) in enumerate(zip(words, counts)):
            for pair, k in _pairs(tokens).items():
                pair_counts[pair] += k * count
                where.setdefault(pair, set()).add(index)
        # max-heap of (-count, a, b); entries go stale when counts change and are skipped on pop
        heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
        heapq.heapify(heap)
        merges = []
        while len(merges) < vocab_size - BASE_VOCAB:
            while heap and -heap[0][0] != pair_counts.get((heap[0][1], heap[0][2]), 0):
                heapq.heappop(heap)
            if not heap:
                warnings.warn(f"BPETokenizer.train: the corpus ran out of pairs after {len(merges)} "
                              f"merges; vocab_size is {BASE_VOCAB + len(merges)}, not {vocab_size}")
                break
            _, a, b = heapq.heappop(heap)
            pair, new_id = (a, b), BASE_VOCAB + len(merges)
            merges.append(pair)
            changed = set()
            for index in where.pop(pair):
                old = words[index]
                new = _merge(old, pair, new_id)
                if len(new) == len(old):
                    continue          # stale index: the pair left this word in an earlier merge
                # remove the old word's pairs, add the new word's pairs (weighted by its count)
                for p, k in _pairs(old).items():
                    pair_counts[p] -= k * counts[index]
                    changed.add(p)
                for p, k in _pairs(new).items():
                    pair_counts[p] += k * counts[index]
                    where.setdefault(p, set()).add(index)
                    changed.add(p)
                words[index] = new
            for p in changed:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], *p))
                else:
                    del pair_counts[p]
        return cls(merges)

    # ------------------------------------------------------------------------------- encoding
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def start_id(self) -> int:
        return START_ID

    @property
    def end_id(self) -> int:
        return END_ID

    def _encode_word(self, word: str, trace=None) -> list:
        """One pre-tokenised word -> ids: apply the lowest-rank learned pair until none is left."""
        if trace is None and word in self._cache:
            return self._cache[word]
        tokens = [BYTE_OFFSET + b for b in word.encode("utf-8")]
        while len(tokens) > 1:
            pair = min(zip(tokens, tokens[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            tokens = _merge(tokens, pair, BASE_VOCAB + self.ranks[pair])
            if trace is not None:
                trace.append((pair, BASE_VOCAB + self.ranks[pair], list(tokens)))
        if trace is None and len(self._cache) < 100_000:
            self._cache[word] = tokens
        return tokens

    def encode_text(self, text: str) -> list:
        """Normalised text -> token ids, without special tokens. A text over MAX_TEXT_CHARS
        characters is a ValueError."""
        if isinstance(text, str) and len(text) > MAX_TEXT_CHARS:
            raise ValueError(f"tokenizer: a text of {len(text):,} characters is over the limit of "
                             f"{MAX_TEXT_CHARS:,} (the text encoder reads 24 tokens, about 100 characters)")
        return [i for word in _words(normalise(text)) for i in self._encode_word(word)]

    def encode(self, text: str, max_length: int | None = None):
        """Text -> (ids int64 (L,), mask bool (L,)): <start> tokens <end> <pad>...

        L = max_length when given (prompts cut with a warning, keeping <end>), else the length
        of <start> tokens <end>. ``mask`` is True exactly on <start>..<end>.
        """
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 2):
            raise ValueError(f"tokenizer: max_length must be an int >= 2 (room for <start> and "
                             f"<end>) or None, got {max_length!r}")
        tokens = self.encode_text(text)
        if max_length is not None and len(tokens) + 2 > max_length:
            warnings.warn(f"tokenizer: prompt of {len(tokens) + 2} tokens cut to max_length="
                          f"{max_length}: {text!r:.80}", stacklevel=2)
            tokens = tokens[: max_length - 2]
        length = len(tokens) + 2 if max_length is None else max_length
        ids = np.full(length, PAD_ID, np.int64)
        ids[: len(tokens) + 2] = [START_ID] + tokens + [END_ID]
        mask = np.arange(length) < len(tokens) + 2
        return ids, mask

    def encode_batch(self, texts, max_length: int | None = None):
        """List of texts -> (ids int64 (B, L), mask bool (B, L)); L = max_length, or the longest."""
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"tokenizer.encode_batch: texts must be a list of str, got "
                            f"{type(texts).__name__}")
        if max_length is None:
            max_length = max((len(self.encode_text(t)) + 2 for t in texts), default=2)
        encoded = [self.encode(t, max_length) for t in texts]
        ids = np.stack([e[0] for e in encoded]) if encoded else np.zeros((0, max_length), np.int64)
        mask = np.stack([e[1] for e in encoded]) if encoded else np.zeros((0, max_length), bool)
        return ids, mask

    def decode(self, ids) -> str:
        """Ids -> text, skipping special tokens (invalid UTF-8 from a cut sequence shows as U+FFFD)."""
        pieces = []
        for i in np.asarray(ids, dtype=np.int64).ravel():
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"tokenizer.decode: id {i} outside the vocabulary 0..{self.vocab_size - 1}")
            pieces.append(self.vocab[i])
        return b"".join(pieces).decode("utf-8", errors="replace")

    def tokens(self, text: str) -> list:
        """The pieces a text is split into, as strings (bytes that split a character shown escaped)."""
        return [self.vocab[i].decode("utf-8", errors="backslashreplace") for i in self.encode_text(text)]

    def explain(self, text: str) -> list:
        """Each stage of encoding, for the demo and lesson 09: a list of (stage, value)."""
        normalised = normalise(text)
        stages = [("input", text), ("normalised", normalised), ("words", _words(normalised))]
        for word in _words(normalised):
            trace = []
            stages.append((f"UTF-8 bytes of {word!r}", list(word.encode("utf-8"))))
            stages.append(("  as ids (3 + byte)", [BYTE_OFFSET + b for b in word.encode("utf-8")]))
            self._encode_word(word, trace)
            for pair, new_id, tokens in trace:
                stages.append((f"  merge {pair} -> {new_id} ({self.vocab[new_id]!r})", tokens))
        ids, _ = self.encode(text)
        stages.append(("ids", ids.tolist()))
        return stages

    def check_vocab_size(self, expected: int):
        """Raise a clear ValueError unless this tokenizer has exactly ``expected`` ids."""
        if self.vocab_size != expected:
            raise ValueError(f"tokenizer has vocab_size {self.vocab_size} but the model expects "
                             f"{expected}: use the tokenizer the model was trained with, or build "
                             f"the model with vocab_size={self.vocab_size}")

    # -------------------------------------------------------------------------------- files
    def save(self, path):
        """Write the merges as JSON (through a temporary file: never half-written)."""
        data = {"format": FORMAT, "vocab_size": self.vocab_size,
                "special_tokens": list(SPECIAL_TOKENS), "merges": [list(p) for p in self.merges]}
        atomic_write_bytes(path, json.dumps(data, indent=0).encode("utf-8"))

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        """Read a tokenizer written by `save`. Every field is checked before use, and a missing,
        foreign, damaged or absurd file (too big, too many merges, a token longer than
        MAX_TOKEN_BYTES) is one clear ValueError (FileNotFoundError when there is no file)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"tokenizer file {path} is {path.stat().st_size:,} bytes, over the limit of "
                             f"{MAX_FILE_BYTES:,}: not a tokenizer minidiff writes")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, RecursionError) as exc:       # bad UTF-8 or JSON, absurd nesting or numbers
            raise ValueError(f"tokenizer file {path} is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"tokenizer file {path} is not a {FORMAT} tokenizer "
                             f"(format={data.get('format') if isinstance(data, dict) else None!r})")
        specials = data.get("special_tokens")
        if not isinstance(specials, list) or tuple(specials) != SPECIAL_TOKENS:
            raise ValueError(f"tokenizer file {path}: special_tokens must be {list(SPECIAL_TOKENS)}, "
                             f"got {specials!r:.80}")
        merges = data.get("merges")
        if not isinstance(merges, list) or not all(
                isinstance(pair, list) and len(pair) == 2
                and all(isinstance(i, int) and not isinstance(i, bool) for i in pair) for pair in merges):
            raise ValueError(f"tokenizer file {path}: merges must be a list of [a, b] pairs of integer ids")
        if len(merges) > MAX_MERGES:
            raise ValueError(f"tokenizer file {path}: {len(merges):,} merges, over the limit of {MAX_MERGES:,}")
        _check_token_lengths(merges, path)
        vocab_size = data.get("vocab_size")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"tokenizer file {path}: vocab_size must be an integer, got {vocab_size!r:.80}")
        try:
            tokenizer = cls(merges)
        except ValueError as exc:
            raise ValueError(f"tokenizer file {path}: {exc}") from None
        if tokenizer.vocab_size != vocab_size:
            raise ValueError(f"tokenizer file {path} says vocab_size {vocab_size} but "
                             f"its merges give {tokenizer.vocab_size}")
        return tokenizer

    def __repr__(self):
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)})"


if __name__ == "__main__":   # python -m minidiff.models.tokenizer
    import time

    # a few captions in the shapes grammar (lesson 09 trains on the full generated corpus)
    corpus = ["a small red circle above a blue square", "a large green triangle on the left",
              "a yellow square at the top", "a purple circle to the right of an orange triangle",
              "a blue triangle below a small yellow circle", "a red square in the center"] * 100
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(corpus, vocab_size=320)
    print(f"trained {tokenizer} on {len(corpus)} captions in {time.perf_counter() - start:.2f} s")
    prompt = "A small  RED circle above a blue square \N{SNAKE}"
    for stage, value in tokenizer.explain(prompt):
        print(f"{stage:45} {value}")
    ids, mask = tokenizer.encode(prompt, max_length=24)
    print("padded ids", ids.tolist(), "\nmask      ", mask.astype(int).tolist())
    print("pieces    ", tokenizer.tokens(prompt))
    print("decoded   ", repr(tokenizer.decode(ids)))
