"""Shaping rewards: length, repetition, vocabulary richness, and the embedded task's attributes.

All follow TRL's reward contract (see `reward_models`); words are lower-cased runs of letters
and digits (``[a-z0-9]+``), so punctuation and hyphens separate words and "blueish" is not "blue".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reward_models import scene_vocab
from reward_models._text import completions_to_text

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of ``text`` (``[a-z0-9]+`` runs)."""
    return _WORD.findall(text.lower())


class LengthReward:
    """Reward for hitting a target length, or a penalty for exceeding a maximum.

    With ``target``: r = -min(1, max(0, |L - target| - tolerance) / target), in [-1, 0], 0 within
    ``tolerance`` of the target. With only ``max_length``: r = -min(1, max(0, L - max_length) / max_length).
    L counts words, or generated tokens (``unit="tokens"``, from ``completion_ids``).

    Args:
        target: desired length.
        max_length: length above which the penalty starts (used when ``target`` is None).
        tolerance: slack around ``target`` with no penalty.
        unit: "words" or "tokens".
        name: the reward's ``__name__``.
    """

    def __init__(
        self,
        target: int | None = None,
        max_length: int | None = None,
        tolerance: float = 0.0,
        unit: str = "words",
        name: str = "length",
    ):
        if (target is None) == (max_length is None):
            raise ValueError(
                "LengthReward: give exactly one of `target` (length target) or `max_length` (penalty)"
            )
        if (target is not None and target <= 0) or (max_length is not None and max_length <= 0):
            raise ValueError("LengthReward: `target` / `max_length` must be positive")
        if unit not in ("words", "tokens"):
            raise ValueError(f"LengthReward: unit must be 'words' or 'tokens', got {unit!r}")
        self.target, self.max_length, self.tolerance, self.unit = target, max_length, float(tolerance), unit
        self.__name__ = name

    def __call__(
        self, prompts=None, completions=None, completion_ids=None, **kwargs: Any
    ) -> list[float | None]:
        if self.unit == "tokens":
            if completion_ids is None:
                raise KeyError(f"reward {self.__name__!r} with unit='tokens' needs `completion_ids`")
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(words(t)) for t in completions_to_text(completions)]
        out: list[float | None] = []
        for length in lengths:
            if self.target is not None:
                excess = max(0.0, abs(length - self.target) - self.tolerance)
                out.append(-min(1.0, excess / self.target))
            else:
                out.append(-min(1.0, max(0, length - self.max_length) / self.max_length))
        return out


