"""Every loader reads back what a tiny hand-made dataset holds; bad input is skipped, counted or refused."""

import io
import json
import tarfile

import pytest
import torch
from PIL import Image

from data_pipelines import (
    Collator,
    Sample,
    ShardDataset,
    SkipStats,
    TooManyBadSamples,
    answer_targets,
    build_answer_vocab,
    detect_format,
    eval_transform,
    open_source,
    train_transform,
    write_shards,
)
from data_pipelines.transforms import IMAGE_MEAN, IMAGE_STD
from vlm.tokenizer import Tokenizer

COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]


def save_image(path, color, size=(40, 32), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def jpeg_bytes(color, size=(40, 32)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def center_pixel(tensor):
    """Undo the normalisation at the centre pixel -> RGB in 0..255."""
    mean, std = torch.tensor(IMAGE_MEAN), torch.tensor(IMAGE_STD)
    h, w = tensor.shape[1:]
    return ((tensor[:, h // 2, w // 2] * std + mean) * 255).round().tolist()


def loader(dataset, batch_size=4, workers=0, **collator_args):
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                       collate_fn=Collator(Tokenizer(16), **collator_args))


@pytest.fixture
def csv_dataset(tmp_path):
    for i, color in enumerate(COLORS[:3]):
        save_image(tmp_path / "imgs" / f"{i}.png", color)
    (tmp_path / "pairs.csv").write_text(
        "image,caption\nimgs/0.png,a red picture\nimgs/1.png,a green picture\nimgs/2.png,\"a blue, plain picture\"\n")
    return tmp_path / "pairs.csv"


def test_csv_pairs_read_back_every_field(csv_dataset):
    ds = open_source(csv_dataset, transform=eval_transform(16))
    assert detect_format(csv_dataset) == "csv" and len(ds) == 3
    s = ds[2]
    assert s.caption == "a blue, plain picture" and s.image_id == "imgs/2.png"
    assert s.image.shape == (3, 16, 16) and center_pixel(s.image) == [0, 0, 255]
    assert (s.label, s.question, s.answers) == (None, None, None)
    batch = next(iter(loader(ds, batch_size=3)))
    assert batch["captions"] == ["a red picture", "a green picture", "a blue, plain picture"]
    assert batch["images"].shape == (3, 3, 16, 16) and batch["text"].shape == (3, 16)
    assert batch["text"].dtype == torch.long and batch["text_mask"].dtype == torch.bool
    assert batch["text_mask"][0].sum() == len(Tokenizer(16)("a red picture")[0].nonzero())
    assert batch["image_ids"] == ["imgs/0.png", "imgs/1.png", "imgs/2.png"] and batch["skipped"] == {}


def test_tsv_with_other_column_names(tmp_path):
    save_image(tmp_path / "a.jpg", COLORS[0], fmt="JPEG")
    save_image(tmp_path / "b.jpg", COLORS[1], fmt="JPEG")
    (tmp_path / "data.tsv").write_text("title\tfilepath\tid\na red, \"quoted\" one\ta.jpg\tx1\ngreen\tb.jpg\tx2\n")
    ds = open_source(tmp_path / "data.tsv", image_column="filepath", caption_column="title", id_column="id")
    assert ds.format == "tsv"
    assert [(s.caption, s.image_id) for s in ds.records] == [('a red, "quoted" one', "x1"), ("green", "x2")]
    assert ds[1].image.size == (40, 32)


def test_jsonl_pairs_with_several_captions_and_extra_fields(tmp_path):
    save_image(tmp_path / "a.png", COLORS[0])
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": ["one", "two"], "src": 7}) + "\n")
    ds = open_source(tmp_path / "pairs.jsonl")
    assert [(s.caption, s.image_id, s.meta) for s in ds.records] == [("one", "a.png", {"src": 7}),
                                                                     ("two", "a.png", {"src": 7})]


def test_csv_missing_its_caption_column_names_the_file_and_column(tmp_path):
    save_image(tmp_path / "a.png", COLORS[0])
    (tmp_path / "pairs.csv").write_text("image,text\na.png,hello\n")
    with pytest.raises(ValueError, match=r"pairs\.csv: no column 'caption' \(columns: image, text\)"):
        open_source(tmp_path / "pairs.csv")


def test_corrupt_jpeg_and_missing_file_are_skipped_and_counted(tmp_path):
    for i in range(6):
        save_image(tmp_path / f"{i}.jpg", COLORS[i], fmt="JPEG")
    good = (tmp_path / "0.jpg").read_bytes()
    (tmp_path / "1.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "2.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg at all")  # corrupt
    rows = "".join(f"{i}.jpg,picture {i}\n" for i in range(6)) + "gone.jpg,missing file\n3.jpg,\n"
    (tmp_path / "pairs.csv").write_text("image,caption\n" + rows)
    ds = open_source(tmp_path / "pairs.csv", transform=eval_transform(16), max_bad_fraction=0.7)
    assert len(ds) == 6 and ds.stats.skipped == {"missing image": 1, "empty caption": 1}
    assert "gone.jpg" in ds.stats.examples[0] and "line 8" in ds.stats.examples[0]
    assert ds[1].image is None and ds[1].meta["skip_reason"] == "corrupt image"

    stats = SkipStats(max_bad_fraction=0.7)
    batches = list(stats.watch(loader(ds, batch_size=3, workers=1)))  # a worker process must not crash
    kept = [c for b in batches for c in b["captions"]]
    assert kept == ["picture 0", "picture 3", "picture 4", "picture 5"]
    assert stats.skipped == {"corrupt image": 2} and stats.seen == 6
    assert "skipped 2 of 6" in stats.report()


def test_more_bad_samples_than_max_bad_fraction_is_a_clear_error(tmp_path):
    save_image(tmp_path / "a.png", COLORS[0])
    (tmp_path / "pairs.csv").write_text("image,caption\na.png,ok\nb.png,lost\n")
    with pytest.raises(TooManyBadSamples, match=r"pairs\.csv: 1 of 2 samples are bad \(missing image: 1\)"):
        open_source(tmp_path / "pairs.csv")


def test_decompression_bomb_is_refused_and_counted(tmp_path):
    save_image(tmp_path / "big.png", COLORS[0], size=(64, 64))
    (tmp_path / "pairs.csv").write_text("image,caption\nbig.png,huge\n")
    ds = open_source(tmp_path / "pairs.csv", max_pixels=1000)
    sample = ds[0]
    assert sample.image is None and sample.meta["skip_reason"] == "too many pixels"
    assert "decompression bomb" in sample.meta["skip_detail"]


def write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_webdataset_shard_written_by_tarfile_reads_back(tmp_path):
    write_tar(tmp_path / "00000.tar", [
        ("000000000.jpg", jpeg_bytes(COLORS[0])), ("000000000.txt", b"a red square"),
        ("000000000.json", json.dumps({"key": "000000000", "url": "http://x/r.jpg"}).encode()),
        ("000000001.png", (lambda b: (Image.new("RGB", (8, 8), COLORS[2]).save(b, "PNG"), b.getvalue())[1])(
            io.BytesIO())), ("000000001.txt", "a blue square \u2713".encode()),
        ("000000002.jpg", b"garbage"), ("000000002.txt", b"broken image"),
        ("000000003.jpg", jpeg_bytes(COLORS[1])), ("000000003.txt", b"  "),
    ])
    ds = open_source(tmp_path, transform=eval_transform(8))
    assert isinstance(ds, ShardDataset) and detect_format(tmp_path / "00000.tar") == "webdataset"
    samples = list(ds)
    good = [s for s in samples if s.image is not None]
    assert [(s.image_id, s.caption) for s in good] == [("000000000", "a red square"),
                                                       ("000000001", "a blue square \u2713")]
    assert good[0].meta["url"] == "http://x/r.jpg" and center_pixel(good[1].image) == [0, 0, 255]
    assert ds.stats.skipped == {"corrupt image": 1, "empty caption": 1}
    batch = Collator(Tokenizer(16))(samples)
    assert batch["skipped"] == {"corrupt image": 1, "empty caption": 1} and batch["images"].shape[0] == 2


def make_shards(root, n_shards=4, per_shard=3):
    for k in range(n_shards):
        write_tar(root / f"{k:05d}.tar", [m for i in range(per_shard) for m in (
            (f"{k:05d}{i:04d}.jpg", jpeg_bytes(COLORS[i])), (f"{k:05d}{i:04d}.txt", f"shard {k} item {i}".encode()))])
    return sorted(f"shard {k} item {i}" for k in range(n_shards) for i in range(per_shard))


def test_webdataset_splits_across_workers_and_ranks(tmp_path, monkeypatch):
    everything = make_shards(tmp_path)
    ds = ShardDataset(tmp_path, transform=eval_transform(8), shuffle=True, shuffle_buffer=5, seed=3)
    seen = [c for b in loader(ds, batch_size=2, workers=2) for c in b["captions"]]
    assert sorted(seen) == everything  # each sample once across the two workers
    two_passes = [[s.caption for s in ds] for _ in range(2)]
    assert two_passes[0] != two_passes[1] and sorted(two_passes[0]) == sorted(two_passes[1]) == everything
    per_rank = []
    for rank in range(2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        per_rank.append({s.caption for s in ShardDataset(tmp_path, shuffle=True, seed=3)})
    assert per_rank[0].isdisjoint(per_rank[1]) and sorted(per_rank[0] | per_rank[1]) == everything
    assert len(per_rank[0]) == 6


def test_shard_writer_round_trip_keeps_pairs_and_image_bytes(tmp_path, csv_dataset):
    paths, stats = write_shards(open_source(csv_dataset), tmp_path / "shards", shard_size=2)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar"] and stats.seen == 3
    assert ShardDataset(tmp_path / "shards").num_samples == 3
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames() == ["000000000.png", "000000000.txt", "000000000.json",
                                  "000000001.png", "000000001.txt", "000000001.json"]
        assert tar.extractfile("000000000.png").read() == (csv_dataset.parent / "imgs/0.png").read_bytes()
    back = list(open_source(tmp_path / "shards", transform=eval_transform(16)))
    assert [(s.image_id, s.caption) for s in back] == [("imgs/0.png", "a red picture"),
                                                       ("imgs/1.png", "a green picture"),
                                                       ("imgs/2.png", "a blue, plain picture")]


def test_coco_captions_json_reads_back(tmp_path):
    save_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg", COLORS[0], fmt="JPEG")
    data = {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
            "annotations": [{"image_id": 42, "id": 1, "caption": "A red thing. "},
                            {"image_id": 42, "id": 2, "caption": "Something red."}]}
    (tmp_path / "captions.json").write_text(json.dumps(data))
    ds = open_source(tmp_path / "captions.json", image_root=tmp_path / "val2014")
    assert ds.format == "coco"
    assert [(s.image_id, s.caption, s.meta["annotation_id"]) for s in ds.records] == [
        ("42", "A red thing.", 1), ("42", "Something red.", 2)]
    assert ds[0].image.size == (40, 32)


def test_karpathy_json_selects_the_split_and_train_includes_restval(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        save_image(tmp_path / "imgs" / name, COLORS[0], fmt="JPEG")
    images = [{"filename": f, "filepath": "imgs", "imgid": i, "split": split, "sentences": [{"raw": f"cap {f}"}]}
              for i, (f, split) in enumerate([("a.jpg", "train"), ("b.jpg", "restval"), ("c.jpg", "test")])]
    (tmp_path / "dataset_flickr.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    train = open_source(tmp_path / "dataset_flickr.json", split="train")
    test = open_source(tmp_path / "dataset_flickr.json", split="test")
    assert train.format == "karpathy" and [s.caption for s in train.records] == ["cap a.jpg", "cap b.jpg"]
    assert [(s.image_id, s.caption) for s in test.records] == [("2", "cap c.jpg")]


def test_vqav2_pair_reads_back_with_answers_vocab_and_soft_targets(tmp_path):
    save_image(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg", COLORS[0], fmt="JPEG")
    questions = {"data_subtype": "val2014", "questions": [
        {"question_id": 70, "image_id": 7, "question": "What color is it?"},
        {"question_id": 71, "image_id": 7, "question": "Is it red?"}]}
    answers = [["red"] * 8 + ["Orange", "orange"], ["yes"] * 10]
    annotations = {"annotations": [
        {"question_id": 70 + i, "image_id": 7, "answer_type": t, "multiple_choice_answer": a[0],
         "answers": [{"answer": x, "answer_id": j + 1} for j, x in enumerate(a)]}
        for i, (a, t) in enumerate(zip(answers, ["other", "yes/no"], strict=True))]}
    (tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (tmp_path / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))
    ds = open_source(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", transform=eval_transform(8))
    s = ds[0]
    assert (s.question_id, s.image_id, s.question, s.answer_type) == (70, "7", "What color is it?", "other")
    assert s.answers == answers[0] and s.caption is None and s.image.shape == (3, 8, 8)
    vocab = build_answer_vocab(ds)
    assert vocab == ["red", "yes"]
    targets = answer_targets([answers[0], ["orange"] + ["red"] * 3, ["blue"] * 10], ["orange", "red"])
    assert torch.allclose(targets, torch.tensor([[0.6, 1.0], [0.3, 0.9], [0.0, 0.0]]))
    batch = next(iter(loader(ds, batch_size=2, answer_vocab=["yes", "red"])))
    assert batch["question_text"] == ["What color is it?", "Is it red?"] and batch["question_ids"] == [70, 71]
    assert batch["answer_types"] == ["other", "yes/no"] and batch["answer_targets"].tolist() == [[0, 1], [1, 0]]
    assert batch["questions"].shape == (2, 16) and "text" not in batch


def test_imagefolder_with_class_names_and_templates(tmp_path):
    save_image(tmp_path / "cat_red" / "1.png", COLORS[0])
    save_image(tmp_path / "dog_blue" / "1.png", COLORS[2])
    save_image(tmp_path / "dog_blue" / "2.png", COLORS[2])
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "classnames.txt").write_text("red cat\nblue dog\nnothing yet\n")  # sorted folder order
    (tmp_path / "templates.txt").write_text("a photo of a {}.\nart of a {}.\n")
    ds = open_source(tmp_path, transform=eval_transform(8))
    assert ds.format == "imagefolder" and ds.info["classnames"] == ["red cat", "blue dog", "nothing yet"]
    assert ds.info["templates"] == ["a photo of a {}.", "art of a {}."]
    assert [(s.label, s.meta["classname"]) for s in ds.records] == [(0, "red cat"), (1, "blue dog"), (1, "blue dog")]
    assert next(iter(loader(ds, batch_size=3)))["labels"].tolist() == [0, 1, 1]


@pytest.mark.parametrize("content, message", [
    ({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]},
     r"bad\.json: missing field 'annotations\[0\]\.caption'"),
    ({"images": [{"id": "one", "file_name": "a.jpg"}], "annotations": []},
     r"bad\.json: field 'images\[0\]\.id' should be a int, got str"),
    ({"questions": {"question_id": 1}}, r"bad\.json: field 'questions' should be a list, got dict"),
    ([1, 2], r"bad\.json: JSON is neither COCO"),
])
def test_wrong_json_shape_names_the_file_and_field(tmp_path, content, message):
    (tmp_path / "bad.json").write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        open_source(tmp_path / "bad.json")


def test_collator_pads_to_longest_caption_when_asked():
    samples = [Sample(torch.zeros(3, 4, 4), "a", caption="short"),
               Sample(torch.zeros(3, 4, 4), "b", caption="a somewhat longer caption here")]
    full = Collator(Tokenizer(32))(samples)
    trimmed = Collator(Tokenizer(32), pad_to_longest=True)(samples)
    longest = int(full["text_mask"].sum(1).max())
    assert full["text"].shape == (2, 32) and trimmed["text"].shape == (2, longest)
    assert torch.equal(trimmed["text"], full["text"][:, :longest])
    with pytest.raises(ValueError, match="mixes samples with and without a caption"):
        Collator(Tokenizer(32))([samples[0], Sample(torch.zeros(3, 4, 4), "c", label=1)])


def test_train_transform_does_not_flip_by_default(tmp_path):
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 64))  # left half red
    torch.manual_seed(0)
    for transform in [train_transform(32)] * 20:
        out = transform(image)
        assert out.shape == (3, 32, 32) and out[0, :, :8].mean() > out[0, :, -8:].mean()
    torch.manual_seed(0)
    flipped = [train_transform(32, hflip=True)(image)[0, :, :8].mean() < 0 for _ in range(20)]
    assert any(flipped)
    assert eval_transform(24)(Image.new("RGB", (50, 30))).shape == (3, 24, 24)


def test_normalisation_matches_torchvision_to_tensor_and_normalize():
    from torchvision import transforms as T

    from data_pipelines.transforms import ToNormalizedTensor

    image = Image.effect_noise((37, 23), 60).convert("RGB")
    reference = T.Compose([T.ToTensor(), T.Normalize(IMAGE_MEAN, IMAGE_STD)])(image)
    ours = ToNormalizedTensor()(image)
    assert ours.shape == (3, 23, 37) and ours.dtype == torch.float32 and ours.is_contiguous()
    assert torch.allclose(ours, reference, atol=1e-5)


def test_a_truncated_shard_is_counted_and_the_stream_goes_on(tmp_path):
    everything = make_shards(tmp_path, n_shards=2, per_shard=3)
    data = (tmp_path / "00000.tar").read_bytes()
    (tmp_path / "00000.tar").write_bytes(data[:5820])  # cut inside the third image (its data is at 5632-6285)
    ds = ShardDataset(tmp_path, transform=eval_transform(8))
    captions = [s.caption for s in ds if s.image is not None]
    assert set(everything[3:]) <= set(captions) and len(captions) < len(everything)
    assert ds.stats.skipped["corrupt shard"] >= 1 and "00000.tar" in ds.stats.examples[0]


def test_large_jpegs_decode_at_a_reduced_scale_but_never_below_the_transform_needs(tmp_path):
    from data_pipelines import decode_image

    buffer = io.BytesIO()
    Image.new("RGB", (1000, 800), (10, 200, 30)).save(buffer, format="JPEG")
    assert decode_image(buffer.getvalue()).size == (1000, 800)
    assert decode_image(buffer.getvalue(), min_size=224).size == (500, 400)  # libjpeg's 1/2 scale
    assert decode_image(buffer.getvalue(), min_size=450).size == (1000, 800)  # 1/2 would be under 450 px
    assert train_transform(224).decode_size == 237 and eval_transform(224).decode_size == 224
    save_image(tmp_path / "big.jpg", (10, 200, 30), size=(1000, 800), fmt="JPEG")
    (tmp_path / "pairs.csv").write_text("image,caption\nbig.jpg,green\n")
    sample = open_source(tmp_path / "pairs.csv", transform=eval_transform(224))[0]
    assert sample.image.shape == (3, 224, 224)
    assert all(abs(a - b) <= 3 for a, b in zip(center_pixel(sample.image), (10, 200, 30), strict=True))


def test_a_source_with_too_many_corrupt_images_stops_early_with_a_clear_error(tmp_path):
    for i in range(300):
        (tmp_path / f"{i}.jpg").write_bytes(b"\xff\xd8 broken" if i % 10 == 0 else jpeg_bytes(COLORS[0], (4, 4)))
    (tmp_path / "pairs.csv").write_text("image,caption\n" + "".join(f"{i}.jpg,c {i}\n" for i in range(300)))
    ds = open_source(tmp_path / "pairs.csv", transform=eval_transform(4))  # files exist: opening is fine
    read = []
    with pytest.raises(TooManyBadSamples, match=r"pairs\.csv: 4 of 300 samples are bad \(corrupt image: 4\)"):
        for i in range(len(ds)):
            read.append(ds[i])
    assert len(read) == 30  # stops as soon as the limit is certainly passed (1% of 300), not at the end


def test_jsonl_without_the_id_field_it_was_told_to_use_names_the_file_and_option(tmp_path):
    save_image(tmp_path / "a.png", COLORS[0])
    (tmp_path / "pairs.jsonl").write_text(json.dumps({"image": "a.png", "caption": "one"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs\.jsonl line 1: no field 'uid' .*id_column"):
        open_source(tmp_path / "pairs.jsonl", id_column="uid")
