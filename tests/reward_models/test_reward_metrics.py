"""CIDEr-D, BLEU and ROUGE-L: identical to pycocoevalcap, corpus-level idf, reward contract."""

from __future__ import annotations

import pickle
import random
import shutil
from collections import Counter

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu as CocoBleu
from pycocoevalcap.cider.cider import Cider as CocoCider
from pycocoevalcap.rouge.rouge import Rouge as CocoRouge

from reward_models import Bleu, CiderD, RougeL


@pytest.fixture(scope="module")
def coco_cider(coco_inputs):
    return CocoCider().compute_score(*coco_inputs)


def test_cider_d_matches_pycocoevalcap_on_flickr8k(leave_one_out, coco_cider, tmp_path):
    _, cands, refs = leave_one_out
    corpus_score, per_image = coco_cider
    cider = CiderD(refs, tokenizer="none", cache_dir=tmp_path)
    mine = cider.score(cands, refs)
    assert mine.shape == (8092,)
    np.testing.assert_allclose(mine, per_image, rtol=0, atol=1e-9)
    assert round(float(mine.mean()), 4) == 0.7620  # the README's figure
    assert abs(mine.mean() - corpus_score) < 1e-12


def test_bleu_matches_pycocoevalcap_on_flickr8k(leave_one_out, coco_inputs):
    _, cands, refs = leave_one_out
    corpus, per_image = CocoBleu(4).compute_score(*coco_inputs, verbose=0)
    bleu = Bleu(4, tokenizer="none")
    np.testing.assert_allclose(bleu.score(cands, refs), np.array(per_image).T, rtol=0, atol=1e-9)
    mine_corpus = bleu.corpus_score(cands, refs)
    np.testing.assert_allclose(mine_corpus, corpus, rtol=0, atol=1e-12)
    assert round(float(mine_corpus[3]), 4) == 0.2104  # the README's figure


def test_rouge_l_matches_pycocoevalcap_on_flickr8k(leave_one_out, coco_inputs):
    _, cands, refs = leave_one_out
    corpus, per_image = CocoRouge().compute_score(*coco_inputs)
    mine = RougeL(tokenizer="none").score(cands, refs)
    np.testing.assert_allclose(mine, per_image, rtol=0, atol=1e-9)


def _random_set(seed: int, count: int = 200):
    """Small vocabulary so n-grams repeat; lengths past 64 tokens exercise the long-sentence paths;
    1-3 references; doubled and trailing spaces (ROUGE splits on single spaces)."""
    rng = random.Random(seed)
    words = "a b c d e the dog".split()

    def sentence(lo, hi):
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    cands = [sentence(1, 80) for _ in range(count)]
    refs = [[sentence(1, 90) for _ in range(rng.randint(1, 3))] for _ in range(count)]
    cands[0], refs[0] = "a  b ", ["a b", "b a a"]
    cands[1], refs[1] = "dog", ["dog"]
    # empty candidate / empty reference; fewer references than other samples (padded slots)
    cands[2:6] = ["", "a dog", "x", "a dog runs"]
    refs[2:6] = [["a dog"], [""], ["x y", "x"], ["a dog runs", "", "dog"]]
    return cands, refs


def test_edge_cases_match_pycocoevalcap():
    cands, refs = _random_set(0)
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    np.testing.assert_allclose(
        CiderD(refs, tokenizer="none", cache_dir=False).score(cands, refs),
        CocoCider().compute_score(gts, res)[1],
        atol=1e-9,
        rtol=0,
    )
    np.testing.assert_allclose(
        Bleu(tokenizer="none").score(cands, refs),
        np.array(CocoBleu(4).compute_score(gts, res, verbose=0)[1]).T,
        atol=1e-9,
    )
    np.testing.assert_allclose(
        RougeL(tokenizer="none").score(cands, refs), CocoRouge().compute_score(gts, res)[1], atol=1e-9
    )


def _cider_by_hand(
    cand: str, refs: list[str], corpus: list[list[str]], n: int = 4, sigma: float = 6.0
) -> float:
    """CIDEr-D written out from ppo_spec.md with corpus-level df (dictionaries, no numpy tricks)."""

    def grams(s):
        w = s.split()
        return Counter(tuple(w[i : i + k]) for k in range(1, n + 1) for i in range(len(w) - k + 1))

    df = Counter(g for doc in corpus for g in set().union(*(grams(r) for r in doc)))
    big_n = np.log(len(corpus))

    def vec(s):
        v = [dict() for _ in range(n)]
        for g, tf in grams(s).items():
            v[len(g) - 1][g] = tf * (big_n - np.log(max(1.0, df[g])))
        return v

    def length(s):  # pycocoevalcap's length: the number of bigrams
        return max(len(s.split()) - 1, 0)

    vc = vec(cand)
    total = 0.0
    for ref in refs:
        vr = vec(ref)
        sims = []
        for k in range(n):
            dot = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vc[k].items())
            nc = np.sqrt(sum(w * w for w in vc[k].values()))
            nr = np.sqrt(sum(w * w for w in vr[k].values()))
            sims.append(dot / (nc * nr) if nc and nr else dot)
        penalty = np.exp(-((length(cand) - length(ref)) ** 2) / (2 * sigma**2))
        total += np.mean(sims) * penalty
    return total / len(refs) * 10.0


