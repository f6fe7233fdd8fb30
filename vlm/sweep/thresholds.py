"""Where an ability appears: the least training compute at which it clears its blind baseline by a margin.

A curve is a family's grid points for one ability on one split: (training FLOPs, score, blind baseline), all
sizes together. The threshold is the compute of the cheapest point whose score is at least `margin` points
above its own baseline; it is only as fine as the grid (the truth lies between that point and the next
cheaper one), and None when no point gets there.
"""

from __future__ import annotations

from typing import NamedTuple

ABILITY_ORDER = ("retrieval", "vqa", "compositional")


class CurvePoint(NamedTuple):
    compute: float
    value: float
    baseline: float
    size: str
    steps: int


def threshold(points: list[CurvePoint] | list[tuple[float, float, float]], margin: float) -> float | None:
    """The least compute among the points with value - baseline >= margin; None if there is none."""
    clearing = [p[0] for p in points if p[1] - p[2] >= margin]
    return min(clearing) if clearing else None


def curve(rows: list[dict], family: str, split: str, ability: str, negatives: bool = False) -> list[CurvePoint]:
    """One family's points for one ability, cheapest first."""
    points = [CurvePoint(r["train_flops"], r["metrics"][split][ability], r["baselines"][split][ability], r["size"],
                         r["steps"])
              for r in rows if r["family"] == family and r["negatives"] == negatives
              and ability in r["metrics"].get(split, {})]
    return sorted(points)


def abilities(rows: list[dict], split: str) -> list[str]:
    """Every ability measured on `split`, grouped retrieval, VQA, compositional (each overall first)."""
    names = {a for r in rows for a in r["metrics"].get(split, {})}
    return sorted(names, key=lambda a: (ABILITY_ORDER.index(a.split("/")[0]) if a.split("/")[0] in ABILITY_ORDER
                                        else len(ABILITY_ORDER), "/" in a, a))


def families_of(rows: list[dict], ability: str) -> list[str]:
    order = ("late", "early", "hybrid")
    return [f for f in order if any(r["family"] == f and any(ability in m for m in r["metrics"].values())
                                     for r in rows)]


def threshold_table(rows: list[dict], splits: tuple[str, ...] | list[str], margin: float) -> dict:
    """{split: {ability: {family: FLOPs or None}}} over the points without hard negatives."""
    return {split: {ability: {f: threshold(curve(rows, f, split, ability), margin) for f in families_of(rows, ability)}
                    for ability in abilities(rows, split)}
            for split in splits}
