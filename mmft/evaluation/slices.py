"""Per-slice evaluation: attribute accuracy on the embedded task, word-bias on real data.

Attribute accuracy (embedded task). A caption is read against its scene's objects with
the task's own vocabulary (`reward_models.scene_vocab`): each shape word is a mention of
the scene object with that shape (shapes are distinct within a scene); the colour and
size words right before it, and the size and position words after it up to the next
mention, belong to that mention. A spatial relation between two mentions ("a circle
left of a square") states both positions, as the task's references use it. Per caption
and attribute, an object counts as correct when its shape is mentioned and the values
named for it are exactly its true one (named, and not contradicted by another value);
the caption's accuracy is the fraction of its objects that are correct. Count is right
when the caption's number word (or, without one, its number of distinct shapes) equals
the number of objects. Shape mentions absent from the scene are counted as
hallucinations.

Caption bias (real data). The rate of captions using gendered, age and child words, in
the generated captions against the references (Hendricks et al. 2018, "Women also
snowboard"): a model that says "man" far more often than the annotators do, or says
"man" where the annotators say "woman", shows it. Word lists are `BIAS_WORDS`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mmft.data.synthetic import (
    _REL_POSITIONS as RELATION_POSITIONS,  # relation -> (pos of obj 0, pos of obj 1)
)
from reward_models.scene_vocab import COLORS, POSITIONS, SHAPES, SIZES

ATTRIBUTES = ("shape", "color", "size", "position", "count")
NUMBER_WORDS = {"one": 1, "single": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}

_WORD = re.compile(r"[a-z]+")


def _invert(table: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {w: value for value, words in table.items() for w in words}


_SHAPE_OF = _invert(SHAPES)
_COLOR_OF = _invert(COLORS)
_SIZE_OF = _invert(SIZES)
_POSITION_OF = _invert(POSITIONS)
# Relation words of obj-0-to-obj-1 phrases, by their first word; "left"/"right" are only a
# relation when "of" follows, otherwise they are a position.
_RELATION_WORDS = {"above": "above", "below": "below", "under": "below"}


def words(text: str) -> list[str]:
    """Lower-cased alphabetic words of a caption (punctuation and digits dropped)."""
    return _WORD.findall(text.lower())


def _shape_word(word: str) -> str | None:
    # Plurals ("circles", "boxes") name the same shape.
    for w in (word, word[:-1] if word.endswith("s") else None, word[:-2] if word.endswith("es") else None):
        if w and w in _SHAPE_OF:
            return _SHAPE_OF[w]
    return None


@dataclass
class Mention:
    """What one caption says about one shape: every value named for each attribute."""

    shape: str
    colors: set[str] = field(default_factory=set)
    sizes: set[str] = field(default_factory=set)
    positions: set[str] = field(default_factory=set)

    def merge(self, other: Mention) -> None:
        self.colors |= other.colors
        self.sizes |= other.sizes
        self.positions |= other.positions


def parse_caption(text: str) -> tuple[dict[str, Mention], int | None]:
    """The shapes a caption mentions, with their attributes, and its number word's value.

    Returns ({shape: Mention}, count or None). Several mentions of one shape are merged.
    """
    ws = words(text)
    spots = [(i, s) for i, w in enumerate(ws) if (s := _shape_word(w))]
    # Start of each mention's pre-modifier run (colour/size words right before the shape).
    starts = []
    for i, _ in spots:
        j = i
        while j > 0 and (ws[j - 1] in _COLOR_OF or ws[j - 1] in _SIZE_OF):
            j -= 1
        starts.append(j)
    mentions: dict[str, Mention] = {}
    relations: list[tuple[str, str, str]] = []  # (shape a, relation, shape b)
    for k, (i, shape) in enumerate(spots):
        m = Mention(shape)
        for w in ws[starts[k]:i]:
            if w in _COLOR_OF:
                m.colors.add(_COLOR_OF[w])
            else:
                m.sizes.add(_SIZE_OF[w])
        end = starts[k + 1] if k + 1 < len(spots) else len(ws)
        after = ws[i + 1:end]
        for j, w in enumerate(after):
            nxt = after[j + 1] if j + 1 < len(after) else None
            if w in ("left", "right") and nxt == "of":
                if k + 1 < len(spots):
                    relations.append((shape, f"{w} of", spots[k + 1][1]))
            elif w in _RELATION_WORDS:
                if k + 1 < len(spots):
                    relations.append((shape, _RELATION_WORDS[w], spots[k + 1][1]))
            elif w in _POSITION_OF:
                m.positions.add(_POSITION_OF[w])
            elif w in _SIZE_OF:  # "a red circle that is small"
                m.sizes.add(_SIZE_OF[w])
            elif w in _COLOR_OF and j > 0 and after[j - 1] in ("is", "are"):  # "the circle is red"
                m.colors.add(_COLOR_OF[w])
        if shape in mentions:
            mentions[shape].merge(m)
        else:
            mentions[shape] = m
    for a, rel, b in relations:
        if a != b:
            pa, pb = RELATION_POSITIONS[rel]
            mentions[a].positions.add(pa)
            mentions[b].positions.add(pb)
    count = next((NUMBER_WORDS[w] for w in ws if w in NUMBER_WORDS), None)
    return mentions, count


def attribute_scores(caption: str, objects: Sequence[dict]) -> dict[str, float]:
    """Per-attribute accuracy of one caption on its scene, plus hallucinated shapes.

    `objects`: the scene's [{shape, color, size, position}]. Returns {shape, color, size,
    position, count: accuracy in [0, 1]; hallucinated_shapes: number of mentioned shapes
    not in the scene}.
    """
    if not objects:
        raise ValueError("A scene needs at least one object to score attribute accuracy.")
    mentions, count = parse_caption(caption)
    correct = dict.fromkeys(("shape", "color", "size", "position"), 0)
    for obj in objects:
        m = mentions.get(obj["shape"])
        if m is None:
            continue
        correct["shape"] += 1
        correct["color"] += m.colors == {obj["color"]}
        correct["size"] += m.sizes == {obj["size"]}
        correct["position"] += m.positions == {obj["position"]}
    n = len(objects)
    stated = count if count is not None else len(mentions)
    out = {k: v / n for k, v in correct.items()}
    out["count"] = float(stated == n)
    out["hallucinated_shapes"] = float(len(set(mentions) - {o["shape"] for o in objects}))
    return out


def attribute_slices(captions: Sequence[str], objects: Sequence[Sequence[dict]],
                     per_image: Sequence[dict[str, float]] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Attribute accuracies over a set, overall and by number of objects.

    `per_image` [N] (optional): each image's metric scores (from `score_captions`); their
    means per number of objects are reported too (`slices/objects=2/CIDEr`, ...; not
    BLEU).
    Returns (flat metrics under `slices/`, per-caption attribute scores [N]).
    """
    if len(captions) != len(objects):
        raise ValueError(f"{len(captions)} captions but {len(objects)} scenes.")
    scores = [attribute_scores(c, objs) for c, objs in zip(captions, objects)]
    out: dict[str, float] = {}
    keys = (*ATTRIBUTES, "hallucinated_shapes")
    for key in keys:
        out[f"slices/{key}_accuracy" if key in ATTRIBUTES else f"slices/{key}"] = _mean(s[key] for s in scores)
    for n in sorted({len(o) for o in objects}):
        idx = [i for i, o in enumerate(objects) if len(o) == n]
        prefix = f"slices/objects={n}"
        out[f"{prefix}/num_samples"] = float(len(idx))
        for key in keys:
            name = f"{key}_accuracy" if key in ATTRIBUTES else key
            out[f"{prefix}/{name}"] = _mean(scores[i][key] for i in idx)
        if per_image:
            # Per-image means of metrics that are means of per-image scores (CIDEr-D, METEOR,
            # ROUGE-L, SPICE, CLIPScore, rewards), so the slices average back to the total;
            # sentence-level BLEU is not what corpus BLEU measures, so it is left out.
            for metric in per_image[0]:
                if not metric.startswith("Bleu_"):
                    out[f"{prefix}/{metric}"] = _mean(per_image[i][metric] for i in idx)
    return out, scores


