"""Preference data for reward models and DPO: loading, a leak-free held-out split, and
batches that keep the pairs of one image together."""

from __future__ import annotations

import os
from pathlib import Path

import torch

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


def _row_image_keys(dataset) -> list[tuple] | None:
    """Per row, one identity per image: the file name, or a hash of the bytes when there is
    none (images are not decoded); None for an image with neither. None without an image
    column."""
    import hashlib

    from datasets import Image, List, Sequence

    column = "images" if "images" in dataset.column_names else "image" if "image" in dataset.column_names else None
    if column is None:
        return None
    feature = dataset.features[column]
    if isinstance(feature, Image):
        raw = dataset.cast_column(column, Image(decode=False))[column]
        raw = [[x] for x in raw]
    elif isinstance(feature, (List, Sequence)) and isinstance(feature.feature, Image):
        raw = dataset.cast_column(column, List(Image(decode=False)))[column]
    else:
        return None

    def key(image) -> str | None:
        if not image:
            return None
        if image.get("path"):
            return image["path"]
        return hashlib.sha1(image["bytes"]).hexdigest() if image.get("bytes") else None

    return [tuple(key(x) for x in (images or [])) for images in raw]


def _identified(row_keys: tuple) -> bool:
    """A row has images, and every one of them an identity."""
    return row_keys != () and None not in row_keys


def _image_keys(dataset) -> list | None:
    """One identity per row for its image(s) (`_row_image_keys`), or None unless every row
    has images that all have one."""
    keys = _row_image_keys(dataset)
    return None if keys is None or not all(map(_identified, keys)) else keys


def unidentified_image_rows(dataset) -> list[int]:
    """The rows whose images `pair_keys` cannot identify unread (no image, or one with neither
    a path nor bytes): every row when the dataset has no image column."""
    keys = _row_image_keys(dataset)
    if keys is None:
        return list(range(len(dataset)))
    return [i for i, k in enumerate(keys) if not _identified(k)]


def pair_keys(dataset) -> list[tuple] | None:
    """Per row (image identity, prompt as JSON): rows with equal keys pose the same question,
    so a caption that several of them compare needs scoring only once. None when the images
    cannot be identified without decoding them (then no row shares anything)."""
    import json

    images = _image_keys(dataset)
    if images is None:
        return None
    prompts = [json.dumps(p, sort_keys=True, default=str) for p in dataset["prompt"]]
    return list(zip(images, prompts))


class EpochSampler(torch.utils.data.Sampler):
    """Every row once per epoch, in an order that is a function of (seed, epoch) alone, so a
    resumed run draws the batches the interrupted one would have: `set_epoch(e)` picks the
    order, `skip_rows(n)` starts the next pass n rows into it (once)."""

    def __init__(self, num_rows: int, seed: int = 0):
        self.num_rows = num_rows
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_rows(self, n: int) -> None:
        self.skip = n

    def __len__(self) -> int:
        return self.num_rows

    def order(self, g: torch.Generator) -> list[int]:
        return torch.randperm(self.num_rows, generator=g).tolist()

    def __iter__(self):
        skip, self.skip = self.skip, 0
        yield from self.order(torch.Generator().manual_seed(self.seed + self.epoch))[skip:]


class GroupedSampler(EpochSampler):
    """Every row once per epoch, rows with equal `keys` next to each other: the groups in a
    seeded random order (a new one each `set_epoch`), the rows of a group shuffled too.
    Consecutive batches of this order then hold a few images with all their pairs (make_pairs
    writes up to C(k, 2) pairs of k captions per image), whose captions the reward-model
    collator scores once each instead of once per pair."""

    def __init__(self, keys: list, seed: int = 0):
        super().__init__(len(keys), seed)
        groups: dict = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        self.groups = list(groups.values())

    def order(self, g: torch.Generator) -> list[int]:
        out = []
        for k in torch.randperm(len(self.groups), generator=g).tolist():
            rows = self.groups[k]
            out.extend(rows[j] for j in torch.randperm(len(rows), generator=g).tolist())
        return out


def held_out_split(dataset, fraction: float, seed: int = 0):
    """(train, held_out): a seeded split of whole groups, so nothing of a held-out pair is
    trained on. A group is every row sharing a `pair_id` (two labelers' rows of one pair)
    or an image (several pairs of captions for one image, make_pairs --pairs_per_image):
    held-out accuracy then measures images the reward model has not seen. Without those
    columns, rows are split one by one."""
    if not 0 < fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {fraction}.")
    import random

    n = len(dataset)
    pair_ids = dataset["pair_id"] if "pair_id" in dataset.column_names else None
    images = _image_keys(dataset)
    # Union-find over rows: join rows that share a pair id or an image.
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (pair_ids, images):
        if keys is None:
            continue
        first: dict = {}
        for i, k in enumerate(keys):
            j = first.setdefault(k, i)
            if j != i:
                parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    groups = sorted(members.values())
    random.Random(seed).shuffle(groups)
    n_eval = max(1, round(fraction * len(groups)))
    if n_eval >= len(groups):
        raise DataError(f"{len(groups)} pair(s) are too few to hold out {fraction:.0%} and still train; label more.")
    eval_idx = sorted(i for g in groups[:n_eval] for i in g)
    held = set(eval_idx)
    train_idx = [i for i in range(n) if i not in held]
    return dataset.select(train_idx), dataset.select(eval_idx)
