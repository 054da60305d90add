"""Shared fixtures: the Flickr8k captions (read from ../shared, never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[2]
FLICKR8K = REPO_ROOT.parent / "shared" / "data" / "flickr8k" / "captions.txt"


def read_flickr8k(path: Path = FLICKR8K) -> dict[str, list[str]]:
    """image id -> its captions in order #0..#4. The published file separates id and caption by a
    tab, except on its first line, which uses a space."""
    captions: dict[str, dict[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, caption = line.split("\t", 1) if "\t" in line else line.split(" ", 1)
            image, number = key.rsplit("#", 1)
            captions.setdefault(image, {})[int(number)] = caption
    return {image: [caps[i] for i in sorted(caps)] for image, caps in captions.items()}


def readme_normalise(caption: str) -> str:
    """The README's preprocessing for its reference numbers: lower-case and remove " ."."""
    return caption.lower().replace(" .", "")


@pytest.fixture(scope="session")
def flickr8k() -> dict[str, list[str]]:
    if not FLICKR8K.is_file():
        pytest.skip(f"Flickr8k captions not found at {FLICKR8K} (the shared data folder is not mounted)")
    return read_flickr8k()


@pytest.fixture(scope="session")
def leave_one_out(flickr8k):
    """Human leave-one-out set: candidate = caption #0, references = #1..#4, README-normalised.

    Returns (image ids, candidates (8092,), references (8092, 4)).
    """
    images = list(flickr8k)
    cands = [readme_normalise(flickr8k[i][0]) for i in images]
    refs = [[readme_normalise(c) for c in flickr8k[i][1:5]] for i in images]
    return images, cands, refs


@pytest.fixture(scope="session")
def coco_inputs(leave_one_out):
    """The same set in pycocoevalcap's dict form: (gts, res)."""
    images, cands, refs = leave_one_out
    return {i: r for i, r in zip(images, refs)}, {i: [c] for i, c in zip(images, cands)}
