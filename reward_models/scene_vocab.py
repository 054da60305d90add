"""The attribute vocabulary of mmft's embedded captioning task.

The scene renderer (`mmft.data.synthetic`) draws captions from these words and the
attribute reward (`reward_models.shaping.AttributeReward`) recognises them, so both
read this one table. Each attribute value maps to the words that name it; the first
word is the canonical one.
"""

SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disk"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
COLORS: dict[str, tuple[str, ...]] = {
    "red": ("red",),
    "green": ("green",),
    "blue": ("blue",),
    "yellow": ("yellow",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
}
SIZES: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "large": ("large", "big"),
}
POSITIONS: dict[str, tuple[str, ...]] = {
    "left": ("left",),
    "right": ("right",),
    "top": ("top",),
    "bottom": ("bottom",),
    "center": ("center", "middle"),
}
COUNTS: dict[int, tuple[str, ...]] = {1: ("one", "a", "an"), 2: ("two",), 3: ("three",)}
# Spatial relation of object 0 to object 1 in two-object scenes.
RELATIONS: dict[str, tuple[str, ...]] = {
    "left of": ("left of",),
    "right of": ("right of",),
    "above": ("above",),
    "below": ("below", "under"),
}
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "position": POSITIONS,
}
