"""ROUGE-L per sample exactly as pycocoevalcap's ``Rouge`` (rouge/rouge.py), vectorised.

pycocoevalcap: tokens = ``str.split(" ")`` (so doubled spaces make empty tokens); for each
reference, LCS length with the candidate; precision = LCS / len(candidate) and recall =
LCS / len(reference) maximised *separately* over references; F = (1 + b^2) P R / (R + b^2 P)
with b = 1.2 (0 if P or R is 0).

LCS uses the bit-parallel algorithm of Allison & Dix (1986) in Hyyro's form (2004): with
M[c] the bitmask of reference positions holding token c, V = ~0 and for each candidate token
c: U = V & M[c]; V = (V + U) | (V - U); LCS = number of zero bits of V in the reference's
length. One uint64 covers references up to 64 tokens, and the update runs for all pairs at
once; pairs where both sentences exceed 64 tokens use a plain dynamic programme.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from reward_models._ngrams import buckets, pack_bits, pad_tokens, split_ids, unique_strings
from reward_models._text import ReferenceReward
from reward_models.tokenize import get_tokenizer


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Longest common subsequence length by dynamic programming (reference implementation)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def lcs_lengths(
    left: np.ndarray, left_len: np.ndarray, right: np.ndarray, right_len: np.ndarray
) -> np.ndarray:
    """LCS length of each row pair.

    Args:
        left: (P, La) ids padded with -1; left_len (P,).
        right: (P, Lb) ids padded with -2, Lb <= 64 (the bit-packed side); right_len (P,).
    Returns:
        (P,) int64.
    """
    masks = pack_bits(left[:, :, None] == right[:, None, :])  # (P, La): bit j = left[i] == right[j]
    v = np.full(len(left), np.iinfo(np.uint64).max, dtype=np.uint64)
    for i in range(left.shape[1]):
        m = masks[:, i]  # padding rows have m = 0, which leaves v unchanged
        u = v & m
        v = (v + u) | (v - u)  # uint64 arithmetic wraps, as the algorithm assumes
    width = right_len.astype(np.uint64)
    low = np.where(
        width >= 64, np.iinfo(np.uint64).max, (np.uint64(1) << np.minimum(width, 63)) - np.uint64(1)
    )
    return np.bitwise_count(~v & low).astype(np.int64)


class RougeL(ReferenceReward):
    """ROUGE-L (F-measure, beta = 1.2) as a reward against the ``references`` column.

    Args:
        beta: recall weight (1.2 in pycocoevalcap).
        tokenizer: see `reward_models.tokenize.get_tokenizer`.
        name: the reward's ``__name__``.
    """

    def __init__(
        self,
        beta: float = 1.2,
        tokenizer: str | Callable[[str], Sequence[str] | str] = "python",
        name: str = "rouge_l",
    ):
        self.beta = float(beta)
        self.__name__ = name
        self.tokenizer_name, self._tokenize = get_tokenizer(tokenizer)

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """ROUGE-L of each candidate: (B,) float64, pycocoevalcap's per-image scores."""
        if len(candidates) != len(references):
            raise ValueError(
                f"{self.__name__}: {len(candidates)} candidates but {len(references)} reference lists"
            )
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        for i, r in enumerate(refs):
            if not r:
                raise ValueError(f"{self.__name__}: sample {i} has no references")
        num = len(refs)
        if num == 0:
            return np.zeros(0)
        num_refs = np.array([len(r) for r in refs], dtype=np.int64)
        strings, (cand_sent, ref_sent) = unique_strings([list(candidates), [r for rs in refs for r in rs]])
        enc = split_ids(self._tokenize(strings), mode="space")
        starts = np.cumsum(enc.lengths) - enc.lengths
        lens = enc.lengths
        pair_cand = np.repeat(np.arange(num), num_refs)
        c_sent = cand_sent[pair_cand]
        c_len, r_len = lens[c_sent], lens[ref_sent]
        lcs = np.zeros(len(ref_sent), dtype=np.int64)
        # The packed side must fit 64 bits; LCS is symmetric, so pack whichever side does.
        swap = (r_len > 64) & (c_len <= 64)
        slow = (r_len > 64) & (c_len > 64)
        a_sent, b_sent = np.where(swap, ref_sent, c_sent), np.where(swap, c_sent, ref_sent)
        a_len, b_len = lens[a_sent], lens[b_sent]
        fast = np.flatnonzero(~slow)
        for rows, (la, lb) in buckets(a_len[fast], b_len[fast]):
            rows = fast[rows]
            a = pad_tokens(enc.ids, starts[a_sent[rows]], a_len[rows], la, -1)
            b = pad_tokens(enc.ids, starts[b_sent[rows]], b_len[rows], min(lb, 64), -2)
            lcs[rows] = lcs_lengths(a, a_len[rows], b, b_len[rows])
        for p in np.flatnonzero(slow).tolist():
            a = enc.ids[starts[c_sent[p]] : starts[c_sent[p]] + c_len[p]].tolist()
            b = enc.ids[starts[ref_sent[p]] : starts[ref_sent[p]] + r_len[p]].tolist()
            lcs[p] = lcs_length(a, b)
        # split(" ") never yields zero tokens, so the divisions are safe
        prec = lcs / c_len.astype(np.float64)
        rec = lcs / r_len.astype(np.float64)
        offsets = np.cumsum(num_refs) - num_refs
        prec_max = np.maximum.reduceat(prec, offsets)
        rec_max = np.maximum.reduceat(rec, offsets)
        ok = (prec_max != 0) & (rec_max != 0)
        b2 = self.beta**2
        score = np.zeros(num)
        score[ok] = ((1 + b2) * prec_max[ok] * rec_max[ok]) / (rec_max[ok] + b2 * prec_max[ok])
        return score

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        return self.score(candidates, references)

    def __repr__(self) -> str:
        return f"RougeL(__name__={self.__name__!r}, beta={self.beta}, tokenizer={self.tokenizer_name!r})"
