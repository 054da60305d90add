"""CIDEr-D (Vedantam et al. 2015) as pycocoevalcap computes it, vectorised, with corpus-level idf.

pycocoevalcap's ``Cider`` (cider/cider_scorer.py) is CIDEr-D: for n = 1..4, tf-idf vectors with
tf = raw n-gram count and idf = log(N) - log(max(1, df)) where df counts the images whose
references contain the n-gram and N is the number of images; the candidate's weights are
clipped at the reference's (min(h, r) * r); cosine with the plain (unclipped) norms; a
Gaussian length penalty exp(-delta^2 / (2 sigma^2)), sigma = 6, where the "length" of a
sentence is its number of *bigrams* (pycocoevalcap counts length in the n == 1 index branch,
which holds bigrams), i.e. max(len - 1, 0); then mean over n, mean over references, times 10.

As an RL reward (ppo_spec.md, "CIDEr-D as an RL reward") df and N come once from the whole
training corpus of references, never from the batch being scored. When the corpus is exactly
the scored references, `CiderD.score` equals pycocoevalcap's per-image scores (to ~1e-15).
Candidates keep their end-of-sentence: only the PTB punctuation list is removed (see
`reward_models.tokenize`), as in the official metric.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from reward_models._ngrams import (
    Encoded,
    buckets,
    build_tables,
    encode,
    gather_ranges,
    lookup_global_ids,
    match_orders,
    pad_tokens,
    unique_strings,
)
from reward_models._text import ReferenceReward
from reward_models.tokenize import get_tokenizer

_CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    """``$MMFT_CACHE/cider`` if set, else ``~/.cache/mmft/cider``."""
    root = os.environ.get("MMFT_CACHE")
    return Path(root) / "cider" if root else Path.home() / ".cache" / "mmft" / "cider"


class CiderD(ReferenceReward):
    """CIDEr-D reward with document frequencies fixed from a training corpus.

    Args:
        corpus: iterable of reference lists, one list per image (e.g. the training set's
            ``references`` column). Defines df and N = len(corpus). Should hold one entry per
            image: a data set that repeats an image's row counts it several times, as pycocoevalcap would.
        tokenizer: "python" (pure-Python PTB, default), "ptb" (Java, as pycocoevalcap), "none"
            (strings are already tokenised; they are only split on whitespace) or a callable
            ``str -> list[str]``.
        cache_dir: where document frequencies are cached, keyed by a SHA-256 of the tokenised
            corpus (default `default_cache_dir()`); ``False`` disables the disk cache.
        n: maximum n-gram order (4 in CIDEr-D).
        sigma: standard deviation of the Gaussian length penalty (6 in CIDEr-D).
        name: the reward's ``__name__`` (TRL logs it as ``rewards/<name>``).

    Besides df, every distinct corpus sentence keeps its word ids, tf-idf norms and length, so
    references that come from the corpus (the training case) are neither re-tokenised nor
    re-counted per call. Other references (e.g. a validation split) are handled on the fly.

    Call ``score(candidates, references)`` for raw numbers or use the object as a TRL reward
    function (it reads the ``references`` column).
    """

    def __init__(
        self,
        corpus: Iterable[Sequence[str]],
        tokenizer: str | Callable[[str], Sequence[str] | str] = "python",
        cache_dir: str | os.PathLike | None | bool = None,
        n: int = 4,
        sigma: float = 6.0,
        name: str = "cider_d",
    ):
        self.__name__ = name
        self.n = int(n)
        self.sigma = float(sigma)
        self.tokenizer_name, self._tokenize = get_tokenizer(tokenizer)
        corpus = [[r] if isinstance(r, str) else list(r) for r in corpus]
        if not corpus:
            raise ValueError(
                f"{name}: the corpus is empty; pass the training set's references (one list per image)"
            )
        self.num_documents = len(corpus)
        # log(N) as pycocoevalcap's ref_len: the idf of an n-gram seen nowhere in the corpus.
        self.ref_len = float(np.log(float(self.num_documents)))
        strings, groups = unique_strings(corpus)
        tokenised = self._tokenize(strings)
        token_lists = [t.split() for t in tokenised]
        self.corpus_hash = self._digest(tokenised, groups)
        cache = (
            None if cache_dir is False else Path(cache_dir or default_cache_dir()) / f"{self.corpus_hash}.npz"
        )
        if cache is not None and cache.is_file():
            self._load(cache)
            enc = encode(token_lists, self._vocab)
            per_token = lookup_global_ids(enc, self._tables)
        else:
            words = sorted({w for toks in token_lists for w in toks})
            self._vocab = {w: i for i, w in enumerate(words)}
            enc = encode(token_lists, self._vocab)
            self._tables, per_token = build_tables(enc, self.n)
            self._df = _document_frequencies(enc, per_token, self._tables, groups)
            if cache is not None:
                self._save(cache)
        self._idf = [self.ref_len - np.log(np.maximum(1.0, df)) for df in self._df]
        # Per distinct corpus sentence: word ids (CSR), tf-idf norms (S, n), lengths.
        self._sent_index = {s: i for i, s in enumerate(strings)}
        self._sent_ids = enc.ids.astype(np.int32)
        self._sent_lens = enc.lengths
        self._sent_starts = np.cumsum(enc.lengths) - enc.lengths
        self._sent_norm = self._norms(enc, per_token)

    # ------------------------------------------------------------------ corpus statistics
    def _digest(self, tokenised: list[str], groups: list[np.ndarray]) -> str:
        h = hashlib.sha256(f"cider-d v{_CACHE_VERSION} n={self.n}\n".encode())
        for group in groups:
            h.update("\x1e".join(" ".join(tokenised[i].split()) for i in group.tolist()).encode())
            h.update(b"\x1d")
        return h.hexdigest()[:32]

    def _save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        words = np.array(sorted(self._vocab, key=self._vocab.get), dtype=str)
        arrays = {"words": words, "num_documents": np.array(self.num_documents)}
        for k in range(self.n):
            arrays[f"table{k}"] = self._tables[k]
            arrays[f"df{k}"] = self._df[k]
        # write-then-rename so concurrent ranks never read a half-written file
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)

    def _load(self, path: Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            self._vocab = {w: i for i, w in enumerate(data["words"].tolist())}
            self._tables = [data[f"table{k}"] for k in range(self.n)]
            self._df = [data[f"df{k}"] for k in range(self.n)]
            if int(data["num_documents"]) != self.num_documents:
                raise RuntimeError(f"{self.__name__}: corrupt df cache {path}; delete it")

    def document_frequency(self, ngram: Sequence[str]) -> float:
        """df of one n-gram (given as its tokens) in the corpus; 0 if unseen. For inspection and tests."""
        if not ngram or len(ngram) > self.n or any(w not in self._vocab for w in ngram):
            return 0.0
        enc = encode([list(ngram)], self._vocab)
        gid = lookup_global_ids(enc, self._tables)[len(ngram) - 1][0]
        return float(self._df[len(ngram) - 1][gid]) if gid >= 0 else 0.0

    def _token_idf(self, per_token: list[np.ndarray]) -> list[np.ndarray]:
        """idf of the k-gram starting at each token, (T,) per order; unseen n-grams get log(N)."""
        out = []
        for k, gid in enumerate(per_token):
            idf = np.full(len(gid), self.ref_len)
            known = gid >= 0
            idf[known] = self._idf[k][gid[known]]
            out.append(idf)
        return out

    def _norms(self, enc: Encoded, per_token: list[np.ndarray]) -> np.ndarray:
        """Euclidean norm of each sentence's tf-idf vector per order: (S, n)."""
        idf = self._token_idf(per_token)
        starts = np.cumsum(enc.lengths) - enc.lengths
        out = np.zeros((len(enc.lengths), self.n))
        for rows, (width,) in buckets(enc.lengths):
            toks = pad_tokens(enc.ids, starts[rows], enc.lengths[rows], width, -1)
            for st in match_orders(toks, None, self.n):
                w_idf = pad_tokens(idf[st.k - 1], starts[rows], enc.lengths[rows], st.valid.shape[1], 0)
                weight = st.tf_cand * w_idf
                out[rows, st.k - 1] = np.sqrt(np.where(st.first, weight * weight, 0.0).sum(axis=1))
        return out

    # ------------------------------------------------------------------ scoring
    def score(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of each candidate against its own references.

        Args:
            candidates: (B,) strings.
            references: (B,) lists of reference strings (at least one each).
        Returns:
            (B,) float64 scores on pycocoevalcap's per-image scale (0..~10).
        """
        if len(candidates) != len(references):
            raise ValueError(
                f"{self.__name__}: {len(candidates)} candidates but {len(references)} reference lists"
            )
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        for i, r in enumerate(refs):
            if not r:
                raise ValueError(f"{self.__name__}: sample {i} has no references")
        if not len(candidates):
            return np.zeros(0)
        num_refs = np.array([len(r) for r in refs], dtype=np.int64)
        flat_refs = [r for rs in refs for r in rs]
        get = self._sent_index.get
        cached = np.fromiter((get(r, -1) for r in flat_refs), dtype=np.int64, count=len(flat_refs))
        fresh_refs = [r for r, c in zip(flat_refs, cached.tolist()) if c < 0]
        # Candidates and references missing from the corpus are tokenised together so that words
        # unknown to the corpus get the same temporary id on both sides.
        strings, (cand_new, ref_new) = unique_strings([list(candidates), fresh_refs])
        enc = encode([t.split() for t in self._tokenize(strings)], self._vocab)
        per_token = lookup_global_ids(enc, self._tables)
        new_norm = self._norms(enc, per_token)
        cand_idf = self._token_idf(per_token)
        new_starts = np.cumsum(enc.lengths) - enc.lengths

        # One call-local sentence store: fresh sentences first, then the corpus sentences used.
        used, ref_slot = np.unique(cached[cached >= 0], return_inverse=True)
        idx, _ = gather_ranges(self._sent_starts[used], self._sent_lens[used])
        store = np.concatenate([enc.ids, self._sent_ids[idx].astype(np.int64)])
        lens = np.concatenate([enc.lengths, self._sent_lens[used]])
        starts = np.cumsum(lens) - lens
        norms = np.concatenate([new_norm, self._sent_norm[used]])
        ref_sent = np.empty(len(flat_refs), dtype=np.int64)
        ref_sent[cached >= 0] = len(enc.lengths) + ref_slot
        ref_sent[cached < 0] = ref_new
        return self._score_groups(
            store, starts, lens, norms, cand_new, ref_sent, num_refs, new_starts, cand_idf
        )

    def _score_groups(
        self,
        store: np.ndarray,
        starts: np.ndarray,
        lens: np.ndarray,
        norms: np.ndarray,
        cand_sent: np.ndarray,
        ref_sent: np.ndarray,
        num_refs: np.ndarray,
        cand_starts: np.ndarray,
        cand_idf: list[np.ndarray],
    ) -> np.ndarray:
        """CIDEr-D of each candidate b against references ref_sent[offsets[b]:offsets[b] + num_refs[b]].

        Args:
            store: (T,) word ids of every sentence of the call; starts, lens: (S,) their runs.
            norms: (S, n) tf-idf norms per sentence and order.
            cand_sent: (B,) sentence of each candidate; ref_sent: (P,) sentence of each reference
                slot, P = num_refs.sum(); num_refs: (B,).
            cand_starts, cand_idf: token offsets of the freshly encoded sentences (candidates are
                among them) and, per order, the idf of the k-gram starting at each of their tokens.
        Returns:
            (B,) scores.
        """
        n = self.n
        num = len(cand_sent)
        r_max = int(num_refs.max())
        offsets = np.cumsum(num_refs) - num_refs
        # (B, r_max) reference sentence of each slot, -1 where a sample has fewer references.
        slot = np.arange(r_max)[None, :]
        has = slot < num_refs[:, None]
        ref_mat = np.where(has, ref_sent[np.minimum(offsets[:, None] + slot, len(ref_sent) - 1)], -1)
        ref_len_mat = np.where(has, lens[np.maximum(ref_mat, 0)], 0)
        cand_len = lens[cand_sent]
        # length = number of bigrams (pycocoevalcap counts it in the bigram branch)
        delta = (np.maximum(cand_len - 1, 0)[:, None] - np.maximum(ref_len_mat - 1, 0)).astype(np.float64)
        penalty = np.e ** (-(delta**2) / (2 * self.sigma**2))
        ref_norm = np.where(has[:, :, None], norms[np.maximum(ref_mat, 0)], 0.0)  # (B, r_max, n)
        cand_norm = norms[cand_sent]  # (B, n)
        sim = np.zeros((num, r_max, n))
        for rows, (lc, rr, lr) in buckets(cand_len, num_refs, ref_len_mat.max(axis=1), exact=(1,)):
            cand = pad_tokens(store, starts[cand_sent[rows]], cand_len[rows], lc, -1)
            rm = ref_mat[rows, :rr]
            ref = pad_tokens(store, starts[np.maximum(rm, 0)].ravel(), ref_len_mat[rows, :rr].ravel(), lr, -2)
            ref = ref.reshape(len(rows), rr, lr)
            for st in match_orders(cand, ref, n):
                idf = pad_tokens(
                    cand_idf[st.k - 1], cand_starts[cand_sent[rows]], cand_len[rows], st.valid.shape[1], 0
                )
                w_c = (st.tf_cand * idf)[:, :, None]
                w_r = st.tf_ref * idf[:, :, None]
                # vrama91's clipping: min(candidate weight, reference weight) * reference weight
                dot = np.where(st.first[:, :, None], np.minimum(w_c, w_r) * w_r, 0.0).sum(axis=1)
                sim[rows, :rr, st.k - 1] = dot
        denom = cand_norm[:, None, :] * ref_norm
        nonzero = denom != 0
        sim = np.where(nonzero, sim / np.where(nonzero, denom, 1.0), sim) * penalty[:, :, None]
        per_ref = np.where(has, sim.mean(axis=2), 0.0)
        return per_ref.sum(axis=1) / num_refs * 10.0

    def _score_texts(self, candidates: list[str], references: list[list[str]]) -> np.ndarray:
        return self.score(candidates, references)

    def __repr__(self) -> str:
        return (
            f"CiderD(__name__={self.__name__!r}, documents={self.num_documents}, tokenizer={self.tokenizer_name!r}, "
            f"n={self.n}, sigma={self.sigma})"
        )


def _document_frequencies(
    enc: Encoded, per_token: list[np.ndarray], tables: list[np.ndarray], groups: list[np.ndarray]
) -> list[np.ndarray]:
    """df per corpus n-gram: the number of images whose reference set contains it (pycocoevalcap
    counts each n-gram once per image, over the union of that image's references)."""
    doc_sent = np.concatenate(groups)
    doc_of = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for g in groups])
    # sentence -> images using it (a caption shared by two images counts for both)
    order = np.argsort(doc_sent, kind="stable")
    images = doc_of[order]
    counts = np.bincount(doc_sent, minlength=len(enc.lengths))
    starts = np.cumsum(counts) - counts
    out = []
    for ids, table in zip(per_token, tables):
        valid = np.flatnonzero(ids >= 0)
        tok_sent = enc.sent[valid]
        index, owner = gather_ranges(starts[tok_sent], counts[tok_sent])
        pairs = np.unique(images[index] * len(table) + ids[valid][owner])
        out.append(np.bincount(pairs % len(table), minlength=len(table)).astype(np.float64))
    return out
