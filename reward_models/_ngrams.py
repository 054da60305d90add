"""Vectorised n-gram bookkeeping shared by CIDEr-D and BLEU.

Sentences become one flat array of integer word ids. The k-gram starting at token t gets an
id built hierarchically: key = (id of the (k-1)-gram at t) << 32 | (word id at t+k-1), and
`np.unique` / `np.searchsorted` turn keys into dense ids. This is exact (no hashing, so no
collisions) and needs no Python loop over n-grams: the only per-token Python work is the
word -> id dictionary lookup.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_SHIFT = np.int64(32)


class Encoded:
    """A batch of S tokenised sentences, T tokens in all.

    Attributes:
        ids: (T,) int64 word ids.
        lengths: (S,) int64 number of tokens per sentence.
        starts: (S,) int64 offset of each sentence's first token in ``ids``.
        sent: (T,) int64 sentence index of each token (computed on first use).
        pos: (T,) int64 position of each token inside its sentence (computed on first use).
    """

    def __init__(self, ids: np.ndarray, lengths: np.ndarray):
        self.ids = ids
        self.lengths = lengths
        self.starts = np.cumsum(lengths) - lengths
        self._sent: np.ndarray | None = None

    @property
    def sent(self) -> np.ndarray:
        if self._sent is None:
            self._sent = np.repeat(np.arange(len(self.lengths), dtype=np.int64), self.lengths)
        return self._sent

    @property
    def pos(self) -> np.ndarray:
        return np.arange(len(self.ids), dtype=np.int64) - self.starts[self.sent]


def encode(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> Encoded:
    """Map tokens to ids with ``vocab``; words missing from it get fresh ids >= len(vocab) (local to
    this call, so ``vocab`` is never mutated and concurrent calls stay independent).

    With an empty ``vocab`` every word gets a local id (the position of its first occurrence, so
    ids are unique per word but not dense). The per-token work runs inside ``map`` over C-level
    dict methods: this loop is the only per-token Python work of the metrics.
    """
    lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
    words = list(itertools.chain.from_iterable(token_lists))
    if not vocab:
        local: dict[str, int] = {}
        ids = np.fromiter(map(local.setdefault, words, itertools.count()), dtype=np.int64, count=len(words))
        return _finish_encode(ids, lengths)
    ids = np.fromiter(map(vocab.get, words, itertools.repeat(-1)), dtype=np.int64, count=len(words))
    unknown = np.flatnonzero(ids < 0)
    if len(unknown):
        local = {}
        base = len(vocab)
        for t in unknown.tolist():
            ids[t] = local.setdefault(words[t], base + len(local))
    return _finish_encode(ids, lengths)


def _finish_encode(ids: np.ndarray, lengths: np.ndarray) -> Encoded:
    return Encoded(ids, lengths)


def build_tables(enc: Encoded, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Global n-gram tables of a corpus.

    Returns:
        (keys, ids): keys[k-1] is the sorted array of the corpus's distinct k-gram keys (order 1: word
        ids); ids[k-1] is a (T,) array with each token's k-gram index into keys[k-1], or -1.
    """
    tables, per_token = [], []
    remaining = enc.lengths[enc.sent] - enc.pos
    prev = None
    for k in range(1, n + 1):
        ids = np.full(len(enc.ids), -1, dtype=np.int64)
        valid = np.flatnonzero(remaining >= k)
        if k == 1:
            keys = enc.ids[valid]
        else:
            keys = (prev[valid] << _SHIFT) | enc.ids[valid + k - 1]
        table, inv = np.unique(keys, return_inverse=True)
        ids[valid] = inv
        tables.append(table)
        per_token.append(ids)
        prev = ids
    return tables, per_token


