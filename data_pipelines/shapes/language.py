"""Words about shapes-world scenes: captions, VQA questions (answer-balanced) and hard-negative captions.

Answers are written in the VQA normal form already (lowercase words, numbers as digits), so the evaluation's
answer normalisation leaves them unchanged.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from itertools import permutations

from data_pipelines.shapes.scene import (
    COLORS,
    INVERSE,
    PLURALS,
    RELATIONS,
    SHAPES,
    SIZES,
    ShapeObject,
    dominant_relation,
    relation_holds,
)

NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
ANSWER_TYPES = {"exist": "yes/no", "count": "number", "query_color": "other", "query_shape": "other",
                "query_size": "other", "relation": "yes/no"}
FAMILIES = tuple(ANSWER_TYPES)
Description = tuple[str, str, str]  # (size, color, shape)


def _listing(objects: list[ShapeObject]) -> str:
    names = [f"a {o.name()}" for o in objects]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def caption_phrasings(objects: list[ShapeObject]) -> list[str]:
    """Every true phrasing this scene gets; relations only where they hold clearly."""
    if len(objects) == 1:
        o = objects[0].name()
        return [f"a {o}", f"a {o} on a plain background", f"there is a {o}", f"a picture of a {o}", f"one {o}"]
    if len(objects) == 2:
        a, b = objects
        rel = dominant_relation(a, b)
        return [f"a {a.name()} {rel} a {b.name()}", f"a {b.name()} {INVERSE[rel]} a {a.name()}",
                f"there is a {a.name()} {rel} a {b.name()}",
                f"a {a.name()} and a {b.name()}, the {a.name(False)} {rel} the {b.name(False)}",
                f"two objects: a {b.name()} {INVERSE[rel]} a {a.name()}"]
    by_x, by_y = sorted(objects, key=lambda o: o.x), sorted(objects, key=lambda o: o.y)
    count = NUMBER_WORDS[len(objects)]
    phrasings = [_listing(by_x), f"{count} objects: {_listing(by_y)}", f"a scene with {_listing(objects)}"]
    if all(relation_holds("left of", p, q) for p, q in zip(by_x, by_x[1:], strict=False)):
        phrasings.append(f"from left to right: {_listing(by_x)}")
    for a, b in permutations(objects, 2):
        rel = dominant_relation(a, b)
        if rel:
            rest = [o for o in objects if o not in (a, b)]
            phrasings.append(f"a {a.name()} {rel} a {b.name()}, and {_listing(rest)}")
            break
    return phrasings


class AnswerBalancer:
    """Picks each question so the answers of its family stay as even as the scenes allow.

    For every scene and family it first chooses the answer given least so far among those this scene can
    support, then a question with that answer, as CLEVR's generator rejects over-represented answers.
    """

    def __init__(self):
        self.counts: dict[str, Counter] = defaultdict(Counter)

    def pick(self, family: str, candidates: list[tuple[str, str]], rng: random.Random) -> tuple[str, str] | None:
        if not candidates:
            return None
        answers = sorted({answer for _, answer in candidates})
        fewest = min(self.counts[family][a] for a in answers)
        answer = rng.choice([a for a in answers if self.counts[family][a] == fewest])
        self.counts[family][answer] += 1
        return rng.choice([c for c in candidates if c[1] == answer])


def question_candidates(objects: list[ShapeObject], combos: list[tuple[str, str]]) -> dict[str, list]:
    """All (question, answer) pairs per family that this scene answers unambiguously.

    `combos` limits which colour-shape pairs an existence question may name (the held-out ones stay unnamed
    outside the held-out split).
    """
    present = {o.combo for o in objects}
    yes_no = ("no", "yes")

    def unique(key) -> list[ShapeObject]:
        counts = Counter(key(o) for o in objects)
        return [o for o in objects if counts[key(o)] == 1]

    color_q = [(f"what color is the {o.shape}?", o.color) for o in unique(lambda o: o.shape)]
    color_q += [(f"what color is the {o.size} {o.shape}?", o.color) for o in unique(lambda o: (o.size, o.shape))
                if sum(p.shape == o.shape for p in objects) > 1]
    shape_q = [(f"what shape is the {o.color} object?", o.shape) for o in unique(lambda o: o.color)]
    shape_q += [(f"what shape is the {o.size} {o.color} object?", o.shape)
                for o in unique(lambda o: (o.size, o.color)) if sum(p.color == o.color for p in objects) > 1]
    count_q = [("how many objects are there?", str(len(objects)))]
    count_q += [(f"how many {PLURALS[s]} are there?", str(sum(o.shape == s for o in objects))) for s in SHAPES]
    count_q += [(f"how many {c} objects are there?", str(sum(o.color == c for o in objects))) for c in COLORS]
    count_q += [(f"how many {z} objects are there?", str(sum(o.size == z for o in objects))) for z in SIZES]
    relation_q = []
    for a, b in permutations(objects, 2):
        for rel in RELATIONS:
            holds = relation_holds(rel, a, b)
            if holds is not None:
                relation_q.append((f"is the {a.name(False)} {rel} the {b.name(False)}?", yes_no[holds]))
    return {
        "exist": [(f"is there {'an' if c[0] in 'aeiou' else 'a'} {c} {s}?", yes_no[(c, s) in present])
                  for c, s in combos],
        "count": count_q,
        "query_color": color_q,
        "query_shape": shape_q,
        "query_size": [(f"what size is the {o.name(False)}?", o.size) for o in objects],
        "relation": relation_q,
    }


def make_questions(objects: list[ShapeObject], combos: list[tuple[str, str]], balancer: AnswerBalancer,
                   rng: random.Random) -> list[dict]:
    """One question per family this scene supports, chosen by the balancer."""
    questions = []
    for family, candidates in question_candidates(objects, combos).items():
        picked = balancer.pick(family, candidates, rng)
        if picked:
            questions.append({"question": picked[0], "answer": picked[1], "family": family,
                              "answer_type": ANSWER_TYPES[family]})
    return questions


def claim_truth(claim: tuple, objects: list[ShapeObject]) -> bool | None:
    """Truth of `(desc,)` or `(desc_a, rel, desc_b)` in a scene: True, False, or None when unclear."""
    def matches(desc: Description) -> list[ShapeObject]:
        return [o for o in objects if (o.size, o.color, o.shape) == desc]

    if len(claim) == 1:
        return bool(matches(claim[0]))
    results = [relation_holds(claim[1], a, b) for a in matches(claim[0]) for b in matches(claim[2]) if a is not b]
    if any(r is True for r in results):
        return True
    return False if all(r is False for r in results) else None


def describe(claim: tuple) -> str:
    if len(claim) == 1:
        return "a " + " ".join(claim[0])
    return f"a {' '.join(claim[0])} {claim[1]} a {' '.join(claim[2])}"


def make_negatives(objects: list[ShapeObject], combos: list[tuple[str, str]], rng: random.Random) -> list[dict]:
    """(true caption, hard negative, type) rows, at most one per type; every negative is checked to be clearly
    false and to name only colour-shape pairs this split may name.

    The true caption is a clear relation between two objects (or the one object alone); the pair that
    supports the most negative types is used.
    """
    allowed = set(combos)
    desc = [(o.size, o.color, o.shape) for o in objects]
    claims = [(desc[i], dominant_relation(objects[i], objects[j]), desc[j])
              for i, j in permutations(range(len(objects)), 2) if dominant_relation(objects[i], objects[j])]
    present = {o.combo for o in objects}

    def usable(negative: tuple, true: tuple) -> bool:
        named = [d for d in negative if isinstance(d, tuple)]
        return negative != true and claim_truth(negative, objects) is False and all(
            (d[1], d[2]) in allowed for d in named)

    best = []
    for true in claims or [(desc[0],)]:
        candidates = {"relation swap": [], "attribute swap": [], "object replace": []}
        if len(true) == 3:
            (sa, ca, ha), rel, (sb, cb, hb) = true
            candidates["relation swap"] = [(true[2], rel, true[0])]
            # Swap colours, else sizes; a swap that only re-states the relation swap tests no binding.
            candidates["attribute swap"] = [c for c in (((sa, cb, ha), rel, (sb, ca, hb)),
                                                        ((sb, ca, ha), rel, (sa, cb, hb)))
                                            if c != candidates["relation swap"][0]]
        size, color, _ = true[-1]
        shapes = [s for s in SHAPES if (color, s) not in present]
        candidates["object replace"] = [true[:-1] + ((size, color, s),) for s in rng.sample(shapes, len(shapes))]
        rows = []
        for kind, options in candidates.items():
            negative = next((c for c in options if usable(c, true)), None)
            if negative:
                rows.append({"caption": describe(true), "negative_caption": describe(negative), "negative_type": kind})
        if len(rows) > len(best):
            best = rows
        if len(best) == len(candidates):
            break
    return best
