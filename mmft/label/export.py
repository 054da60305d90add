"""Export labels as a `datasets` preference dataset for TRL's `DPOTrainer`.

Each A or B label becomes one row:

    image     datasets.Image, the pair's image bytes (the export does not point at files)
    prompt    [{"role": "user", "content": <prompt>}]
    chosen    [{"role": "assistant", "content": <preferred caption>}]
    rejected  [{"role": "assistant", "content": <other caption>}]
    labeler, time (ISO 8601, UTC), pair_id

This is TRL 1.16's conversational vision preference format: its DPOTrainer treats a
dataset with an `image` column as vision data and its `DataCollatorForVisionPreference`
moves `image` into `images`, inserts the image placeholder before the first user turn
(`prepare_multimodal_messages`) and applies the processor's chat template. Plain-string
prompts would not work there: they carry no image token for the processor to expand.
The extra columns are dropped by the trainer (`remove_unused_columns`).

"tie" and "both_bad" labels say nothing about which caption is better, so they are not
rows; `ExportSummary` counts them, and counts labels left out for any other reason.
Pairs labelled by several people give one row per labeler.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mmft.label import storage
from mmft.label.pairs import load_pairs


class ExportError(ValueError):
    """The export cannot be written; the message says why and what to do."""


@dataclass
class ExportSummary:
    """What an export wrote and what it left out, and why.

    Attributes:
        output_dir: where the dataset was saved.
        rows: preference rows written (A and B labels).
        choices: label count per choice, over the labels considered.
        labelers: rows written per labeler.
        not_in_pairs_file: labels whose pair is not in the `--pairs` file (left out).
        contested_pairs: pairs where labelers disagree on A versus B (both kept).
    """

    output_dir: Path
    rows: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    labelers: dict[str, int] = field(default_factory=dict)
    not_in_pairs_file: int = 0
    contested_pairs: int = 0

    def format(self) -> str:
        """A few lines for the terminal."""
        counts = ", ".join(f"{choice}={self.choices.get(choice, 0)}" for choice in storage.CHOICES)
        lines = [
            f"wrote {self.rows} preference pairs to {self.output_dir}",
            f"labels by choice: {counts}",
            f"not exported: {self.choices.get('tie', 0)} tie, {self.choices.get('both_bad', 0)} both_bad "
            "(no preference between the captions)",
        ]
        if self.rows == 0:
            lines.append("warning: the dataset is empty (no A or B labels yet)")
        if self.not_in_pairs_file:
            lines.append(
                f"not exported: {self.not_in_pairs_file} label(s) on pairs missing from the --pairs file"
            )
        if self.labelers:
            lines.append(
                "rows per labeler: " + ", ".join(f"{name}={n}" for name, n in sorted(self.labelers.items()))
            )
        if self.contested_pairs:
            lines.append(f"{self.contested_pairs} pair(s) have labelers disagreeing (A vs B); both rows kept")
        return "\n".join(lines)


def _features():
    """The dataset schema (see the module docstring)."""
    from datasets import Features, Image, List, Value

    message = {"role": Value("string"), "content": Value("string")}
    return Features(
        {
            "image": Image(),
            "prompt": List(message),
            "chosen": List(message),
            "rejected": List(message),
            "labeler": Value("string"),
            "time": Value("string"),
            "pair_id": Value("string"),
        }
    )


def _read_rows(db_path: str | Path) -> list[storage.LabelRow]:
    with closing(storage.connect(db_path)) as conn:
        try:
            return storage.read_labels(conn)
        except sqlite3.DatabaseError as err:
            raise ExportError(f"{db_path}: cannot read labels ({err})") from err


def export_preferences(
    db_path: str | Path, output_dir: str | Path, pairs_path: str | Path | None = None
) -> ExportSummary:
    """Write the preference dataset of `db_path` to `output_dir` with `save_to_disk`.

    Args:
        db_path: the labelling database.
        output_dir: a new or empty folder; load the result with `datasets.load_from_disk`.
        pairs_path: optional pairs file. Only its pairs are exported, and images are read
            from its paths (useful when the images moved since labelling). Its prompts and
            captions must match what was labelled.

    Raises:
        ExportError: output_dir is not empty, an image is missing, or the pairs file
            disagrees with the labelled text.
        LabelStoreError: the database is missing or not a labelling database.
        PairsFileError: a bad pairs file.
    """
    from datasets import Dataset

    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise ExportError(f"{output_dir}: output folder exists and is not empty; choose a new folder")
    labels = _read_rows(db_path)
    summary = ExportSummary(output_dir=output_dir)
    if pairs_path is not None:
        by_id = {pair.pair_id: pair for pair in load_pairs(pairs_path)}
        kept = []
        for label in labels:
            pair = by_id.get(label.pair_id)
            if pair is None:
                summary.not_in_pairs_file += 1
                continue
            if (pair.prompt, pair.caption_a, pair.caption_b) != (
                label.prompt,
                label.caption_a,
                label.caption_b,
            ):
                raise ExportError(
                    f"{pairs_path}:{pair.line}: pair {pair.pair_id!r} has a different prompt or captions than "
                    f"the text that was labelled in {db_path}; export without --pairs or fix the file"
                )
            kept.append(storage.LabelRow(**{**vars(label), "image": pair.image}))
        labels = kept

    columns: dict[str, list] = defaultdict(list)
    image_bytes: dict[Path, bytes] = {}  # several labelers share a pair's image
    preferences: dict[str, set[str]] = defaultdict(set)
    choices: Counter[str] = Counter()
    for label in labels:
        choices[label.choice] += 1
        if label.choice not in ("A", "B"):
            continue
        if label.image not in image_bytes:
            try:
                image_bytes[label.image] = label.image.read_bytes()
            except OSError as err:
                raise ExportError(
                    f"image of pair {label.pair_id!r} cannot be read: {label.image} ({err.strerror}); "
                    "pass --pairs with a pairs file that points at the images"
                ) from None
        chosen, rejected = (
            (label.caption_a, label.caption_b) if label.choice == "A" else (label.caption_b, label.caption_a)
        )
        preferences[label.pair_id].add(label.choice)
        columns["image"].append({"bytes": image_bytes[label.image], "path": label.image.name})
        columns["prompt"].append([{"role": "user", "content": label.prompt}])
        columns["chosen"].append([{"role": "assistant", "content": chosen}])
        columns["rejected"].append([{"role": "assistant", "content": rejected}])
        columns["labeler"].append(label.labeler)
        columns["time"].append(
            datetime.fromtimestamp(label.time, tz=timezone.utc).isoformat(timespec="milliseconds")
        )
        columns["pair_id"].append(label.pair_id)

    features = _features()
    dataset = Dataset.from_dict({name: columns[name] for name in features}, features=features)
    # datasets writes zero shards for an empty dataset, which load_from_disk then cannot read.
    dataset.save_to_disk(str(output_dir), num_shards=1 if len(dataset) == 0 else None)
    summary.rows = len(dataset)
    summary.choices = {choice: choices.get(choice, 0) for choice in storage.CHOICES}
    summary.labelers = dict(Counter(columns["labeler"]))
    summary.contested_pairs = sum(1 for seen in preferences.values() if len(seen) > 1)
    return summary
