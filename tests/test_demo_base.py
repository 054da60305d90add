"""The demo base's cache keys, and `DemoBaseSpec.num_scenes` reaching the SFT data."""

import json

from mmft.demo import DemoBaseSpec, build_demo_base


def test_cache_keys_of_existing_bases_are_unchanged_and_num_scenes_makes_a_new_one():
    # Keys of bases built before `num_scenes` existed: users' caches stay valid.
    assert DemoBaseSpec().cache_key() == "7e01ce8de0d5"
    assert DemoBaseSpec(steps=1200).cache_key() == "34eb56081899"
    assert DemoBaseSpec(num_scenes=2000).cache_key() == DemoBaseSpec().cache_key()
    assert DemoBaseSpec(num_scenes=20000).cache_key() != DemoBaseSpec().cache_key()


def test_num_scenes_sets_the_scenes_the_sft_draws_from(tmp_path, monkeypatch):
    import mmft.data.synthetic as synthetic

    seen = []
    load = synthetic.load_synthetic_captions

    def recording_load(split="train", num_samples=None, image_size=64):
        ds = load(split, num_samples=num_samples, image_size=image_size)
        seen.append((split, len(ds), max(ds["scene_id"])))
        return ds

    monkeypatch.setattr(synthetic, "load_synthetic_captions", recording_load)
    spec = DemoBaseSpec(steps=2, batch_size=2, text_hidden=32, text_layers=1, num_scenes=2050)
    out = build_demo_base(spec, output_dir=tmp_path / "base")
    assert seen == [("train", 2050, 2049)]  # 50 scenes beyond the split's 2,000
    assert json.loads((out / "mmft_demo_base.json").read_text())["spec"]["num_scenes"] == 2050