def sorted_search(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Index of each key in the sorted ``table``, -1 where absent.

    Queries are sorted first: numpy's binary search reuses the previous bound for ascending
    queries, which on this machine is ~10x faster than random-order lookups.
    """
    out = np.full(len(keys), -1, dtype=np.int64)
    if len(keys) == 0 or len(table) == 0:
        return out
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    where = np.minimum(np.searchsorted(table, sorted_keys), len(table) - 1)
    found = table[where] == sorted_keys
    out[order[found]] = where[found]
    return out


def lookup_global_ids(enc: Encoded, tables: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Index of every k-gram of ``enc`` in a corpus's ``tables`` (from `build_tables`), -1 if absent.

    A k-gram can only be in the corpus if its (k-1)-gram prefix is, so a -1 prefix stays -1.
    """
    out = []
    remaining = enc.lengths[enc.sent] - enc.pos
    prev = None
    for k, table in enumerate(tables, start=1):
        ids = np.full(len(enc.ids), -1, dtype=np.int64)
        valid = remaining >= k
        if k > 1:
            valid &= prev >= 0
        valid = np.flatnonzero(valid)
        if len(valid):
            keys = enc.ids[valid] if k == 1 else (prev[valid] << _SHIFT) | enc.ids[valid + k - 1]
            ids[valid] = sorted_search(table, keys)
        out.append(ids)
        prev = ids
    return out


def gather_ranges(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the index ranges [starts[i], starts[i] + counts[i]) without a Python loop.

    Returns:
        (index, owner): the concatenated indices, shape (sum(counts),), and for each the range i it came from.
    """
    total = int(counts.sum())
    owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    offsets = np.cumsum(counts) - counts
    index = np.arange(total, dtype=np.int64) - offsets[owner] + starts[owner]
    return index, owner


def unique_strings(groups: Sequence[Sequence[str]]) -> tuple[list[str], list[np.ndarray]]:
    """Deduplicate strings across several lists: returns the distinct strings (first-seen order) and,
    per input list, an int64 array of indices into them. GRPO repeats each prompt's references
    num_generations times, so this saves most of the tokenisation and counting."""
    distinct = list(dict.fromkeys(itertools.chain.from_iterable(groups)))  # C-level, order kept
    index = {s: i for i, s in enumerate(distinct)}
    out = [np.fromiter(map(index.__getitem__, group), dtype=np.int64, count=len(group)) for group in groups]
    return distinct, out


# ---------------------------------------------------------------------------------------------
# Dense n-gram matching per group (one candidate against its references).
#
# Sorting or binary-searching millions of n-gram keys is what dominates a naive vectorisation,
# so matching is done densely instead: a candidate of Lc tokens and R references of at most Lr
# tokens give a boolean tensor E1[i, r, j] = (cand[i] == ref_r[j]); the k-gram match tensor is
# E_k[i, r, j] = E_{k-1}[i, r, j] & E1[i+k-1, r, j+k-1]. Counting along j gives the reference
# term frequency of the candidate's k-gram at i; the candidate's self-match tensor gives its own
# term frequency and whether position i is the first occurrence of its k-gram (so each distinct
# n-gram is counted once, as the dictionaries of pycocoevalcap do). Exact integer arithmetic,
# no hashing. Groups are bucketed by padded size to keep padding small.


def pad_tokens(ids: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, fill: int) -> np.ndarray:
    """Gather variable-length token runs into a (len(starts), width) matrix padded with ``fill``."""
    cols = np.arange(width, dtype=np.int64)
    mask = cols[None, :] < lengths.reshape(-1, 1)
    if len(ids) == 0:
        return np.full(mask.shape, fill, dtype=np.int64)
    idx = np.minimum(starts.reshape(-1, 1) + cols[None, :], len(ids) - 1)
    return np.where(mask, ids[idx], fill)


def _round_up(x: np.ndarray) -> np.ndarray:
    """Bucket width for a length: multiples of 4 up to 32, then powers of two."""
    x = np.maximum(x, 1)
    small = ((x + 3) // 4) * 4
    big = 2 ** np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64)
    return np.where(x <= 32, small, big)


def buckets(
    *widths: np.ndarray, exact: tuple[int, ...] = (), max_elements: int = 1 << 22
) -> list[tuple[np.ndarray, tuple[int, ...]]]:
    """Split groups into buckets of equal padded widths.

    Args:
        widths: per-group sizes, each of shape (G,) (e.g. candidate length, reference length).
        exact: indices of ``widths`` used as they are (e.g. the number of references), not rounded up.
        max_elements: cap on (rows x product of widths) per bucket, to bound memory.
    Returns:
        list of (group indices, padded widths).
    """
    rounded = [
        np.asarray(w, dtype=np.int64) if i in exact else _round_up(np.asarray(w, dtype=np.int64))
        for i, w in enumerate(widths)
    ]
    key = np.zeros(len(rounded[0]), dtype=np.int64)
    for r in rounded:
        key = key * 4096 + np.minimum(r, 4095)
    order = np.argsort(key, kind="stable")
    keys_sorted = key[order]
    cuts = np.flatnonzero(np.diff(keys_sorted)) + 1
    out = []
    for rows in np.split(order, cuts):
        dims = tuple(int(r[rows[0]]) for r in rounded)
        per_row = int(np.prod([max(d, 1) for d in dims]))
        step = max(1, max_elements // per_row)
        for s in range(0, len(rows), step):
            out.append((rows[s : s + step], dims))
    return out


@dataclass
class OrderStats:
    """Match statistics of one bucket at n-gram order k (k-grams starting at candidate position i).

    Attributes:
        k: n-gram order (1-based).
        valid: (b, W) bool, a k-gram starts at i (i + k <= candidate length).
        first: (b, W) bool, valid and the first occurrence of its k-gram in the candidate.
        tf_cand: (b, W) int, count of that k-gram in the candidate.
        tf_ref: (b, W, R) int, count of that k-gram in each reference (absent when R == 0).
    """

    k: int
    valid: np.ndarray
    first: np.ndarray
    tf_cand: np.ndarray
    tf_ref: np.ndarray | None


def pack_bits(matches: np.ndarray) -> np.ndarray:
    """Pack a boolean array's last axis (length <= 64) into uint64 bitmasks: bit j = matches[..., j]."""
    width = matches.shape[-1]
    if width > 64:
        raise ValueError(f"pack_bits handles at most 64 positions, got {width}")
    packed = np.packbits(matches, axis=-1, bitorder="little")
    out = packed[..., 0].astype(np.uint64)
    for b in range(1, packed.shape[-1]):
        out |= packed[..., b].astype(np.uint64) << np.uint64(8 * b)
    return out


def match_orders(cand: np.ndarray, refs: np.ndarray | None, n: int):
    """Yield `OrderStats` for k = 1..n for one bucket.

    Args:
        cand: (b, Lc) candidate word ids, padded with -1.
        refs: (b, R, Lr) reference word ids, padded with -2 (never equal to a candidate id), or None.
        n: maximum order.

    Sentences of at most 64 tokens use bitmasks over the other sentence's positions (bit j of
    m[i, r] says whether candidate token i equals reference token j), so each extra order is one
    shift-and on (b, Lc, R) words and counts are popcounts. Longer ones use boolean tensors.
    """
    if cand.shape[1] <= 64 and (refs is None or refs.shape[2] <= 64):
        yield from _match_orders_bits(cand, refs, n)
    else:
        yield from _match_orders_dense(cand, refs, n)


def _match_orders_bits(cand: np.ndarray, refs: np.ndarray | None, n: int):
    real = cand >= 0
    lengths = real.sum(axis=1)
    s1 = pack_bits((cand[:, :, None] == cand[:, None, :]) & real[:, None, :])  # (b, Lc)
    m1 = None if refs is None else pack_bits(cand[:, :, None, None] == refs[:, None, :, :])  # (b, Lc, R)
    s, m = s1, m1
    lc = cand.shape[1]
    for k in range(1, n + 1):
        width = lc - k + 1
        if width <= 0:
            return
        if k > 1:
            shift = np.uint64(k - 1)
            # k-gram at i matches k-gram at j iff the (k-1)-grams match and tokens i+k-1, j+k-1 do
            s = s[:, :-1] & (s1[:, k - 1 :] >> shift)
            if m is not None:
                m = m[:, :-1] & (m1[:, k - 1 :] >> shift)
        pos = np.arange(width, dtype=np.uint64)
        valid = np.arange(width)[None, :] + k <= lengths[:, None]
        below = (np.uint64(1) << pos) - np.uint64(1)  # bits of positions before i
        first = valid & ((s & below[None, :]) == 0)
        tf_cand = np.bitwise_count(s).astype(np.int64)
        tf_ref = None if m is None else np.bitwise_count(m).astype(np.int64)
        yield OrderStats(k, valid, first, tf_cand, tf_ref)


def _match_orders_dense(cand: np.ndarray, refs: np.ndarray | None, n: int):
    real = cand >= 0
    s1 = (cand[:, :, None] == cand[:, None, :]) & real[:, :, None] & real[:, None, :]
    s = s1
    e1 = None if refs is None else cand[:, :, None, None] == refs[:, None, :, :]
    e = e1
    lengths = real.sum(axis=1)
    lc = cand.shape[1]
    for k in range(1, n + 1):
        width = lc - k + 1
        if width <= 0:
            return
        if k > 1:
            s = s[:, :-1, :-1] & s1[:, k - 1 :, k - 1 :]
            if e is not None:
                e = e[:, :-1, :, :-1] & e1[:, k - 1 :, :, k - 1 :]
        valid = np.arange(width)[None, :] + k <= lengths[:, None]
        earlier = np.tri(width, width, -1, dtype=bool)
        first = valid & ~(s & earlier[None]).any(axis=2)
        tf_cand = s.sum(axis=2)
        tf_ref = None if e is None else e.sum(axis=3)
        yield OrderStats(k, valid, first, tf_cand, tf_ref)


# ---------------------------------------------------------------------------------------------
# Word ids straight from the bytes of ASCII text.
#
# Splitting 40k sentences into 440k Python strings and hashing each into a dict costs more than
# all the counting above. For ASCII text the ids are read off the bytes instead: a token of at
# most 8 characters is its own id (its bytes as a little-endian uint64: exact, no hashing);
# only longer tokens (a few percent) go through a dict. Text with non-ASCII characters or
# control characters falls back to str.split.

# ASCII control characters that str.split() does not treat as whitespace (NUL included): text
# holding any takes the str.split path, so below every byte <= 32 is a separator.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1b]")
_SHORT = 8
# keep the low `len` bytes of a little-endian word
_LEN_MASK = np.array([(1 << (8 * n)) - 1 for n in range(_SHORT)] + [(1 << 64) - 1], dtype=np.uint64)


def split_ids(strings: Sequence[str], mode: str = "whitespace") -> Encoded:
    """Tokenise by ``str.split()`` (mode "whitespace") or ``str.split(" ")`` (mode "space") and
    return word ids: equal ids <=> equal tokens (ids are sparse non-negative int64)."""
    if mode not in ("whitespace", "space"):
        raise ValueError(f"unknown split mode {mode!r}")
    joined = ("\n" if mode == "whitespace" else " ").join(strings)
    if not joined.isascii() or _CONTROL.search(joined):
        tokens = [s.split() if mode == "whitespace" else s.split(" ") for s in strings]
        return encode(tokens, {})
    raw = joined.encode("ascii")
    buf = np.frombuffer(raw + bytes(_SHORT), dtype=np.uint8)  # padded so 8-byte reads stay in bounds
    size = len(raw)
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    sent_start = np.cumsum(lengths + 1) - lengths - 1  # byte offset of each sentence
    if mode == "whitespace":
        # with control characters ruled out above, every byte <= 32 is whitespace for str.split()
        body = np.empty(size + 2, dtype=bool)
        body[0] = body[-1] = False
        np.greater(buf[:size], 32, out=body[1:-1])
        tok_start = np.flatnonzero(body[1:] & ~body[:-1])
        tok_end = np.flatnonzero(~body[1:] & body[:-1])
    else:
        # every sentence is cut at its spaces; the joining space is one more cut
        cuts = np.flatnonzero(buf[:size] == 32)
        tok_start = np.concatenate([[0], cuts + 1])
        tok_end = np.concatenate([cuts, [size]])
    tok_len = tok_end - tok_start
    # An unaligned uint64 view at every byte offset: words[t] = the 8 bytes starting at t.
    words = np.ndarray(shape=(size + 1,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    short = tok_len <= _SHORT
    ids = (words[tok_start] & _LEN_MASK[np.minimum(tok_len, _SHORT)]).view(np.int64)
    long_ = np.flatnonzero(~short)
    if len(long_):
        # bit 7 is never set in an ASCII byte, so these ids cannot equal a short token's
        table: dict[bytes, int] = {}
        ids[long_] = [
            0x80 | (table.setdefault(raw[s:e], len(table)) << 8)
            for s, e in zip(tok_start[long_].tolist(), tok_end[long_].tolist())
        ]
    # tokens per sentence: where each sentence's first token falls among the (sorted) token starts
    first_token = np.searchsorted(tok_start, sent_start)
    counts = np.diff(np.append(first_token, len(tok_start))).astype(np.int64)
    return _finish_encode(ids, counts)
