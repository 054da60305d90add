"""held_out_split keeps every row of a pair and every pair of an image on one side."""

from conftest import preference_dataset

from mmft.reward_modeling.data import _image_keys, held_out_split


def _dataset_with_shared_images():
    """12 scenes; scene i's image appears in pairs f"s{i}-0" and f"s{i}-1" (two caption
    pairs of one image), and pair "s0-0" was labelled twice (two labelers)."""
    from datasets import concatenate_datasets

    base = preference_dataset(12)
    first = base.map(lambda row, i: {"pair_id": f"s{i}-0"}, with_indices=True)
    second = base.map(lambda row, i: {"pair_id": f"s{i}-1", "labeler": "other"}, with_indices=True)
    again = first.select([0]).map(lambda row: {"labeler": "second labeler"})
    return concatenate_datasets([first, second, again])


def test_split_groups_pairs_and_images():
    ds = _dataset_with_shared_images()
    keys = _image_keys(ds)
    assert len(set(keys)) == 12  # in-memory images: identified by their bytes
    for seed in range(5):
        train, held = held_out_split(ds, 0.25, seed)
        assert len(train) + len(held) == len(ds)
        scene = lambda pid: pid.split("-")[0]  # noqa: E731
        train_scenes, held_scenes = {scene(p) for p in train["pair_id"]}, {scene(p) for p in held["pair_id"]}
        assert not train_scenes & held_scenes and len(held_scenes) == 3
        assert not set(_image_keys(train)) & set(_image_keys(held))
        side = train if "s0" in train_scenes else held
        assert side["pair_id"].count("s0-0") == 2  # both labelers' rows together
    assert held_out_split(ds, 0.25, 0)[1]["pair_id"] == held_out_split(ds, 0.25, 0)[1]["pair_id"]  # seeded


def test_split_by_file_name_and_without_images(tmp_path):
    from datasets import Dataset, Image
    from PIL import Image as PILImage

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"img{i}.png"))
        PILImage.new("RGB", (4, 4), (i, 0, 0)).save(paths[-1])
    rows = {"image": [paths[i % 3] for i in range(9)], "pair_id": [f"p{i}" for i in range(9)],
            "prompt": ["x"] * 9, "chosen": ["a"] * 9, "rejected": ["b"] * 9}
    ds = Dataset.from_dict(rows).cast_column("image", Image())
    train, held = held_out_split(ds, 0.3, 0)
    assert len(held) == 3 and len(set(_image_keys(held))) == 1  # one image, all three of its pairs

    text_only = Dataset.from_dict({k: v for k, v in rows.items() if k != "image"})
    train, held = held_out_split(text_only, 0.3, 0)
    assert len(held) == 3 and not set(train["pair_id"]) & set(held["pair_id"])