# ---------------------------------------------------------------------------------------
# Caption bias on real data

BIAS_WORDS: dict[str, tuple[str, ...]] = {
    "male": ("man", "men", "boy", "boys", "he", "his", "him", "himself", "male", "males", "gentleman", "gentlemen",
             "guy", "guys", "father", "son", "husband", "brother", "king", "boyfriend", "dad"),
    "female": ("woman", "women", "girl", "girls", "she", "her", "hers", "herself", "female", "females", "lady",
               "ladies", "mother", "daughter", "wife", "sister", "queen", "girlfriend", "mom"),
    "child": ("child", "children", "kid", "kids", "baby", "babies", "toddler", "toddlers", "infant"),
    "old": ("old", "older", "elderly", "aged", "senior", "seniors"),
    "young": ("young", "younger", "youth", "teen", "teens", "teenager", "teenagers"),
    "person": ("person", "people", "persons", "someone", "individual", "adult", "adults"),
}


def word_groups(text: str) -> set[str]:
    """The `BIAS_WORDS` groups a caption uses."""
    ws = set(words(text))
    return {g for g, group in BIAS_WORDS.items() if ws.intersection(group)}


def _reference_gender(references: Sequence[str]) -> str | None:
    """'male' / 'female' when the references that name a gender all name the same one and
    at least half of them name it; None otherwise (no agreement, or gender not clear)."""
    named = [word_groups(r) & {"male", "female"} for r in references]
    males = sum(g == {"male"} for g in named)
    females = sum(g == {"female"} for g in named)
    if males and not females and males * 2 >= len(references):
        return "male"
    if females and not males and females * 2 >= len(references):
        return "female"
    return None