def test_cider_d_uses_corpus_df_not_batch_df():
    corpus = [
        ["a dog runs on the grass", "a brown dog is running"],
        ["two children play in the snow", "kids playing in snow"],
        ["a man rides a bike", "a cyclist on a road"],
        ["a dog jumps over a fence", "the dog leaps"],
    ]
    cider = CiderD(corpus, tokenizer="none", cache_dir=False)
    # references outside the corpus and words the corpus never saw ("zebra")
    cands = ["a dog runs", "a zebra runs on the grass", "kids play in snow"]
    refs = [["a dog is running on grass", "a dog runs fast"], ["a zebra on the grass"], corpus[1]]
    got = cider.score(cands, refs)
    want = [_cider_by_hand(c, r, corpus) for c, r in zip(cands, refs)]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    # the score of a sample does not depend on what else is in the batch
    alone = [cider.score([c], [r])[0] for c, r in zip(cands, refs)]
    np.testing.assert_allclose(alone, got, rtol=0, atol=1e-12)
    assert cider.document_frequency(["dog"]) == 2.0
    assert cider.document_frequency(["a", "dog"]) == 2.0
    assert cider.document_frequency(["zebra"]) == 0.0


def test_cider_d_df_cache_roundtrip(tmp_path):
    corpus = [["a dog runs", "a dog"], ["a cat sits", "the cat"]]
    first = CiderD(corpus, tokenizer="none", cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and files[0].stem == first.corpus_hash
    second = CiderD(corpus, tokenizer="none", cache_dir=tmp_path)  # loads the file
    assert second.corpus_hash == first.corpus_hash
    np.testing.assert_array_equal(
        second.score(["a dog sits"], [["a dog runs"]]), first.score(["a dog sits"], [["a dog runs"]])
    )
    other = CiderD(corpus + [["a bird flies"]], tokenizer="none", cache_dir=tmp_path)
    assert other.corpus_hash != first.corpus_hash and len(list(tmp_path.glob("*.npz"))) == 2


def test_python_tokenizer_is_the_default_and_keeps_end_of_sentence(tmp_path):
    corpus = [["A dog runs.", "A brown dog's running!"], ["Two kids (boys) play."]]
    cider = CiderD(corpus, cache_dir=tmp_path)
    assert cider.tokenizer_name == "python"
    # PTB tokenisation: case and the final period do not matter, "dog's" is "dog 's", brackets stay
    raw = cider.score(["A dog runs .", "a brown dog 's running"], [corpus[0], corpus[0]])
    pre = CiderD(
        [["a dog runs", "a brown dog 's running"], ["two kids -lrb- boys -rrb- play"]],
        tokenizer="none",
        cache_dir=False,
    ).score(["a dog runs", "a brown dog 's running"], [["a dog runs", "a brown dog 's running"]] * 2)
    np.testing.assert_allclose(raw, pre, atol=1e-12)


def test_reward_contract_standard_and_conversational():
    refs = [["a dog runs on grass", "a dog running"], ["a red car"], []]
    cider = CiderD([r for r in refs if r], cache_dir=False)
    plain = ["a dog runs", "a red car", "anything"]
    conversational = [
        [{"role": "assistant", "content": "a dog runs"}],
        [
            {
                "role": "assistant",
                "content": [{"type": "text", "text": "a red "}, {"type": "text", "text": "car"}],
            }
        ],
        [{"role": "assistant", "content": "anything"}],
    ]
    for reward in (cider, Bleu(), Bleu(order=1), RougeL()):
        out = reward(
            prompts=["p"] * 3, completions=plain, completion_ids=[[1]] * 3, references=refs, image=[None] * 3
        )
        assert len(out) == 3 and out[2] is None  # no references: the reward does not apply
        assert all(isinstance(v, float) and np.isfinite(v) for v in out[:2])
        assert out[0] > 0 and out[1] > 0
        assert reward(prompts=["p"] * 3, completions=conversational, references=refs) == out
        # picklable (TRL may ship reward functions to worker processes) and unchanged by it
        clone = pickle.loads(pickle.dumps(reward))
        assert clone.__name__ == reward.__name__ and clone(completions=plain, references=refs) == out
    assert [cider.__name__, Bleu().__name__, Bleu(order=1).__name__, RougeL().__name__] == [
        "cider_d",
        "bleu",
        "bleu1",
        "rouge_l",
    ]


def test_reward_errors_name_the_reward():
    with pytest.raises(KeyError, match="'cider_d' needs a `references` column"):
        CiderD([["a"]], cache_dir=False)(prompts=["p"], completions=["a"], image=[None])
    with pytest.raises(ValueError, match="'bleu'.*2 rows but there are 1 completions"):
        Bleu()(completions=["a"], references=[["a"], ["b"]])
    with pytest.raises(TypeError, match="'rouge_l': references of sample 0"):
        RougeL()(completions=["a"], references=[[1, 2]])


@pytest.mark.skipif(shutil.which("java") is None, reason="needs `java` for pycocoevalcap's PTBTokenizer")
def test_default_python_tokenizer_reproduces_the_coco_pipeline_on_raw_captions(flickr8k):
    """Raw captions: pycocoevalcap's PTBTokenizer (Java) + Cider/Bleu/Rouge versus reward_models with
    its default pure-Python tokenizer, and with tokenizer="ptb"; 500 images."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    images = list(flickr8k)[:500]
    cands = [flickr8k[i][0] for i in images]
    refs = [flickr8k[i][1:5] for i in images]
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in r] for k, r in enumerate(refs)})
    res = tok.tokenize({k: [{"caption": c}] for k, c in enumerate(cands)})
    coco_cider = CocoCider().compute_score(gts, res)[1]
    for tokenizer in ("python", "ptb"):
        np.testing.assert_allclose(
            CiderD(refs, tokenizer=tokenizer, cache_dir=False).score(cands, refs), coco_cider, atol=1e-9
        )
    np.testing.assert_allclose(
        Bleu().score(cands, refs), np.array(CocoBleu(4).compute_score(gts, res, verbose=0)[1]).T, atol=1e-9
    )
    np.testing.assert_allclose(RougeL().score(cands, refs), CocoRouge().compute_score(gts, res)[1], atol=1e-9)
