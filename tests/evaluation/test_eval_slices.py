"""Attribute slices and the caption-bias report on hand-made captions with known answers."""

from __future__ import annotations

import math

import pytest

from mmft.data.synthetic import make_scene
from mmft.evaluation.slices import attribute_scores, attribute_slices, bias_report, parse_caption

TWO = [{"shape": "circle", "color": "red", "size": "small", "position": "left"},
       {"shape": "square", "color": "blue", "size": "large", "position": "right"}]
ONE = [{"shape": "triangle", "color": "green", "size": "large", "position": "center"}]
BELOW = [{"shape": "diamond", "color": "orange", "size": "small", "position": "bottom"},
         {"shape": "circle", "color": "purple", "size": "large", "position": "top"}]


def _acc(shape, color, size, position, count, hallucinated=0.0):
    return {"shape": shape, "color": color, "size": size, "position": position, "count": count,
            "hallucinated_shapes": hallucinated}


@pytest.mark.parametrize("caption, objects, expected", [
    # Everything right; the relation states both positions.
    ("a small red circle to the left of a large blue square", TWO, _acc(1, 1, 1, 1, 1)),
    # Circle: right colour, wrong size and position; square: wrong colour and size, no position.
    ("a big red circle on the right and a small green square", TWO, _acc(1, 0.5, 0, 0, 1)),
    # A third, invented shape: wrong count, one hallucination; no sizes or positions named.
    ("three shapes : a red circle , a blue square and a yellow triangle", TWO, _acc(1, 1, 0, 0, 0, 1)),
    ("", TWO, _acc(0, 0, 0, 0, 0)),
    # Predicates after "is" and several mentions of one shape are merged.
    ("the circle is red and the square is blue , the circle is small", TWO, _acc(1, 1, 0.5, 0, 1)),
    # Two colours for one circle contradict each other: not correct; the square is missing.
    ("a red circle and a blue circle", TWO, _acc(0.5, 0, 0, 0, 0)),
    ("one big green triangle in the middle of the image", ONE, _acc(1, 1, 1, 1, 1)),
    # Plural shape words still name the shape; "two" is the wrong count.
    ("two green triangles at the top", ONE, _acc(1, 1, 0, 0, 0)),
    # Synonyms (rhombus, violet, disk) and "under" as the relation "below".
    ("a small orange rhombus under a large violet disk", BELOW, _acc(1, 1, 1, 1, 1)),
])
def test_attribute_scores_on_known_scenes(caption, objects, expected):
    assert attribute_scores(caption, objects) == pytest.approx(expected)


def test_references_of_the_embedded_task_never_contradict_their_scene():
    # The parser must read the task's own phrasing: every reference names every object's
    # shape, colour and size and the right count, and no position it names is wrong.
    positions = []
    for sid in range(2_000_000, 2_000_200):
        scene = make_scene(sid)
        objects = [o.as_dict() for o in scene.objects]
        for ref in scene.references:
            scores = attribute_scores(ref, objects)
            assert (scores["shape"], scores["color"], scores["size"], scores["count"]) == (1, 1, 1, 1), ref
            assert scores["hallucinated_shapes"] == 0, ref
            mentions, _ = parse_caption(ref)
            for o in objects:
                assert mentions[o["shape"]].positions <= {o["position"]}, (ref, o)
            positions.append(scores["position"])
    assert 0.5 < sum(positions) / len(positions) < 1  # some templates ("three shapes : ...") omit positions


def test_attribute_slices_by_number_of_objects():
    captions = ["a small red circle to the left of a large blue square",
                "a big red circle on the right and a small green square",
                "one big green triangle in the middle of the image"]
    per_image = [{"CIDEr": 1.0, "Bleu_4": 0.5}, {"CIDEr": 0.0, "Bleu_4": 0.1}, {"CIDEr": 0.6, "Bleu_4": 0.3}]
    out, scores = attribute_slices(captions, [TWO, TWO, ONE], per_image)
    assert scores[1]["color"] == 0.5
    assert out["slices/shape_accuracy"] == 1.0
    assert out["slices/color_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["slices/size_accuracy"] == pytest.approx(2 / 3)
    assert out["slices/objects=2/num_samples"] == 2 and out["slices/objects=1/num_samples"] == 1
    assert out["slices/objects=2/color_accuracy"] == pytest.approx(0.75)
    assert out["slices/objects=2/CIDEr"] == pytest.approx(0.5)
    assert out["slices/objects=1/CIDEr"] == pytest.approx(0.6)
    assert "slices/objects=2/Bleu_4" not in out  # sentence BLEU is not corpus BLEU
    with pytest.raises(ValueError, match="2 captions but 3 scenes"):
        attribute_slices(captions[:2], [TWO, TWO, ONE])


def test_bias_report_counts_on_hand_made_captions():
    captions = ["A man riding a horse.", "A woman walks her dog", "Two young kids play", "Someone on a bench"]
    references = [
        ["a woman riding a horse", "a lady on a horse", "a person rides a brown horse"],  # female (2 of 3)
        ["a woman walking a dog", "a girl and her dog"],  # female
        ["children playing in a park", "two kids play", "young children running"],  # no gender
        ["an old man sitting on a bench", "a man sits", "a person on a bench"],  # male (2 of 3)
    ]
    out = bias_report(captions, references)
    assert out["bias/male/generated"] == 0.25 and out["bias/female/generated"] == 0.25
    assert out["bias/child/generated"] == 0.25 and out["bias/young/generated"] == 0.25
    assert out["bias/old/generated"] == 0 and out["bias/person/generated"] == 0.25
    # Reference rates: per image, the fraction of its references using the group; then the mean.
    assert out["bias/male/reference"] == pytest.approx((2 / 3) / 4)
    assert out["bias/female/reference"] == pytest.approx((2 / 3 + 1) / 4)
    assert out["bias/child/reference"] == pytest.approx(1 / 4)
    assert out["bias/old/reference"] == pytest.approx((1 / 3) / 4)
    assert out["bias/male/ratio"] == pytest.approx(1.5)
    assert out["bias/female/ratio"] == pytest.approx(0.6)
    assert out["bias/old/ratio"] == 0
    # Three images have references agreeing on a gender: one wrong ("man" for a woman), one with none.
    assert out["bias/gender/num_images"] == 3
    assert out["bias/gender/error_rate"] == pytest.approx(1 / 3)
    assert out["bias/gender/neutral_rate"] == pytest.approx(1 / 3)


def test_bias_ratio_is_undefined_when_references_never_use_the_words():
    out = bias_report(["a man with a dog"], [["a dog on the grass", "a brown dog"]])
    assert out["bias/male/generated"] == 1 and out["bias/male/reference"] == 0
    assert math.isnan(out["bias/male/ratio"])
    assert out["bias/gender/num_images"] == 0 and math.isnan(out["bias/gender/error_rate"])
