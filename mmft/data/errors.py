"""Errors and problem reports for data a user brings.

Every loader in `mmft.data.loaders` collects the problems it finds (missing or
unreadable images, empty captions, malformed lines, dangling ids) in a `DataReport`
instead of stopping at the first one, so a single run tells the user everything that
is wrong with a data set. Under `on_error="raise"` (the default) a non-empty report
becomes a `DataError`; under `on_error="skip"` the bad samples are left out and the
report is logged and returned, so nothing is ever dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What the user can do about each kind of problem; printed under the summary.
_HINTS = {
    "missing_image": "check the images directory given in the data spec (and that the files were extracted)",
    "unreadable_image": "re-download or re-encode the listed files",
    "empty_caption": "remove or fill the empty captions in the source file",
    "no_captions": "every image needs at least one non-empty caption",
    "malformed_line": "each line must be `IMAGE.jpg#N<TAB>caption`",
    "unknown_image_id": "the annotation points at an image id that the file's `images` list does not hold",
    "no_annotation": "the question has no entry in the annotations file (wrong pair of files?)",
    "no_answers": "every question needs at least one non-empty answer",
    "not_in_split_list": "an image of the split list file has no captions in the token file",
}
_MAX_LOCATIONS = 5


class DataError(ValueError):
    """A data set that cannot be loaded as it is: the message says where and what to do."""


@dataclass
class DataReport:
    """Problems found while loading one data source.

    `problems` maps a kind (e.g. "missing_image") to human-readable locations
    ("captions.txt line 12: ..."); `repaired` holds lines accepted under a lenient
    option, which are kept in the data but still reported.
    """

    source: str
    num_samples: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)
    repaired: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, location: str) -> None:
        self.problems.setdefault(kind, []).append(location)

    def repair(self, kind: str, location: str) -> None:
        self.repaired.setdefault(kind, []).append(location)

    @property
    def num_problems(self) -> int:
        return sum(len(v) for v in self.problems.values())

    def counts(self) -> dict[str, int]:
        """Problems per kind, e.g. {"missing_image": 3}."""
        return {kind: len(locs) for kind, locs in self.problems.items()}

    def summary(self) -> str:
        """A few lines: samples kept, the counts per kind, the first locations of each, what to do."""
        return "\n".join([f"{self.source}: {self.num_samples} samples kept"] + self._details())

    def _details(self) -> list[str]:
        lines = []
        for title, table in (("problem", self.problems), ("repaired", self.repaired)):
            for kind, locations in table.items():
                lines.append(f"  {len(locations)} x {kind} ({title})"
                             + (f": {_HINTS[kind]}" if title == "problem" and kind in _HINTS else ""))
                lines += [f"    - {loc}" for loc in locations[:_MAX_LOCATIONS]]
                if len(locations) > _MAX_LOCATIONS:
                    lines.append(f"    - ... and {len(locations) - _MAX_LOCATIONS} more")
        return lines

    def raise_if_problems(self) -> None:
        """The `on_error="raise"` policy: any problem stops the load with the full summary."""
        if self.problems:
            raise DataError(
                f"Found {self.num_problems} problem(s) in {self.source}:\n" + "\n".join(self._details()) + "\n"
                "Fix the data, or pass on_error='skip' to leave these samples out (a report is logged)."
            )