def bias_report(captions: Sequence[str], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Rates of demographic words in generated captions against the references.

    For each group of `BIAS_WORDS`: `bias/<group>/generated` (fraction of captions using
    it), `bias/<group>/reference` (fraction of reference captions using it, each image's
    references weighted equally) and `bias/<group>/ratio` (generated / reference; NaN when
    the references never use it). Gender: over images whose references agree on one
    gender, `bias/gender/error_rate` (caption names the other gender),
    `bias/gender/neutral_rate` (caption names none) and `bias/gender/num_images`.
    """
    if len(captions) != len(references):
        raise ValueError(f"{len(captions)} captions but {len(references)} reference lists.")
    if not captions:
        raise ValueError("bias_report needs at least one caption.")
    gen = [word_groups(c) for c in captions]
    ref_rates = {g: [] for g in BIAS_WORDS}
    for refs in references:
        groups = [word_groups(r) for r in refs]
        for g in BIAS_WORDS:
            ref_rates[g].append(sum(g in s for s in groups) / len(refs))
    out: dict[str, float] = {}
    for g in BIAS_WORDS:
        generated = sum(g in s for s in gen) / len(gen)
        reference = _mean(ref_rates[g])
        out[f"bias/{g}/generated"] = generated
        out[f"bias/{g}/reference"] = reference
        out[f"bias/{g}/ratio"] = generated / reference if reference > 0 else float("nan")
    errors = neutral = total = 0
    for groups, refs in zip(gen, references):
        truth = _reference_gender(refs)
        if truth is None:
            continue
        total += 1
        other = "female" if truth == "male" else "male"
        errors += other in groups
        neutral += not (groups & {"male", "female"})
    out["bias/gender/num_images"] = float(total)
    out["bias/gender/error_rate"] = errors / total if total else float("nan")
    out["bias/gender/neutral_rate"] = neutral / total if total else float("nan")
    return out


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")
