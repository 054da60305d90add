"""The embedded default task: procedurally rendered scenes with varied human-like captions.

Each scene (deterministic in its id) holds 1-3 coloured shapes with a size and a
position; two-object scenes also have a spatial relation. Every image gets five
reference captions drawn from different templates and synonyms, so the references
agree on content and differ in phrasing: the situation in which optimising CIDEr-D
helps on real data (the consensus phrasing earns more than any single template).

The same scenes carry VQA items (colour, shape, count, position) with short answers.
Vocabulary: `reward_models.scene_vocab`, shared with the attribute reward.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from reward_models.scene_vocab import COLORS, COUNTS, POSITIONS, RELATIONS, SHAPES, SIZES

CAPTION_PROMPT = "Describe the image in one sentence."
SPLIT_SEEDS = {"train": 0, "validation": 1_000_000, "test": 2_000_000}
SPLIT_SIZES = {"train": 2000, "validation": 200, "test": 200}

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
}
# Region centres as fractions of the canvas.
_REGION_XY = {"left": (0.22, 0.5), "right": (0.78, 0.5), "top": (0.5, 0.22), "bottom": (0.5, 0.78),
              "center": (0.5, 0.5)}
_POS_PHRASES = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "near the top", "in the top part"),
    "bottom": ("at the bottom", "near the bottom", "in the bottom part"),
    "center": ("in the center", "in the middle", "at the center"),
}
_REL_PHRASES = {
    "left of": ("to the left of", "left of"),
    "right of": ("to the right of", "right of"),
    "above": ("above",),
    "below": ("below", "under"),
}
# Relation of object 0 to object 1 -> their positions.
_REL_POSITIONS = {"left of": ("left", "right"), "right of": ("right", "left"),
                  "above": ("top", "bottom"), "below": ("bottom", "top")}


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    position: str

    def as_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "color": self.color, "size": self.size, "position": self.position}


@dataclass
class Scene:
    scene_id: int
    objects: list[SceneObject]
    relation: str  # "" unless the scene has exactly two objects
    references: list[str] = field(default_factory=list)


def _pick(rng: random.Random, words: tuple[str, ...]) -> str:
    return rng.choice(words)


def _np(rng: random.Random, obj: SceneObject, article: bool = True, size: bool = True) -> str:
    """Noun phrase for one object: '[a] [small] red circle' with random synonyms."""
    parts = ["a"] if article else []
    if size:
        parts.append(_pick(rng, SIZES[obj.size]))
    parts += [_pick(rng, COLORS[obj.color]), _pick(rng, SHAPES[obj.shape])]
    return " ".join(parts)


def _caption(rng: random.Random, scene: Scene, template: int) -> str:
    objs = scene.objects
    pos = lambda o: _pick(rng, _POS_PHRASES[o.position])  # noqa: E731
    if len(objs) == 1:
        o = objs[0]
        options = [
            lambda: f"{_np(rng, o)} {pos(o)}",
            lambda: f"there is {_np(rng, o)} {pos(o)}",
            lambda: f"{pos(o)} there is {_np(rng, o)}",
            lambda: f"one {_np(rng, o, article=False)} {pos(o)} of the image",
            lambda: f"a {_pick(rng, COLORS[o.color])} {_pick(rng, SHAPES[o.shape])} that is "
                    f"{_pick(rng, SIZES[o.size])} {pos(o)}",
            lambda: f"the image shows {_np(rng, o)} {pos(o)}",
        ]
    elif len(objs) == 2:
        a, b = objs
        rel = _pick(rng, _REL_PHRASES[scene.relation])
        options = [
            lambda: f"{_np(rng, a)} {rel} {_np(rng, b)}",
            lambda: f"two shapes : {_np(rng, a)} {pos(a)} and {_np(rng, b)} {pos(b)}",
            lambda: f"there is {_np(rng, a)} {rel} {_np(rng, b)}",
            lambda: f"{_np(rng, a)} and {_np(rng, b)} , the {a.shape} is {rel} the {b.shape}",
            lambda: f"two objects , {_np(rng, a)} {rel} {_np(rng, b)}",
            lambda: f"the image shows {_np(rng, a)} {pos(a)} and {_np(rng, b)} {pos(b)}",
        ]
    else:
        a, b, c = objs
        options = [
            lambda: f"three shapes : {_np(rng, a)} , {_np(rng, b)} and {_np(rng, c)}",
            lambda: f"{_np(rng, a)} {pos(a)} , {_np(rng, b)} {pos(b)} and {_np(rng, c)} {pos(c)}",
            lambda: f"there are three objects : {_np(rng, a)} , {_np(rng, b)} and {_np(rng, c)}",
            lambda: f"three shapes , {_np(rng, a)} {pos(a)} , {_np(rng, b)} and {_np(rng, c)}",
            lambda: f"the image shows {_np(rng, a)} , {_np(rng, b)} and {_np(rng, c)}",
            lambda: f"{_np(rng, a)} , {_np(rng, b)} {pos(b)} and {_np(rng, c)} {pos(c)}",
        ]
    return options[template % len(options)]()


def make_scene(scene_id: int) -> Scene:
    """The scene with this id: objects, relation and five distinct reference captions."""
    rng = random.Random(scene_id)
    n = rng.choices((1, 2, 3), weights=(0.4, 0.35, 0.25))[0]
    relation = ""
    if n == 2:
        relation = rng.choice(list(RELATIONS))
        positions = list(_REL_POSITIONS[relation])
    else:
        positions = rng.sample(list(POSITIONS), n)
    shapes = rng.sample(list(SHAPES), n)  # distinct shapes so "the circle" is unambiguous
    objects = [
        SceneObject(shape=s, color=rng.choice(list(COLORS)), size=rng.choice(list(SIZES)), position=p)
        for s, p in zip(shapes, positions)
    ]
    scene = Scene(scene_id=scene_id, objects=objects, relation=relation)
    templates = rng.sample(range(6), 5)
    refs: list[str] = []
    for t in templates:
        for _ in range(10):  # synonyms can collide; retry for five distinct captions
            cap = _caption(rng, scene, t)
            if cap not in refs:
                break
        refs.append(cap)
    scene.references = refs
    return scene


def render_scene(scene: Scene, image_size: int = 64) -> Image.Image:
    """Draw the scene as an RGB image (deterministic in the scene id)."""
    rng = random.Random(scene.scene_id * 7919 + image_size)
    bg = tuple(rng.randint(225, 250) for _ in range(3))
    img = Image.new("RGB", (image_size, image_size), bg)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        fx, fy = _REGION_XY[obj.position]
        cx = (fx + rng.uniform(-0.04, 0.04)) * image_size
        cy = (fy + rng.uniform(-0.04, 0.04)) * image_size
        r = (0.09 if obj.size == "small" else 0.17) * image_size
        fill = _RGB[obj.color]
        if obj.shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif obj.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        else:  # diamond
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return img


def _vqa_items(rng: random.Random, scene: Scene) -> list[tuple[str, str, list[str]]]:
    """(question_type, question, answers) for a scene."""
    o = rng.choice(scene.objects)
    count_word = COUNTS[len(scene.objects)][0]
    return [
        ("color", f"What color is the {o.shape}?", list(COLORS[o.color])),
        ("shape", f"What shape is the {o.color} object?", list(SHAPES[o.shape])),
        ("count", "How many shapes are there?", [count_word, str(len(scene.objects))]),
        ("position", f"Where is the {o.color} {o.shape}?", list(POSITIONS[o.position])),
    ]


def _conversation(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]


def _scene_ids(split: str, num_samples: int | None) -> range:
    if split not in SPLIT_SEEDS:
        raise ValueError(f"Unknown split {split!r} of the synthetic task; use one of {list(SPLIT_SEEDS)}.")
    n = SPLIT_SIZES[split] if num_samples is None else num_samples
    return range(SPLIT_SEEDS[split], SPLIT_SEEDS[split] + n)


def load_synthetic_captions(split: str = "train", num_samples: int | None = None, image_size: int = 64):
    """The captioning task as a `datasets.Dataset`.

    Columns: `image` (Image), `prompt` (TRL conversational), `references` (5 str),
    `objects` (list of {shape, color, size, position}), `num_objects`, `relation`,
    `scene_id`. Splits are fixed: train 2,000, validation 200, test 200 scenes.
    """
    from datasets import Dataset, Features, List, Value
    from datasets import Image as ImageFeature

    rows: dict[str, list] = {k: [] for k in
                             ("image", "prompt", "references", "objects", "num_objects", "relation", "scene_id")}
    for sid in _scene_ids(split, num_samples):
        scene = make_scene(sid)
        rows["image"].append(render_scene(scene, image_size))
        rows["prompt"].append(_conversation(CAPTION_PROMPT))
        rows["references"].append(scene.references)
        rows["objects"].append([o.as_dict() for o in scene.objects])
        rows["num_objects"].append(len(scene.objects))
        rows["relation"].append(scene.relation)
        rows["scene_id"].append(sid)
    obj = {"shape": Value("string"), "color": Value("string"), "size": Value("string"), "position": Value("string")}
    features = Features({
        "image": ImageFeature(),
        "prompt": List({"role": Value("string"),
                        "content": List({"type": Value("string"), "text": Value("string")})}),
        "references": List(Value("string")),
        "objects": List(obj),
        "num_objects": Value("int32"),
        "relation": Value("string"),
        "scene_id": Value("int64"),
    })
    return Dataset.from_dict(rows, features=features)


def load_synthetic_vqa(split: str = "train", num_samples: int | None = None, image_size: int = 64):
    """VQA items over the same scenes: one question per scene, cycling the types.

    Columns: `image`, `prompt`, `answers` (accepted short answers), `question_type`,
    `objects`, `num_objects`, `relation`, `scene_id`.
    """
    from datasets import Dataset

    rows: dict[str, list] = {k: [] for k in ("image", "prompt", "answers", "question_type", "objects",
                                              "num_objects", "relation", "scene_id")}
    for i, sid in enumerate(_scene_ids(split, num_samples)):
        scene = make_scene(sid)
        qtype, question, answers = _vqa_items(random.Random(sid + 17), scene)[i % 4]
        rows["image"].append(render_scene(scene, image_size))
        rows["prompt"].append(_conversation(question + " Answer with one word."))
        rows["answers"].append(answers)
        rows["question_type"].append(qtype)
        rows["objects"].append([o.as_dict() for o in scene.objects])
        rows["num_objects"].append(len(scene.objects))
        rows["relation"].append(scene.relation)
        rows["scene_id"].append(sid)
    ds = Dataset.from_dict(rows)
    from datasets import Image as ImageFeature

    return ds.cast_column("image", ImageFeature())


def tokenizer_corpus(num_scenes: int = 400) -> list[str]:
    """Text the zoo's tokenizers are trained on: captions, prompts, questions, answers and
    chat-template words, so every task word is a handful of tokens at most."""
    lines = [CAPTION_PROMPT, "user assistant system", "Answer with one word."]
    for sid in range(num_scenes):
        scene = make_scene(sid)
        lines += scene.references
        lines += [q + " " + a[0] for _, q, a in _vqa_items(random.Random(sid + 17), scene)]
    return lines
