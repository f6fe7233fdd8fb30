"""Compositional hard negatives for training: captions with attributes, objects or relation sides swapped.

NegCLIP (Yuksekgonul et al., "When and why vision-language models behave like bags-of-words", ICLR 2023)
trains CLIP with such swapped captions as extra negatives; it lifted VG-Relation from 63% to 81%.

Two sources of negatives, one per kind of caption:
- A shapes-world image: its scene is known, so the negatives come from the world's own grammar,
  `data_pipelines.shapes.language.make_negatives` (the generator that writes `compositional_*.jsonl` for the
  evaluation); each is checked to be false in the scene and names only colour-shape pairs the split may name.
- Any other caption: a word-swap heuristic that needs no model and no tagger (`swap_attributes`,
  `swap_objects`, `swap_relation` below). It makes mistakes on free English; a caption it cannot parse
  gets no negative of that type, never a copy of itself.

Negatives are a pure function of (seed, image id, caption), so a resumed run sees the ones it would have seen.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch

from data_pipelines.shapes.language import make_negatives
from data_pipelines.shapes.scene import ShapeObject, all_combos
from vlm.tokenizer import cut_padding, padding_mask

NEGATIVE_TYPES = ("attribute", "object", "relation")
SHAPES_KIND = {"attribute": "attribute swap", "object": "object replace", "relation": "relation swap"}

# The heuristic's word lists. Attribute words swap only with a word of the same class (a colour with a colour),
# so "a small red circle" never becomes "a red small circle", which binds nothing differently.
ATTRIBUTE_CLASSES = (
    {"red", "green", "blue", "yellow", "purple", "orange", "cyan", "white", "black", "brown", "pink", "gray",
     "grey", "silver", "gold", "golden", "beige", "tan"},
    {"small", "large", "big", "little", "tiny", "huge", "tall", "short", "long", "giant"},
    {"wooden", "metal", "metallic", "plastic", "glass", "stone", "rubber", "leather", "paper"},
    {"old", "young", "new"},
    {"empty", "full", "open", "closed", "wet", "dry", "clean", "dirty"},
)
RELATION_PHRASES = sorted(
    ["left of", "right of", "to the left of", "to the right of", "in front of", "on top of", "next to", "behind",
     "above", "below", "under", "underneath", "beneath", "over", "on", "in", "inside", "near", "beside",
     "holding", "riding", "wearing", "eating", "carrying", "with"],
    key=lambda p: -len(p.split()))
DETERMINERS = {"a", "an", "the", "one", "two", "three", "four", "five", "some", "this", "that", "these", "those",
               "his", "her", "their", "its", "my", "another"}
NP_STOP = {"and", "or", "while", "which", "that", "who", ",", ".", ";", ":", "!", "?"}
COPULAS = {"is", "are", "was", "were", "sits", "sitting", "stands", "standing", "lies", "lying", "located",
           "placed", "being", "seen", "shown"}


def _tokens(caption: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", caption)


def _join(tokens: list[str]) -> str:
    return re.sub(r"\s+([,.;:!?])", r"\1", " ".join(tokens))


def _relation_at(tokens: list[str], i: int) -> int:
    """Length (in words) of the relation phrase starting at token i, 0 if none."""
    lowered = [t.lower() for t in tokens]
    for phrase in RELATION_PHRASES:
        words = phrase.split()
        if lowered[i : i + len(words)] == words:
            return len(words)
    return 0


def _noun_phrases(tokens: list[str]) -> list[tuple[int, int]]:
    """(start, end) of each determiner-led chunk, ending before the next determiner, relation or stop word."""
    spans, i = [], 0
    while i < len(tokens):
        if tokens[i].lower() in DETERMINERS:
            end = i + 1
            while (end < len(tokens) and tokens[end].lower() not in DETERMINERS | NP_STOP | COPULAS
                   and not _relation_at(tokens, end) and not _verb_like(tokens[end])):
                end += 1
            if end > i + 1:
                spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


def _verb_like(token: str) -> bool:
    """An -ing word ("playing", "sitting") ends a noun phrase: a guess that stands in for a tagger."""
    return token.lower().endswith("ing") and len(token) > 4


def _head(tokens: list[str], span: tuple[int, int]) -> int | None:
    """The head noun of a chunk: its last word that is not an -ing verb or a number (no tagger: a guess)."""
    for k in range(span[1] - 1, span[0], -1):
        if not tokens[k].lower().endswith("ing") and not tokens[k].isdigit():
            return k
    return None


def swap_attributes(caption: str) -> str | None:
    """Swap the first two different words of one attribute class: "a red cube and a blue ball" ->
    "a blue cube and a red ball"."""
    tokens = _tokens(caption)
    for words in ATTRIBUTE_CLASSES:
        found = [i for i, t in enumerate(tokens) if t.lower() in words]
        pair = next(((i, j) for i in found for j in found if j > i and tokens[i].lower() != tokens[j].lower()), None)
        if pair:
            i, j = pair
            tokens[i], tokens[j] = tokens[j], tokens[i]
            return _join(tokens)
    return None


def swap_objects(caption: str) -> str | None:
    """Swap the head nouns of the first two noun phrases: "a red cube and a blue ball" -> "a red ball and a
    blue cube"."""
    tokens = _tokens(caption)
    heads = [h for h in (_head(tokens, s) for s in _noun_phrases(tokens)) if h is not None]
    pair = next(((i, j) for i in heads for j in heads if j > i and tokens[i].lower() != tokens[j].lower()), None)
    if pair is None:
        return None
    i, j = pair
    tokens[i], tokens[j] = tokens[j], tokens[i]
    return _join(tokens)


