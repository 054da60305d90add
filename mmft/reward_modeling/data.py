"""Preference data for reward models and DPO: loading and a leak-free held-out split."""

from __future__ import annotations

import os
from pathlib import Path

from mmft.data.errors import DataError


def load_preferences(spec: str | os.PathLike, split: str = "train"):
    """A preference `datasets.Dataset` from `spec`:

    - a folder written by `mmft label export` (or any `save_to_disk` Dataset/DatasetDict,
      of which `split` is taken);
    - otherwise a Hugging Face dataset id or a data-files folder, via `load_dataset(spec, split=split)`.
    """
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    path = Path(spec)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()
                          or (path / "state.json").exists()):
        data = load_from_disk(str(path))
        if isinstance(data, DatasetDict):
            if split not in data:
                raise DataError(f"{spec}: no split {split!r} (splits: {list(data)}).")
            data = data[split]
        assert isinstance(data, Dataset)
        return data
    try:
        return load_dataset(str(spec), split=split)
    except Exception as err:  # datasets raises many types for a bad spec
        raise DataError(f"Could not load preference data {str(spec)!r} (split {split!r}): {err}. Give a folder "
                        "written by `mmft label export` or a Hugging Face dataset id.") from err


def held_out_split(dataset, fraction: float, seed: int = 0):
    """(train, held_out): a seeded split by `pair_id` when the column exists, so two
    labelers' rows of the same pair never straddle the split (that would leak the pair)."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}.")
    import random

    keys = dataset["pair_id"] if "pair_id" in dataset.column_names else list(range(len(dataset)))
    groups = sorted(set(keys), key=str)
    random.Random(seed).shuffle(groups)
    n_eval = max(1, round(fraction * len(groups)))
    if n_eval >= len(groups):
        raise DataError(f"{len(groups)} pair(s) are too few to hold out {fraction:.0%} and still train; label more.")
    held = set(groups[:n_eval])
    train_idx = [i for i, k in enumerate(keys) if k not in held]
    eval_idx = [i for i, k in enumerate(keys) if k in held]
    return dataset.select(train_idx), dataset.select(eval_idx)
