"""The shapes world: a procedural image-text dataset written in the standard formats, deterministic by seed.

Layout of the output folder (per split: train, val, test, heldout):
    world.json                          the config, colours, shapes, held-out combinations, class names
    images/{split}/{i:06d}.png          scenes of 1-4 objects
    scenes_{split}.json                 what is in each image (the ground truth for every answer)
    pairs_{split}.csv                   image,caption (several phrasings per scene)
    vqa_{split}_questions.json          VQAv2 format (+ an `image` path per question)
    vqa_{split}_annotations.json        VQAv2 format, 10 answers each (+ `question_family`)
    classify_{split}/<color_shape>/     one-object images; classnames.txt, templates.txt
    compositional_{split}.jsonl         image, caption, negative_caption, negative_type
The heldout split's scenes each contain a colour-shape pair that no other split ever shows or names.
"""

from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from data_pipelines.shapes.language import FAMILIES, AnswerBalancer, caption_phrasings, make_negatives, make_questions
from data_pipelines.shapes.render import STYLES, render_scene
from data_pipelines.shapes.scene import (
    COLORS,
    MAX_OBJECTS,
    RELATION_MARGIN,
    SHAPES,
    all_combos,
    choose_heldout_combos,
    sample_scene,
)
from vlm.atomic_io import atomic_write

SPLITS = ("train", "val", "test", "heldout")
TEMPLATES = ("a photo of a {}.", "a {} on a plain background.", "a drawing of a {}.", "a {}.")
QUESTION_ID_STRIDE = 10  # question_id = split offset + scene index * stride + family index


@dataclass(frozen=True)
class ShapesConfig:
    train: int = 2000
    val: int = 500
    test: int = 500
    heldout: int = 500
    image_size: int = 64
    seed: int = 0
    captions_per_image: int = 3
    heldout_combos: int = 8
    classify_per_class: int = 0  # 0: about one image per class for every two scenes of the split


