"""The pure-Python PTB tokenizer against pycocoevalcap's Java PTBTokenizer."""

from __future__ import annotations

import shutil
from collections import Counter

import pytest

from reward_models.tokenize import JavaPTBTokenizer, get_tokenizer, ptb_tokenize, ptb_tokens

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="no `java` on PATH for the Stanford PTBTokenizer"
)


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A dog's ball.", ["a", "dog", "'s", "ball"]),
        ("They can't stop; it's fun!", ["they", "ca", "n't", "stop", "it", "'s", "fun"]),
        (
            'A "quoted" word, (left) and [box]',
            ["a", "quoted", "word", "-lrb-", "left", "-rrb-", "and", "-lsb-", "box", "-rsb-"],
        ),
        ("Mr. Smith in the U.S. at 3.5 miles", ["mr.", "smith", "in", "the", "u.s.", "at", "3.5", "miles"]),
        ("A t-shirt , 1,000 people -- wow ...", ["a", "t-shirt", "1,000", "people", "wow"]),
        ("dogs' toys $5 50% #1 cannot", ["dogs", "toys", "$", "5", "50", "%", "#", "1", "can", "not"]),
        ("", []),
    ],
)
def test_ptb_tokens_cases(text, tokens):
    assert ptb_tokens(text) == tokens
    assert ptb_tokenize(text) == " ".join(tokens)


@needs_java
def test_python_tokenizer_agrees_with_java_on_flickr8k(flickr8k):
    captions = [c for caps in flickr8k.values() for c in caps]
    assert len(captions) == 40460
    java = JavaPTBTokenizer()(captions)  # one Java process for all captions
    python = [ptb_tokenize(c) for c in captions]
    disagree = [(c, j, p) for c, j, p in zip(captions, java, python) if j != p]
    rate = 1 - len(disagree) / len(captions)
    assert rate >= 0.995, f"agreement {rate:.4%}; first disagreements: {disagree[:5]}"
    print(f"python/java PTB agreement on Flickr8k: {rate:.4%} ({len(disagree)} of {len(captions)} differ)")


@needs_java
def test_java_wrapper_matches_pycocoevalcap_ptbtokenizer(flickr8k):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = [c for caps in list(flickr8k.values())[:60] for c in caps] + [
        "",
        'An odd (one) -- with "quotes".',
    ]
    coco = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    assert JavaPTBTokenizer()(captions) == [coco[i][0] for i in range(len(captions))]
    name, fn = get_tokenizer("ptb")
    assert name == "ptb" and fn(["A Dog."]) == ["a dog"]


def test_tokenizer_options():
    assert get_tokenizer("none")[1](["A  b"]) == ["A  b"]
    name, fn = get_tokenizer(str.split)
    assert name.startswith("callable:") and fn(["x y"]) == ["x y"]
    with pytest.raises(ValueError, match="unknown tokenizer 'spacy'"):
        get_tokenizer("spacy")
    assert Counter(ptb_tokens("a a b")) == Counter({"a": 2, "b": 1})
