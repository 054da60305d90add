"""BLEU-1..n per sample exactly as pycocoevalcap's ``Bleu`` (bleu/bleu_scorer.py), vectorised.

pycocoevalcap semantics reproduced here:
- tokens = ``str.split()``; clipped n-gram matches against the maximum count over references;
- per-sample BLEU-k = (prod_{j<=k} (correct_j + 1e-15) / (guess_j + 1e-9)) ** (1/k), times the
  brevity penalty exp(1 - 1/ratio) when ratio = (len_c + 1e-15) / (reflen + 1e-9) < 1;
- reflen is the "closest" reference length (ties go to the shorter one), the option
  ``Bleu.compute_score`` uses;
- the corpus score sums correct/guess/lengths over samples before the same formula.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from reward_models._ngrams import buckets, match_orders, pad_tokens, split_ids, unique_strings
from reward_models._text import ReferenceReward
from reward_models.tokenize import get_tokenizer

_TINY = 1e-15
_SMALL = 1e-9


class Bleu(ReferenceReward):
    """BLEU as a reward: the sample's BLEU-``order`` against its ``references`` column.

    Args:
        n: highest n-gram order computed (4 in COCO evaluation).
        order: which BLEU-k the reward returns (default n).
        tokenizer: see `reward_models.tokenize.get_tokenizer` ("python" default, "ptb", "none", callable).
        name: the reward's ``__name__`` (default ``"bleu"``, or ``"bleu<k>"`` when order != 4).
    """

    def __init__(
        self,
        n: int = 4,
        order: int | None = None,
        tokenizer: str | Callable[[str], Sequence[str] | str] = "python",
        name: str | None = None,
    ):
        self.n = int(n)
        self.order = int(order or n)
        if not 1 <= self.order <= self.n:
            raise ValueError(f"Bleu: order must be in 1..{self.n}, got {order}")
        self.__name__ = name or ("bleu" if self.order == 4 else f"bleu{self.order}")
        self.tokenizer_name, self._tokenize = get_tokenizer(tokenizer)

    def statistics(
        self, candidates: Sequence[str], references: Sequence[Sequence[str]]
    ) -> dict[str, np.ndarray]:
        """Sufficient statistics per sample.

        Returns:
            dict with ``correct`` (B, n) clipped matches, ``guess`` (B, n) candidate n-gram counts,
            ``testlen`` (B,) and ``reflen`` (B,) closest reference length.
        """
        if len(candidates) != len(references):
            raise ValueError(
                f"{self.__name__}: {len(candidates)} candidates but {len(references)} reference lists"
            )
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        for i, r in enumerate(refs):
            if not r:
                raise ValueError(f"{self.__name__}: sample {i} has no references")
        num = len(refs)
        num_refs = np.array([len(r) for r in refs], dtype=np.int64)
        strings, (cand_sent, ref_sent) = unique_strings([list(candidates), [r for rs in refs for r in rs]])
        enc = split_ids(self._tokenize(strings))
        starts = np.cumsum(enc.lengths) - enc.lengths
        lens = enc.lengths
        r_max = int(num_refs.max()) if num else 0
        offsets = np.cumsum(num_refs) - num_refs
        slot = np.arange(r_max)[None, :]
        has = slot < num_refs[:, None]
        ref_mat = np.where(has, ref_sent[np.minimum(offsets[:, None] + slot, max(len(ref_sent) - 1, 0))], 0)
        ref_len = np.where(has, lens[ref_mat], 0)
        test_len = lens[cand_sent]
        # closest reference length, ties to the shorter: min over (|l - testlen|, l)
        # a missing slot gets a gap larger than any real one (not an int64 max: the key below would overflow)
        longest = int(ref_len.max(initial=0)) + int(test_len.max(initial=0)) + 1
        gap = np.where(has, np.abs(ref_len - test_len[:, None]), longest)
        key = gap * (longest + 1) + ref_len
        reflen = ref_len[np.arange(num), np.argmin(key, axis=1)] if num else np.zeros(0, np.int64)
        guess = np.maximum(0, test_len[:, None] - np.arange(self.n)[None, :])
        correct = np.zeros((num, self.n), dtype=np.int64)
        for rows, (lc, rr, lr) in buckets(test_len, num_refs, ref_len.max(axis=1), exact=(1,)):
            cand = pad_tokens(enc.ids, starts[cand_sent[rows]], test_len[rows], lc, -1)
            rm = ref_mat[rows, :rr]
            ref = pad_tokens(enc.ids, starts[rm].ravel(), ref_len[rows, :rr].ravel(), lr, -2).reshape(
                len(rows), rr, lr
            )
            for st in match_orders(cand, ref, self.n):
                clipped = np.minimum(st.tf_cand, st.tf_ref.max(axis=2))
                correct[rows, st.k - 1] = np.where(st.first, clipped, 0).sum(axis=1)
        return {"correct": correct, "guess": guess, "testlen": test_len, "reflen": reflen}

    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Per-sample BLEU-1..n: (B, n) float64, pycocoevalcap's ``scores`` transposed."""
        st = self.statistics(candidates, references)
        return _bleu(st["correct"], st["guess"], st["testlen"], st["reflen"])

    def corpus_score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """Corpus BLEU-1..n (n,), pycocoevalcap's ``score``: statistics summed over samples first."""
        st = self.statistics(candidates, references)
        return _bleu(
            st["correct"].sum(axis=0, keepdims=True),
            st["guess"].sum(axis=0, keepdims=True),
            st["testlen"].sum(keepdims=True),
            st["reflen"].sum(keepdims=True),
        )[0]

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        return self.score(candidates, references)[:, self.order - 1]

    def __repr__(self) -> str:
        return f"Bleu(__name__={self.__name__!r}, n={self.n}, order={self.order}, tokenizer={self.tokenizer_name!r})"


def _bleu(correct: np.ndarray, guess: np.ndarray, testlen: np.ndarray, reflen: np.ndarray) -> np.ndarray:
    """BLEU-1..n from statistics, with pycocoevalcap's smoothing constants and operation order.

    Shapes: correct, guess (B, n); testlen, reflen (B,). Returns (B, n).
    """
    ratios = (correct.astype(np.float64) + _TINY) / (guess.astype(np.float64) + _SMALL)
    running = np.cumprod(ratios, axis=1)  # same left-to-right products as the scorer's loop
    out = running ** (1.0 / np.arange(1, correct.shape[1] + 1))[None, :]
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    out[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    return out
