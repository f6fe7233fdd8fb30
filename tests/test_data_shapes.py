"""The shapes world says only true things about its pictures, keeps held-out pairs out, and is reproducible.

The answers are checked by an oracle written here from the scene description (scenes_{split}.json), not
by the generator's own code.
"""

import csv
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

from data_pipelines import eval_transform, generate_shapes_world, open_source
from data_pipelines.shapes.scene import COLORS

PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle", "diamonds": "diamond",
          "crosses": "cross"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_shapes_world(tmp_path_factory.mktemp("shapes"), train=400, val=30, test=30, heldout=60,
                                 image_size=32)


def load_scenes(root, split):
    data = json.loads((root / f"scenes_{split}.json").read_text())
    return data["relation_margin"], {s["image"]: s["objects"] for s in data["scenes"]}


def relation(rel, a, b, margin):
    """'yes' / 'no' when clear, None when too close to call."""
    delta = {"left of": b["x"] - a["x"], "right of": a["x"] - b["x"], "above": b["y"] - a["y"],
             "below": a["y"] - b["y"]}[rel]
    return "yes" if delta >= margin else "no" if delta <= -margin else None


def the_one(objects, **attrs):
    found = [o for o in objects if all(o[k] == v for k, v in attrs.items() if v)]
    assert len(found) == 1, f"{attrs} does not pick out one object in {objects}"
    return found[0]


def oracle_answer(question, objects, margin):
    if m := re.fullmatch(r"is there an? (\w+) (\w+)\?", question):
        return "yes" if any((o["color"], o["shape"]) == m.groups() for o in objects) else "no"
    if question == "how many objects are there?":
        return str(len(objects))
    if m := re.fullmatch(r"how many (\w+) are there\?", question):
        return str(sum(o["shape"] == PLURAL[m[1]] for o in objects))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", question):
        return str(sum(m[1] in (o["color"], o["size"]) for o in objects))
    if m := re.fullmatch(r"what color is the (?:(small|large) )?(\w+)\?", question):
        return the_one(objects, size=m[1], shape=m[2])["color"]
    if m := re.fullmatch(r"what shape is the (?:(small|large) )?(\w+) object\?", question):
        return the_one(objects, size=m[1], color=m[2])["shape"]
    if m := re.fullmatch(r"what size is the (\w+) (\w+)\?", question):
        return the_one(objects, color=m[1], shape=m[2])["size"]
    if m := re.fullmatch(r"is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question):
        a, b = the_one(objects, color=m[1], shape=m[2]), the_one(objects, color=m[4], shape=m[5])
        return relation(m[3], a, b, margin)
    raise AssertionError(f"question the oracle does not know: {question!r}")


def claim_truth(caption, objects, margin):
    """Truth of 'a S C H' or 'a S C H <rel> a S C H' in the scene: 'yes', 'no' or None (unclear)."""
    m = re.fullmatch(r"a (\w+) (\w+) (\w+)(?: (left of|right of|above|below) a (\w+) (\w+) (\w+))?", caption)
    assert m, caption
    matching = [[o for o in objects if (o["size"], o["color"], o["shape"]) == d] for d in (m.groups()[:3],
                                                                                             m.groups()[4:])]
    if not m[4]:
        return "yes" if matching[0] else "no"
    results = {relation(m[4], a, b, margin) for a in matching[0] for b in matching[1] if a is not b}
    return "yes" if "yes" in results else "no" if results <= {"no"} else None


def split_files(root, split):
    return [root / f"pairs_{split}.csv", root / f"vqa_{split}_questions.json", root / f"scenes_{split}.json",
            root / f"compositional_{split}.jsonl"]


def test_same_seed_gives_byte_identical_files(tmp_path):
    small = {"train": 12, "val": 4, "test": 4, "heldout": 4, "image_size": 24}
    a, b = (generate_shapes_world(tmp_path / name, seed=5, **small) for name in ("a", "b"))
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) > 60 and files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    c = generate_shapes_world(tmp_path / "c", seed=6, **small)
    assert (c / "pairs_train.csv").read_bytes() != (a / "pairs_train.csv").read_bytes()


def test_heldout_combinations_never_appear_outside_the_heldout_split(world):
    heldout = [f"{c} {s}" for c, s in json.loads((world / "world.json").read_text())["heldout_combos"]]
    assert len(heldout) == 8
    for split in ("train", "val", "test"):
        for path in split_files(world, split):
            text = path.read_text()
            assert not [h for h in heldout if h in text], f"{path.name} names a held-out pair"
        for name in heldout:
            assert not list((world / f"classify_{split}" / name.replace(" ", "_")).iterdir())
    _, scenes = load_scenes(world, "heldout")
    assert all(any(f"{o['color']} {o['shape']}" in heldout for o in objects) for objects in scenes.values())
    captions = (world / "pairs_heldout.csv").read_text()
    assert sum(h in captions for h in heldout) == 8


