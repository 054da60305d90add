"""Word ids read off the bytes (`split_ids`) and the bit-parallel LCS, against plain Python."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from reward_models._ngrams import split_ids
from reward_models.rouge import lcs_length, lcs_lengths

TEXTS = [
    "a b  c",
    "",
    " lead",
    "trail ",
    "\t tab\nnewline\x0bvt\x1cfs",
    "abcdefgh abcdefg abcdefghi abcdefgh extraordinarily extraordinarily",
    "  ",
    "x",
    "caf\u00e9 au lait",  # non-ASCII: the str.split path
]


@pytest.mark.parametrize("mode", ["whitespace", "space"])
@pytest.mark.parametrize("texts", [TEXTS[:-1], TEXTS, ["ctrl\x01char", "ctrl\x01char ok"]])
def test_split_ids_equals_str_split(mode, texts):
    enc = split_ids(texts, mode)
    want = [t.split() if mode == "whitespace" else t.split(" ") for t in texts]
    assert enc.lengths.tolist() == [len(w) for w in want]
    flat = list(itertools.chain.from_iterable(want))
    ids = enc.ids.tolist()
    assert min(ids, default=0) >= 0  # negative ids are reserved for padding
    for (a, ia), (b, ib) in itertools.combinations(zip(flat, ids), 2):
        assert (a == b) == (ia == ib), (a, b)


def test_bit_parallel_lcs_matches_dynamic_programming():
    rng = random.Random(0)
    left, right = [], []
    for _ in range(300):
        left.append([rng.randrange(4) for _ in range(rng.randint(0, 40))])
        right.append([rng.randrange(4) for _ in range(rng.randint(0, 64))])
    la, lb = max(map(len, left)), 64
    a = np.array([x + [-1] * (la - len(x)) for x in left])
    b = np.array([y + [-2] * (lb - len(y)) for y in right])
    got = lcs_lengths(a, np.array(list(map(len, left))), b, np.array(list(map(len, right))))
    assert got.tolist() == [lcs_length(x, y) for x, y in zip(left, right)]
