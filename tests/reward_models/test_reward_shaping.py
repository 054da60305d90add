"""Shaping rewards on hand-checked captions."""

from __future__ import annotations

import pickle

import pytest

from reward_models import scene_vocab
from reward_models.shaping import AttributeReward, LengthReward, RepetitionPenalty, VocabularyRichness, words

TWO = [
    {"shape": "circle", "color": "red", "size": "small", "position": "left"},
    {"shape": "square", "color": "blue", "size": "large", "position": "right"},
]
ONE = [{"shape": "diamond", "color": "orange", "size": "large", "position": "center"}]


def test_length_reward_target_and_penalty():
    target = LengthReward(target=4, tolerance=1)
    texts = ["a b c d", "a b c", "a b", "a b c d e f g h i j"]
    assert target(completions=texts) == [0.0, 0.0, -0.25, -1.0]
    cap = LengthReward(max_length=2)
    assert cap(completions=["a", "a b c", "a b c d e f"]) == [0.0, -0.5, -1.0]
    tokens = LengthReward(target=2, unit="tokens")
    assert tokens(completions=["x", "y"], completion_ids=[[1, 2], [1, 2, 3, 4]]) == [0.0, -1.0]
    with pytest.raises(ValueError, match="exactly one of"):
        LengthReward(target=3, max_length=5)


def test_repetition_and_richness():
    rep = RepetitionPenalty(n=2)
    # "a b a b a b": bigrams ab ba ab ba ab -> 2 distinct of 5
    assert rep(completions=["a b a b a b", "a b c", "a"]) == [pytest.approx(-0.6), 0.0, 0.0]
    rich = VocabularyRichness()
    assert rich(completions=["the dog the dog", "A dog runs.", ""]) == [0.5, 1.0, 0.0]
    assert words("A dog's t-shirt, blue-ish!") == ["a", "dog", "s", "t", "shirt", "blue", "ish"]


def test_attribute_reward_full_partial_and_wrong():
    reward = AttributeReward()
    full = "Two shapes: a small red circle on the left, left of a large blue box on the right."
    # truth: 8 object attributes (all distinct) + count 2 + relation "left of" = 10, all named
    assert reward.score_one(full, TWO, 2, "left of") == 1.0
    # 2 of 10 true (red, circle), "a" counts as one but "two"... not named; claims: red, circle -> no errors
    assert reward.score_one("a red circle", TWO, 2, "left of") == pytest.approx(0.2)
    # nothing true; claims three, green, triangle(s), above: all wrong
    assert reward.score_one("three green triangles above", TWO, 2, "left of") == -1.0
    # synonyms and multi-word phrases: tiny=small, disk=circle, big=large, "left of" is the relation
    got = reward.score_one("A tiny red disk left of a big blue square.", TWO, 2, "left of")
    assert got == pytest.approx(7 / 10)  # missing: positions left, right and the count two
    assert reward.named("right of the middle") == {("relation", "right of"), ("position", "center")}


def test_attribute_reward_count_one_rule_and_word_boundaries():
    reward = AttributeReward()
    # count 1 via the article; 5 of 5 true, no wrong claims
    assert reward.score_one("a big orange diamond in the middle", ONE, 1, "") == 1.0
    # "two" is an explicit wrong count: the article no longer names count 1
    assert reward.score_one("two big orange diamonds in the center", ONE, 1, "") == pytest.approx(
        4 / 5 - 1 / 5
    )
    # substrings are not words: "bigger", "reddish", "abox" name nothing
    assert reward.named("bigger reddish abox") == set()


def test_attribute_reward_net_correct_scoring():
    share, net = AttributeReward(), AttributeReward(scoring="net_correct")
    # ONE is a large orange diamond in the center: 5 true attributes with the count
    detailed = "a small orange diamond at the top"  # orange, diamond, count (article) right; small, top wrong
    assert share.score_one("one", ONE, 1, "") == pytest.approx(1 / 5)  # 1 of 5 named, no wrong claim
    assert share.score_one(detailed, ONE, 1, "") == pytest.approx(3 / 5 - 2 / 4)  # below "one"
    assert net.score_one("one", ONE, 1, "") == pytest.approx(1 / 5)
    assert net.score_one(detailed, ONE, 1, "") == pytest.approx((3 - 2) / 5)  # ties "one"
    assert net.score_one("a orange diamond", ONE, 1, "") == pytest.approx(3 / 5)  # above both
    assert net.score_one("a big orange diamond in the middle", ONE, 1, "") == 1.0
    # "two" is a wrong count and the article no longer names count 1: 4 right, 1 wrong
    assert net.score_one("two big orange diamonds in the center", ONE, 1, "") == pytest.approx(3 / 5)
    # TWO: 10 true attributes; 7 named by the synonyms below, none wrong
    assert net.score_one("A tiny red disk left of a big blue square.", TWO, 2, "left of") == pytest.approx(0.7)
    # a list of guesses: 4 right (red, circle, blue, square), 6 wrong (green, yellow, triangle,
    # diamond, three, above); the shares score it 0.4 - 0.6, net marking (4 - 6) / 10
    spam = "three red green blue yellow circles squares triangles diamonds above"
    assert share.score_one(spam, TWO, 2, "left of") == pytest.approx(0.4 - 0.6)
    assert net.score_one(spam, TWO, 2, "left of") == pytest.approx(-0.2)
    # floored at -1: nothing right, every claim wrong
    assert net.score_one("three small green yellow purple triangles above", ONE, 1, "") == -1.0
    assert net(completions=["one", detailed], objects=[ONE, ONE], num_objects=[1, 1]) == [
        pytest.approx(0.2), pytest.approx(0.2)]
    with pytest.raises(ValueError, match="scoring='f1' is not one of"):
        AttributeReward(scoring="f1")

def test_attribute_reward_contract_and_errors():
    reward = AttributeReward()
    out = reward(
        prompts=["p", "p"],
        completions=[
            [{"role": "assistant", "content": "a big orange rhombus in the center"}],
            [{"role": "assistant", "content": "x"}],
        ],
        objects=[ONE, TWO],
        num_objects=[1, 2],
        relation=["", "below"],
        image=[None, None],
    )
    assert out == [1.0, 0.0]
    assert pickle.loads(pickle.dumps(reward))(
        completions=["a red circle"], objects=[TWO], num_objects=[2], relation=["above"]
    ) == [pytest.approx(0.2)]
    with pytest.raises(ValueError, match="sample 1, object 0: color='pink'"):
        reward(completions=["a", "b"], objects=[ONE, [{**ONE[0], "color": "pink"}]], num_objects=[1, 1])
    with pytest.raises(KeyError, match="needs the embedded task's columns"):
        reward(completions=["a"], references=[["a"]])
    assert set(scene_vocab.RELATIONS) == {"left of", "right of", "above", "below"}