def test_vqa_answers_agree_with_the_scene_description(world):
    for split in ("train", "heldout"):
        margin, scenes = load_scenes(world, split)
        ds = open_source(world, split=split, task="vqa")
        families = Counter()
        for sample in ds.records:
            assert len(sample.answers) == 10 and len(set(sample.answers)) == 1
            expected = oracle_answer(sample.question, scenes[sample.image_id], margin)
            assert sample.answers[0] == expected, (sample.image_id, sample.question)
            families[sample.question_family] += 1
            assert sample.answer_type == {"exist": "yes/no", "relation": "yes/no", "count": "number"}.get(
                sample.question_family, "other")
        assert set(families) == {"exist", "count", "query_color", "query_shape", "query_size", "relation"}


def test_answers_are_balanced_within_each_question_family(world):
    ds = open_source(world, split="train", task="vqa")
    by_family = defaultdict(Counter)
    for sample in ds.records:
        by_family[sample.question_family][sample.answers[0]] += 1
    for family, counts in by_family.items():
        top = max(counts.values()) / sum(counts.values())
        if len(counts) == 2:  # yes/no and small/large: balanced means chance, 50%
            assert 0.45 <= top <= 0.55, (family, counts)
        else:
            assert top < 0.25, (family, counts)
            assert len(counts) >= 5


def test_captions_and_hard_negatives_are_true_and_false_as_labelled(world):
    margin, scenes = load_scenes(world, "train")
    with open(world / "pairs_train.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 400 and len({r["image"] for r in rows}) == 400
    for row in rows:
        objects = scenes[row["image"]]
        named = re.findall(r"(small|large) (\w+) (\w+)", row["caption"])
        assert set(named) == {(o["size"], o["color"], o["shape"]) for o in objects}, row  # all, and only them
        for pair in re.findall(r"a (\w+ \w+ \w+) (left of|right of|above|below) a (\w+ \w+ \w+)", row["caption"]):
            assert claim_truth(f"a {pair[0]} {pair[1]} a {pair[2]}", objects, margin) == "yes", row
    comp = [json.loads(line) for line in (world / "compositional_train.jsonl").read_text().splitlines()]
    assert set(Counter(r["negative_type"] for r in comp)) == {"attribute swap", "relation swap", "object replace"}
    for r in comp:
        objects = scenes[r["image"]]
        assert claim_truth(r["caption"], objects, margin) == "yes", r
        assert claim_truth(r["negative_caption"], objects, margin) == "no", r


def test_pictures_show_the_objects_the_scene_file_lists(world):
    _, scenes = load_scenes(world, "val")
    for image_path, objects in scenes.items():
        image = Image.open(world / image_path)
        for o in objects:
            pixel = image.getpixel((int(o["x"] * image.width), int(o["y"] * image.height)))
            assert max(abs(p - q) for p, q in zip(pixel, COLORS[o["color"]], strict=True)) < 40, (image_path, o)


def test_every_view_of_a_split_opens_through_open_source(world):
    pairs = open_source(world, split="val", transform=eval_transform(32))
    assert len(pairs) == 90 and pairs[0].image.shape == (3, 32, 32)
    classify = open_source(world, split="heldout", task="classify")
    assert len(classify.info["classnames"]) == 40 and len(classify.info["templates"]) == 4
    heldout = {tuple(c) for c in json.loads((world / "world.json").read_text())["heldout_combos"]}
    assert {tuple(s.meta["classname"].split()) for s in classify.records} == heldout
    assert all(classify.info["classnames"][s.label] == s.meta["classname"] for s in classify.records)
    comp = open_source(world, split="test", task="compositional")
    assert comp[0].meta["negative_caption"] and comp[0].meta["negative_type"]
    with pytest.raises(ValueError, match="pass split= one of heldout, test, train, val"):
        open_source(world)
    with pytest.raises(ValueError, match="unknown shapes-world task 'captions'"):
        open_source(world, split="val", task="captions")


def test_generation_is_fast_enough_for_the_quickstart(tmp_path):
    import time

    start = time.perf_counter()
    generate_shapes_world(Path(tmp_path), train=300, val=0, test=0, heldout=0)
    assert time.perf_counter() - start < 10  # ~0.5 s on one free core; 5k scenes take seconds
