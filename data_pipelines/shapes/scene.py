"""Scenes of the shapes world: objects with a colour, a shape, a size and a position, and their relations.

Positions are in [0, 1] image units (y grows downwards, as in the image), so a seed gives the same layout at
any resolution. A relation is only ever stated or asked about when it holds by a clear margin, so every
caption, answer and hard negative is unambiguous to anyone who can see the picture.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

COLORS = {
    "red": (220, 38, 38), "green": (34, 170, 60), "blue": (40, 90, 230), "yellow": (240, 215, 40),
    "purple": (140, 60, 190), "orange": (245, 135, 25), "cyan": (40, 200, 210), "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds",
           "cross": "crosses"}
SIZES = {"small": 0.08, "large": 0.14}  # radius, in image widths
RELATIONS = ("left of", "right of", "above", "below")
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_MARGIN = 0.12  # centre distance along the axis a relation needs to hold (or clearly fail)
GAP = 0.04  # free space between objects and to the border
MAX_OBJECTS = 4


@dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str
    x: float
    y: float

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def combo(self) -> tuple[str, str]:
        return (self.color, self.shape)

    def name(self, with_size: bool = True) -> str:
        return f"{self.size} {self.color} {self.shape}" if with_size else f"{self.color} {self.shape}"

    def to_json(self) -> dict:
        return {"color": self.color, "shape": self.shape, "size": self.size, "x": self.x, "y": self.y,
                "radius": self.radius}


def relation_holds(rel: str, a: ShapeObject, b: ShapeObject) -> bool | None:
    """Is `a` {rel} `b`? True / False when clear by RELATION_MARGIN, None when too close to call."""
    delta = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[rel]
    if delta >= RELATION_MARGIN:
        return True
    if delta <= -RELATION_MARGIN:
        return False
    return None


def dominant_relation(a: ShapeObject, b: ShapeObject) -> str | None:
    """The relation a caption would use for `a` and `b`: the clear one along the axis that dominates."""
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= 1.5 * abs(dy):
        rel = "left of" if dx > 0 else "right of"
    elif abs(dy) >= 1.5 * abs(dx):
        rel = "above" if dy > 0 else "below"
    else:
        return None
    return rel if relation_holds(rel, a, b) else None


def all_combos() -> list[tuple[str, str]]:
    return [(c, s) for c in COLORS for s in SHAPES]


def choose_heldout_combos(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` colour-shape pairs, no colour twice and each shape as rarely as possible, so every colour and
    every shape is still seen in training (the point of the split is unseen *combinations*)."""
    rng = random.Random(f"{seed}-heldout-combos")
    colors = list(COLORS)
    rng.shuffle(colors)
    offset = rng.randrange(len(SHAPES))
    return sorted((colors[i % len(colors)], SHAPES[(i + offset) % len(SHAPES)]) for i in range(n))


def sample_scene(rng: random.Random, combos: list[tuple[str, str]], n_objects: int,
                 must_include: list[tuple[str, str]] | None = None) -> list[ShapeObject]:
    """`n_objects` non-overlapping objects with distinct colour-shape pairs; two-object scenes get a clear
    dominant relation so their captions can state one."""
    while True:
        picked = [rng.choice(must_include)] if must_include else []
        while len(picked) < n_objects:
            combo = rng.choice(combos)
            if combo not in picked:
                picked.append(combo)
        sizes = [rng.choice(list(SIZES)) for _ in picked]
        objects = _place(rng, picked, sizes)
        if objects is None:
            continue
        if n_objects == 2 and dominant_relation(objects[0], objects[1]) is None:
            continue
        return objects


def _place(rng: random.Random, combos: list, sizes: list[str]) -> list[ShapeObject] | None:
    placed: list[ShapeObject] = []
    for (color, shape), size in zip(combos, sizes, strict=True):
        r = SIZES[size]
        for _ in range(50):
            x, y = (round(rng.uniform(r + GAP, 1 - r - GAP), 4) for _ in range(2))
            if all((x - o.x) ** 2 + (y - o.y) ** 2 >= (r + o.radius + GAP) ** 2 for o in placed):
                placed.append(ShapeObject(color, shape, size, x, y))
                break
        else:
            return None
    return placed
