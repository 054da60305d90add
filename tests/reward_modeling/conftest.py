"""Preference datasets in mmft.label's export format, built from the synthetic scenes."""

from __future__ import annotations

import pytest
import torch


def preference_dataset(n: int, offset: int = 0, margin: bool = False):
    """`n` pairs with exactly the columns and features of `mmft label export`: the chosen
    caption is a reference of the scene; the rejected one is the same reference with a
    trailing ", and some noise noise" that no reference has (a signal a few steps learn)."""
    from datasets import Dataset

    from mmft.data.synthetic import CAPTION_PROMPT, load_synthetic_captions
    from mmft.label.export import _features

    scenes = load_synthetic_captions("train", n + offset).select(range(offset, offset + n))
    rows = {k: [] for k in ("image", "prompt", "chosen", "rejected", "labeler", "time", "pair_id")}
    for i, row in enumerate(scenes):
        rows["image"].append(row["image"])
        rows["prompt"].append([{"role": "user", "content": CAPTION_PROMPT}])
        rows["chosen"].append([{"role": "assistant", "content": row["references"][0]}])
        rows["rejected"].append([{"role": "assistant", "content": row["references"][0] + " , and some noise noise"}])
        rows["labeler"].append("oracle")
        rows["time"].append("2026-11-26T12:00:00.000+00:00")
        rows["pair_id"].append(f"p{offset + i}")
    ds = Dataset.from_dict(rows, features=_features())
    if margin:
        ds = ds.add_column("margin", [0.5] * n)
    return ds


@pytest.fixture(scope="session")
def prefs():
    """Factory: prefs(n, offset=0, margin=False) -> preference Dataset."""
    return preference_dataset


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores shared with other jobs: one thread per test process keeps runs predictable.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
