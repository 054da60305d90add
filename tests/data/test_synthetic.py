"""The embedded task: deterministic by seed, varied captions, consistent attributes."""

import numpy as np

from mmft.data.synthetic import (
    SPLIT_SIZES,
    load_synthetic_captions,
    load_synthetic_vqa,
    make_scene,
    render_scene,
)
from reward_models.scene_vocab import COLORS, POSITIONS, SHAPES, SIZES


def test_scenes_and_images_are_deterministic():
    a, b = make_scene(123), make_scene(123)
    assert a == b
    assert np.array_equal(np.asarray(render_scene(a)), np.asarray(render_scene(b)))
    assert make_scene(124) != a


def test_captions_are_varied_and_agree_on_content():
    ds = load_synthetic_captions("validation", 50)
    distinct_templates = set()
    for row in ds:
        refs = row["references"]
        assert len(refs) == 5 and len(set(refs)) == 5  # five different phrasings
        for obj in row["objects"]:
            # every reference names every object's colour and shape (by some synonym)
            for ref in refs:
                words = ref.split()
                assert any(w in words for w in COLORS[obj["color"]])
                assert any(w in words for w in SHAPES[obj["shape"]])
        distinct_templates.update(" ".join(r.split()[:2]) for r in refs)
    assert len(distinct_templates) > 10
    lengths = [len(r.split()) for row in ds for r in row["references"]]
    assert np.std(lengths) > 2.0


def test_splits_are_fixed_disjoint_and_sized():
    train_ids = set(load_synthetic_captions("train", 300)["scene_id"])
    test = load_synthetic_captions("test")
    assert len(test) == SPLIT_SIZES["test"]
    assert train_ids.isdisjoint(test["scene_id"])
    assert load_synthetic_captions("test", 5)["references"] == test.select(range(5))["references"]


def test_attribute_columns_and_relations():
    ds = load_synthetic_captions("train", 200)
    counts = {1: 0, 2: 0, 3: 0}
    for row in ds:
        n = row["num_objects"]
        counts[n] += 1
        assert len(row["objects"]) == n
        assert (row["relation"] != "") == (n == 2)
        for obj in row["objects"]:
            assert obj["size"] in SIZES and obj["position"] in POSITIONS
        assert row["image"].size == (64, 64) and row["image"].mode == "RGB"
    assert all(v > 20 for v in counts.values())
    assert ds[0]["prompt"][0]["content"][0] == {"type": "image", "text": None}


def test_vqa_items_cover_every_question_type():
    vqa = load_synthetic_vqa("test", 40)
    assert set(vqa["question_type"]) == {"color", "shape", "count", "position"}
    for row in vqa:
        q = row["prompt"][0]["content"][1]["text"]
        if row["question_type"] == "color":
            assert row["answers"][0] in COLORS
            assert any(o["color"] == row["answers"][0] and o["shape"] in q for o in row["objects"])
        if row["question_type"] == "count":
            assert row["answers"][1] == str(row["num_objects"])