class RepetitionPenalty:
    """Penalty for repeated word n-grams: r = -(1 - distinct n-grams / n-grams), in [-1, 0].

    A completion shorter than ``n`` words has no n-gram to repeat and gets 0.
    """

    def __init__(self, n: int = 3, name: str = "repetition"):
        if n < 1:
            raise ValueError(f"RepetitionPenalty: n must be >= 1, got {n}")
        self.n = int(n)
        self.__name__ = name

    def __call__(self, prompts=None, completions=None, **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for text in completions_to_text(completions):
            w = words(text)
            grams = [tuple(w[i : i + self.n]) for i in range(len(w) - self.n + 1)]
            out.append(-(1.0 - len(set(grams)) / len(grams)) if grams else 0.0)
        return out


class VocabularyRichness:
    """Type-token ratio: distinct words / words, in [0, 1]; 0 for an empty completion."""

    def __init__(self, name: str = "vocab_richness"):
        self.__name__ = name

    def __call__(self, prompts=None, completions=None, **kwargs: Any) -> list[float | None]:
        out: list[float | None] = []
        for text in completions_to_text(completions):
            w = words(text)
            out.append(len(set(w)) / len(w) if w else 0.0)
        return out


def _phrase_table() -> dict[tuple[str, ...], list[tuple[str, Any]]]:
    """Every synonym of scene_vocab as a word tuple -> the (attribute, canonical value)s it names."""
    table: dict[tuple[str, ...], list[tuple[str, Any]]] = {}
    groups: dict[str, Mapping[Any, tuple[str, ...]]] = {**scene_vocab.ATTRIBUTES, "count": scene_vocab.COUNTS}
    groups["relation"] = scene_vocab.RELATIONS
    for attribute, values in groups.items():
        for value, synonyms in values.items():
            for synonym in synonyms:
                table.setdefault(tuple(synonym.split()), []).append((attribute, value))
    return table


class AttributeReward:
    """How well a caption names the attributes of the embedded task's scene, in [-1, 1].

    Reads the columns ``objects`` (list of {shape, color, size, position}, values being the
    canonical keys of `reward_models.scene_vocab`), ``num_objects`` and ``relation`` ("" or a key
    of ``scene_vocab.RELATIONS``: object 0 relative to object 1).

    The true attributes are every object's shape, color, size and position, the object count,
    and the relation when there is one (a caption saying "above" for a "below" scene is wrong, so
    the relation is scored like the other attributes). A claim is a distinct attribute value the
    caption names; a wrong claim names a value that is not in the scene (e.g. "green" when no
    object is green, "two" for a one-object scene). Two scorings (``scoring``):
      - "recall_minus_error_share" (default): the fraction of the true attributes named minus
        the fraction of the claims that are wrong. A caption making few claims keeps its error
        share low: "one" scores 0.2 on a one-object scene, above "a big red circle at the top"
        with the size and the position wrong (0.6 - 0.5).
      - "net_correct": (true attributes named - wrong claims) / true attributes, at least -1:
        negative marking. It ranks captions by how many attributes they name correctly, every
        wrong claim cancelling a right one, so guessing among three or more values loses in
        expectation and a short caption gains nothing from making few claims ("one": 0.2, the
        caption above: 0.2, "a red circle": 0.6).
    Matching is bag-of-words: a value named once covers every object that has it; attributes
    are not bound to objects.

    Phrases are matched longest first on word boundaries (plurals "circles", "boxes" count), so "left of" is the relation and not
    the position "left", and "a" never matches inside a word. Count one is weak evidence because
    "a"/"an" are articles: count 1 is named when "one", "a" or "an" appears and no other count
    word does; "a"/"an" never count as a wrong count (a two-object caption says "a red circle").
    """

    SCORINGS = ("recall_minus_error_share", "net_correct")

    def __init__(self, name: str = "attribute", scoring: str = "recall_minus_error_share"):
        if scoring not in self.SCORINGS:
            raise ValueError(f"reward {name!r}: scoring={scoring!r} is not one of {self.SCORINGS}")
        self.__name__ = name
        self.scoring = scoring
        self._phrases = _phrase_table()
        self._max_len = max(len(p) for p in self._phrases)

    def named(self, text: str) -> set[tuple[str, Any]]:
        """The (attribute, canonical value) pairs a caption names, e.g. {("color", "red"), ("count", 2)}."""
        w = words(text)
        found: set[tuple[str, Any]] = set()
        i = 0
        while i < len(w):
            for size in range(min(self._max_len, len(w) - i), 0, -1):
                hits = self._phrases.get(tuple(w[i : i + size]))
                if hits:
                    found.update(hits)
                    i += size
                    break
            else:
                # plurals of single words: "circles", "boxes"
                for stem in (w[i][:-1], w[i][:-2]) if w[i].endswith("s") else ():
                    hits = self._phrases.get((stem,))
                    if hits and stem not in ("a", "an"):
                        found.update(h for h in hits if h[0] != "count")
                        break
                i += 1
        return found

    def _truth(self, objects: Any, num_objects: Any, relation: Any, index: int) -> set[tuple[str, Any]]:
        if not isinstance(objects, Sequence) or isinstance(objects, str):
            raise TypeError(
                f"reward {self.__name__!r}: `objects` of sample {index} must be a list of dicts, got {objects!r:.100}"
            )
        truth: set[tuple[str, Any]] = set()
        for j, obj in enumerate(objects):
            for attribute, table in scene_vocab.ATTRIBUTES.items():
                value = obj.get(attribute) if isinstance(obj, Mapping) else None
                if value not in table:
                    raise ValueError(
                        f"reward {self.__name__!r}: sample {index}, object {j}: {attribute}={value!r} is not one of "
                        f"{sorted(table)} (scene_vocab.{attribute.upper()}S keys)"
                    )
                truth.add((attribute, value))
        count = int(num_objects)
        if count not in scene_vocab.COUNTS:
            raise ValueError(
                f"reward {self.__name__!r}: sample {index}: num_objects={count} not in {sorted(scene_vocab.COUNTS)}"
            )
        truth.add(("count", count))
        if relation:
            if relation not in scene_vocab.RELATIONS:
                raise ValueError(
                    f"reward {self.__name__!r}: sample {index}: relation={relation!r} not in {sorted(scene_vocab.RELATIONS)}"
                )
            truth.add(("relation", relation))
        return truth

    def score_one(
        self, text: str, objects: Any, num_objects: Any, relation: Any = "", index: int = 0
    ) -> float:
        """Score of one caption against one scene (see the class docstring)."""
        truth = self._truth(objects, num_objects, relation, index)
        named = self.named(text)
        w = set(words(text))
        counts_named = {v for a, v in named if a == "count"}
        explicit_counts = {v for v in counts_named if v != 1} | ({1} if "one" in w else set())
        if 1 in counts_named and explicit_counts - {1}:
            counts_named.discard(1)  # "a"/"an" are articles when another count is named
        named = {(a, v) for a, v in named if a != "count"} | {("count", v) for v in counts_named}
        correct = len(truth & named)
        # articles are not claims about the count: only explicit count words can be wrong
        claims = {(a, v) for a, v in named if a != "count"} | {("count", v) for v in explicit_counts}
        wrong = len(claims - truth)
        if self.scoring == "net_correct":
            return max(-1.0, (correct - wrong) / len(truth))
        recall = correct / len(truth)
        error = wrong / len(claims) if claims else 0.0
        return recall - error

    def __call__(
        self,
        prompts=None,
        completions=None,
        objects: Sequence[Any] | None = None,
        num_objects: Sequence[Any] | None = None,
        relation: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if objects is None or num_objects is None:
            raise KeyError(
                f"reward {self.__name__!r} needs the embedded task's columns `objects` and `num_objects` "
                f"(and `relation`); the batch has {sorted(k for k in kwargs if not k.startswith(('log_', 'trainer_')))}"
            )
        texts = completions_to_text(completions)
        if len(objects) != len(texts) or len(num_objects) != len(texts):
            raise ValueError(
                f"reward {self.__name__!r}: column lengths do not match the {len(texts)} completions"
            )
        relation = relation if relation is not None else [""] * len(texts)
        return [
            self.score_one(t, o, n, r, i)
            for i, (t, o, n, r) in enumerate(zip(texts, objects, num_objects, relation))
        ]