def swap_relation(caption: str) -> str | None:
    """Swap the noun phrases on either side of the first relation word: "a dog on a couch" -> "a couch on a
    dog"; "the cat is under the table" -> "the table is under the cat"."""
    tokens = _tokens(caption)
    spans = _noun_phrases(tokens)
    for left, right in zip(spans, spans[1:], strict=False):
        between = tokens[left[1] : right[0]]
        words = [t for t in between if t.lower() not in COPULAS and (_relation_at([t], 0) or not _verb_like(t))]
        if words and _relation_at(words, 0) == len(words):
            swapped = tokens[: left[0]] + tokens[right[0] : right[1]] + between + tokens[left[0] : left[1]] \
                + tokens[right[1] :]
            if [t.lower() for t in swapped] != [t.lower() for t in tokens]:
                return _join(swapped)
    return None


HEURISTICS = {"attribute": swap_attributes, "object": swap_objects, "relation": swap_relation}


def scene_objects(scene: dict) -> list[ShapeObject]:
    return [ShapeObject(o["color"], o["shape"], o["size"], o["x"], o["y"]) for o in scene["objects"]]


class HardNegatives:
    """Negatives of one caption of one image: from its shapes-world scene when known, else the heuristic.

    `types`: which of attribute, object, relation; `per_caption`: at most this many, of different types,
    chosen at random (seeded by the sample) among those that apply.
    """

    def __init__(self, types: tuple[str, ...] = NEGATIVE_TYPES, per_caption: int = 1, seed: int = 0,
                 scenes: dict[str, list[ShapeObject]] | None = None,
                 combos: list[tuple[str, str]] | None = None):
        unknown = sorted(set(types) - set(NEGATIVE_TYPES))
        if unknown or not types:
            raise ValueError(f"hard negative types must be among {NEGATIVE_TYPES}, got {list(types)}")
        if per_caption < 1:
            raise ValueError(f"hard negatives per caption must be at least 1, got {per_caption}")
        self.types, self.per_caption, self.seed = tuple(types), per_caption, seed
        self.scenes, self.combos = scenes or {}, combos or all_combos()

    @classmethod
    def for_shapes_world(cls, root: str | Path, split: str, **kwargs) -> HardNegatives:
        """With the scenes of `root`'s `split`, and the colour-shape pairs that split may name."""
        root = Path(root)
        scenes = json.loads((root / f"scenes_{split}.json").read_text())["scenes"]
        held_out = {tuple(c) for c in json.loads((root / "world.json").read_text())["heldout_combos"]}
        combos = all_combos() if split == "heldout" else [c for c in all_combos() if c not in held_out]
        return cls(scenes={s["image"]: scene_objects(s) for s in scenes}, combos=combos, **kwargs)

    def __call__(self, caption: str, image_id: str) -> list[tuple[str, str]]:
        """[(negative caption, type)], each different from `caption`; may be empty."""
        rng = random.Random(f"{self.seed}|{image_id}|{caption}")
        objects = self.scenes.get(image_id)
        if objects is not None:
            kinds = {SHAPES_KIND[t]: t for t in self.types}
            found = [(row["negative_caption"], kinds[row["negative_type"]])
                     for row in make_negatives(objects, self.combos, rng) if row["negative_type"] in kinds]
        else:
            found = [(negative, t) for t in self.types if (negative := HEURISTICS[t](caption))]
        found = list({n: (n, t) for n, t in found if n != caption}.values())  # one of each distinct caption
        rng.shuffle(found)
        return found[: self.per_caption]


class HardNegativeCollator:
    """Wraps a Collator: each batch also carries its captions' hard negatives.

    Keys added: `hard_negative_text` (B, K, T) long and `hard_negative_mask` (B, K, T) bool, K =
    `per_caption`; `hard_negative_valid` (B, K) bool (a caption with fewer negatives is padded with copies
    of itself, marked invalid); `hard_negative_captions` [[str]]. The leading B dimension lets gradient
    accumulation and rank trimming cut them with the rest of the batch.
    """

    def __init__(self, collate, negatives: HardNegatives):
        self.collate, self.negatives = collate, negatives

    def __call__(self, samples) -> dict:
        batch = self.collate(samples)
        captions, k = batch.get("captions", []), self.negatives.per_caption
        found = [[n for n, _ in self.negatives(c, i)] for c, i in zip(captions, batch["image_ids"], strict=True)]
        batch["hard_negative_captions"] = found
        batch["hard_negative_valid"] = torch.tensor([[j < len(f) for j in range(k)] for f in found],
                                                    dtype=torch.bool).reshape(len(found), k)
        padded = [n for c, f in zip(captions, found, strict=True) for n in (f + [c] * k)[:k]]
        ids, mask = self._tokenize(padded)
        batch["hard_negative_text"] = ids.reshape(len(found), k, -1)
        batch["hard_negative_mask"] = mask.reshape(len(found), k, -1)
        return batch

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer = self.collate.tokenizer
        if not texts:
            return torch.zeros(0, 1, dtype=torch.long), torch.zeros(0, 1, dtype=torch.bool)
        ids = tokenizer(texts)
        mask = padding_mask(ids, getattr(tokenizer, "pad_id", 0))
        if self.collate.pad_to_longest:
            ids, mask = cut_padding(ids, mask)
        return ids, mask
