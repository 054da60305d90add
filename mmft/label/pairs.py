"""Read and validate a PAIRS.jsonl file.

One JSON object per line::

    {"pair_id": "p1", "image": "images/p1.png", "prompt": "Describe the image.",
     "caption_a": "A red square.", "caption_b": "A blue circle.", "split": "val"}

`pair_id`, `image`, `prompt`, `caption_a` and `caption_b` are required strings; any other
fields are kept as metadata. A relative `image` path is resolved against the folder
holding the jsonl file, so a pairs file and its images can move together.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED_FIELDS = ("pair_id", "image", "prompt", "caption_a", "caption_b")

# Enough problems to fix several at once without burying the first under thousands.
_MAX_REPORTED_ERRORS = 20


class PairsFileError(ValueError):
    """A pairs file that cannot be used; the message names the file and the line(s)."""


@dataclass(frozen=True)
class Pair:
    """One comparison: an image, the prompt that produced both captions, and the captions.

    Attributes:
        pair_id: unique id within the pairs file.
        image: absolute path of the image file.
        prompt: the prompt the two captions answer.
        caption_a: the caption shown on the left.
        caption_b: the caption shown on the right.
        metadata: every other field of the jsonl line, unchanged.
        line: 1-based line number in the pairs file, for error messages.
    """

    pair_id: str
    image: Path
    prompt: str
    caption_a: str
    caption_b: str
    metadata: dict[str, Any] = field(default_factory=dict)
    line: int = 0


def load_pairs(path: str | Path) -> list[Pair]:
    """Read `path`, check every line, and return the pairs in file order.

    Raises:
        PairsFileError: listing each bad line as `FILE:LINE: problem` (invalid JSON, not an
            object, missing or non-string field, duplicate `pair_id`, image file not found),
            or when the file is missing or holds no pairs.
    """
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: pairs file not found")
    pairs: list[Pair] = []
    errors: list[str] = []
    first_line_of: dict[str, int] = {}
    images: dict[str, tuple[Path, bool]] = {}  # a pair's image as written -> (resolved, is a file)
    with path.open(encoding="utf-8") as lines:
        for line_no, text in enumerate(lines, start=1):
            if not text.strip():
                continue  # blank lines (a trailing newline, spacing) hold no pair
            try:
                pairs.append(_parse_line(text, path, line_no, first_line_of, images))
            except PairsFileError as err:
                errors.append(str(err))
    if errors:
        shown = errors[:_MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n... and {more} more" if more else ""
        raise PairsFileError(f"{len(errors)} problem(s) in {path}:\n" + "\n".join(shown) + tail)
    if not pairs:
        raise PairsFileError(f"{path}: no pairs (the file is empty)")
    return pairs


def _parse_line(
    text: str, path: Path, line_no: int, first_line_of: dict[str, int], images: dict[str, tuple[Path, bool]]
) -> Pair:
    """Turn one jsonl line into a `Pair`, recording its pair_id in `first_line_of` and its image
    in `images` (many pairs share an image: each is resolved and checked once)."""
    where = f"{path}:{line_no}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise PairsFileError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise PairsFileError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise PairsFileError(
            f"{where}: missing field(s) {', '.join(missing)} (every line needs {', '.join(REQUIRED_FIELDS)})"
        )
    not_strings = [name for name in REQUIRED_FIELDS if not isinstance(record[name], str)]
    if not_strings:
        raise PairsFileError(f"{where}: field(s) {', '.join(not_strings)} must be strings")
    pair_id = record["pair_id"]
    if not pair_id.strip():
        raise PairsFileError(f"{where}: pair_id is empty")
    if pair_id in first_line_of:
        raise PairsFileError(
            f"{where}: duplicate pair_id {pair_id!r} (first used on line {first_line_of[pair_id]})"
        )
    first_line_of[pair_id] = line_no
    if record["image"] not in images:
        image = Path(record["image"])
        image = (image if image.is_absolute() else path.parent / image).resolve()
        images[record["image"]] = (image, image.is_file())
    image, found = images[record["image"]]
    if not found:
        raise PairsFileError(
            f"{where}: image file not found: {image} (relative paths are resolved against {path.parent.resolve()})"
        )
    metadata = {name: value for name, value in record.items() if name not in REQUIRED_FIELDS}
    return Pair(
        pair_id=pair_id,
        image=image,
        prompt=record["prompt"],
        caption_a=record["caption_a"],
        caption_b=record["caption_b"],
        metadata=metadata,
        line=line_no,
    )