class ShapesWorld:
    """Generates the scenes of every split and writes them; `write(out_dir)` is all most callers need."""

    def __init__(self, config: ShapesConfig = ShapesConfig(), style: str = "default"):
        if not 1 <= config.heldout_combos < len(all_combos()):
            raise ValueError(f"heldout_combos must be between 1 and {len(all_combos()) - 1}")
        if style not in STYLES:
            raise ValueError(f"unknown shapes style {style!r}; choose from {', '.join(STYLES)}")
        self.config, self.style = config, style
        self.heldout = choose_heldout_combos(config.heldout_combos, config.seed)
        self.seen = [c for c in all_combos() if c not in self.heldout]

    def combos(self, split: str) -> list[tuple[str, str]]:
        """The colour-shape pairs a split may show or name."""
        return all_combos() if split == "heldout" else self.seen

    @property
    def classnames(self) -> list[str]:
        """In the sorted order of the class folders, as ImageFolder labels them."""
        return [f"{c} {s}" for c, s in sorted(all_combos(), key=lambda cs: f"{cs[0]}_{cs[1]}")]

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            n = getattr(self.config, split)
            if n > 0:
                self.write_split(out, split, n)
        info = {"config": asdict(self.config), "colors": list(COLORS), "shapes": list(SHAPES),
                "heldout_combos": [list(c) for c in self.heldout], "classnames": self.classnames,
                "templates": list(TEMPLATES), "relation_margin": RELATION_MARGIN,
                "splits": [s for s in SPLITS if getattr(self.config, s) > 0]}
        if self.style != "default":  # the default world's files stay byte-identical to those before styles
            info["style"] = self.style
        _write_text(out / "world.json", json.dumps(info, indent=1, sort_keys=True))
        return out

    def write_split(self, out: Path, split: str, n: int) -> None:
        rng = random.Random(f"{self.config.seed}-{split}")
        combos = self.combos(split)
        must = self.heldout if split == "heldout" else None
        balancer = AnswerBalancer()
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        scenes, pairs, questions, compositional = [], [], [], []
        for i in range(n):
            objects = sample_scene(rng, combos, rng.randint(1, MAX_OBJECTS), must)
            image = f"images/{split}/{i:06d}.png"
            _save_png(render_scene(objects, self.config.image_size, self.style), out / image)
            scenes.append({"image_id": i, "image": image, "objects": [o.to_json() for o in objects]})
            phrasings = caption_phrasings(objects)
            pairs += [(image, c) for c in rng.sample(phrasings, min(self.config.captions_per_image, len(phrasings)))]
            for q in make_questions(objects, combos, balancer, rng):
                questions.append({**q, "image_id": i, "image": image})
            compositional += [{"image": image, **row} for row in make_negatives(objects, combos, rng)]
        self._write_pairs(out / f"pairs_{split}.csv", pairs)
        self._write_vqa(out, split, questions)
        _write_text(out / f"scenes_{split}.json", json.dumps(
            {"split": split, "image_size": self.config.image_size, "relation_margin": RELATION_MARGIN,
             "scenes": scenes}, indent=None, sort_keys=True))
        _write_text(out / f"compositional_{split}.jsonl",
                    "".join(json.dumps(row, sort_keys=True) + "\n" for row in compositional))
        self._write_classify(out / f"classify_{split}", split, n, rng)

    @staticmethod
    def _write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows(pairs)
        _write_text(path, buffer.getvalue())

    def _write_vqa(self, out: Path, split: str, questions: list[dict]) -> None:
        offset = (SPLITS.index(split) + 1) * 10 ** 9
        q_json, a_json = [], []
        for q in questions:
            qid = offset + q["image_id"] * QUESTION_ID_STRIDE + FAMILIES.index(q["family"])
            q_json.append({"question_id": qid, "image_id": q["image_id"], "question": q["question"],
                           "image": q["image"]})
            a_json.append({"question_id": qid, "image_id": q["image_id"], "question_type": q["family"],
                           "question_family": q["family"], "answer_type": q["answer_type"],
                           "multiple_choice_answer": q["answer"],
                           "answers": [{"answer": q["answer"], "answer_confidence": "yes", "answer_id": k}
                                       for k in range(1, 11)]})
        header = {"info": {"description": "vlm shapes world", "seed": self.config.seed}, "license": {},
                  "data_type": "shapes", "data_subtype": split}
        _write_text(out / f"vqa_{split}_questions.json",
                    json.dumps({**header, "task_type": "Open-Ended", "questions": q_json}, sort_keys=True))
        _write_text(out / f"vqa_{split}_annotations.json",
                    json.dumps({**header, "annotations": a_json}, sort_keys=True))

    def _write_classify(self, root: Path, split: str, n_scenes: int, rng: random.Random) -> None:
        """One-object images per class the split may show; every class gets a folder (maybe empty), so
        labels mean the same thing in every split."""
        allowed = self.heldout if split == "heldout" else self.seen
        per_class = self.config.classify_per_class or max(1, n_scenes // (2 * len(allowed)))
        for color, shape in all_combos():
            (root / f"{color}_{shape}").mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            for color, shape in allowed:
                objects = sample_scene(rng, [(color, shape)], 1)
                image = render_scene(objects, self.config.image_size, self.style)
                _save_png(image, root / f"{color}_{shape}" / f"{k:05d}.png")
        _write_text(root / "classnames.txt", "\n".join(self.classnames) + "\n")
        _write_text(root / "templates.txt", "\n".join(TEMPLATES) + "\n")


def _save_png(image, path: Path) -> None:
    image.save(path, format="PNG", optimize=False, compress_level=1)  # tiny images: speed over a few bytes


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def generate_shapes_world(out_dir: str | Path, style: str = "default", **overrides) -> Path:
    """Write a shapes world to `out_dir` (`vlm data shapes`); keyword arguments override ShapesConfig fields.

    `style` draws the same scenes (same seed, same captions and answers) in another look (render.STYLES)."""
    return ShapesWorld(ShapesConfig(**overrides), style).write(out_dir)
