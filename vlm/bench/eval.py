"""`vlm bench eval`: images/s and peak RSS of streaming evaluation at two dataset sizes, to show memory is flat.

It generates its own data in a temporary folder (photo-like 224 px JPEGs, from `vlm bench data`): an ImageFolder
per zero-shot size, a pairs CSV for retrieval (N images x captions_per_image captions), VQA question and
annotation files; and random-init models of the named sizes at that resolution. Each evaluation then runs as the
user would run it, `vlm eval ...` in its own process, and its peak RSS is that process's own (`os.wait4`), so no
run's figure includes another's (`/usr/bin/time -v` reports the same number).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vlm.atomic_io import atomic_write

VQA_ANSWERS = ["yes", "no", "0", "1", "2", "3", "red", "blue", "green", "circle", "square", "photo"]


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="images/s and peak RSS of streaming zero-shot, retrieval and VQA")
    p.add_argument("--zeroshot-images", type=int, nargs="+", default=[4000, 16000], help="ImageFolder sizes")
    p.add_argument("--classes", type=int, default=100, help="zero-shot classes")
    p.add_argument("--retrieval-images", type=int, default=5000)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--hybrid-k", type=int, default=128, help="hybrid re-ranking depth (ALBEF/BLIP on Flickr30k)")
    p.add_argument("--vqa-questions", type=int, default=20000)
    p.add_argument("--vqa-images", type=int, default=4000)
    p.add_argument("--tasks", nargs="+", default=["zeroshot", "retrieval", "hybrid", "vqa"],
                   choices=["zeroshot", "retrieval", "hybrid", "vqa"])
    p.add_argument("--model", default="clip-small", help="late-fusion model (random init)")
    p.add_argument("--early-model", default="fusion-small", help="early-fusion model for hybrid (random init)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--patch-size", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="decoding workers; zero-shot runs once per value (default: one per core, at most 8)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--work-dir", type=Path, default=None, help="keep the generated data here (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    p.set_defaults(func=cmd_bench_eval)


def make_pool(out: Path, n: int, size: int) -> list[str]:
    """`n` photo-like JPEGs of size x size; their paths relative to `out`."""
    from vlm.bench.data import make_photo_like_jpegs

    if not (out / "pool" / "pairs.csv").is_file() or len(list((out / "pool").glob("*.jpg"))) < n:
        make_photo_like_jpegs(out / "pool", n, (size, size))
    return [f"pool/{i:06d}.jpg" for i in range(n)]


def make_imagefolder(out: Path, pool: list[str], n: int, classes: int) -> Path:
    root = out / f"imagefolder_{n}"
    for c in range(classes):
        (root / f"class_{c:04d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        link = root / f"class_{i % classes:04d}" / f"{i:06d}.jpg"
        if not link.exists():
            link.symlink_to((out / pool[i]).resolve())
    (root / "templates.txt").write_text("a photo of a {}.\nan image of a {}.\n")
    return root


def make_pairs(out: Path, pool: list[str], images: int, captions_per_image: int) -> Path:
    import csv

    path = out / f"pairs_{images}x{captions_per_image}.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        for i in range(images):
            for j in range(captions_per_image):
                writer.writerow([pool[i], f"photo {i} seen the {j}th way, smooth colours and some noise"])
    return path


def make_vqa(out: Path, pool: list[str], questions: int, images: int) -> Path:
    rng = np.random.default_rng(0)
    qs, anns = [], []
    for q in range(questions):
        image = q % images
        qs.append({"question_id": q, "image_id": image, "image": pool[image], "question": f"what is thing {q % 97}?"})
        answers = rng.choice(VQA_ANSWERS, 10).tolist()
        anns.append({"question_id": q, "image_id": image, "answer_type": "other", "multiple_choice_answer": answers[0],
                     "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]})
    (out / f"vqa_{questions}_annotations.json").write_text(json.dumps({"annotations": anns}))
    path = out / f"vqa_{questions}_questions.json"
    path.write_text(json.dumps({"questions": qs}))
    return path


def make_models(out: Path, args: argparse.Namespace) -> dict[str, Path]:
    import vlm

    late = [f"image.image_size={args.image_size}", f"image.patch_size={args.patch_size}"]
    early = [f"image_size={args.image_size}", f"patch_size={args.patch_size}"]
    paths = {"late": out / "late.pt", "early": out / "early.pt", "late_vqa": out / "late_vqa.pt"}
    vlm.create_model(args.model, late).save(paths["late"])
    vlm.create_model(args.early_model, early).save(paths["early"])
    vlm.create_model(args.model, [*late, f"vqa_answers={json.dumps(VQA_ANSWERS)}"]).save(paths["late_vqa"])
    return paths


# Linux carries a process's peak RSS across exec, so a child forked from this (torch-sized) process would
# report at least this process's RSS. A bare interpreter forks the command instead and reports its wait4.
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss, os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(command: list[str]) -> float:
    """Run `command`; its own peak RSS in MB (`os.wait4` reports the child just reaped, not every child so far
    as `getrusage(RUSAGE_CHILDREN)` would). Raises with the end of its stderr when it fails."""
    with tempfile.TemporaryFile() as err:
        done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, *command], stdout=subprocess.PIPE,
                              stderr=err, text=True, check=True)
        kilobytes, code = map(int, done.stdout.split())
        if code != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {err.read().decode()[-2000:]}")
    return kilobytes / 1024  # Linux: kilobytes


def run_measured(argv: list[str], out_json: Path) -> dict:
    """`vlm ARGV` in its own process: its result JSON, wall seconds and peak RSS."""
    start = time.perf_counter()
    peak = peak_rss_mb([sys.executable, "-m", "vlm.cli", *argv, "--json", str(out_json)])
    result = json.loads(out_json.read_text())
    result["process_wall_s"] = time.perf_counter() - start
    result["peak_rss_mb"] = peak
    return result


def _row(workload: str, size: str, workers: int, result: dict, unit_count: int, unit: str) -> dict:
    seconds = result["wall_time_s"]
    return {"workload": workload, "size": size, "workers": workers, unit: unit_count,
            f"{unit}_per_s": unit_count / seconds if seconds else None, "eval_s": seconds,
            "process_s": result["process_wall_s"], "peak_rss_mb": result["peak_rss_mb"]}


def bench_eval(args: argparse.Namespace, work: Path) -> list[dict]:
    from vlm.eval.stream import default_workers

    workers = args.workers or [default_workers()]
    sizes = sorted(args.zeroshot_images) if "zeroshot" in args.tasks else []
    need = max([*sizes, args.retrieval_images, args.vqa_images])
    pool, models = make_pool(work, need, args.image_size), make_models(work, args)
    common = ["--batch-size", str(args.batch_size)]
    rows = []
    for n in sizes:
        folder = make_imagefolder(work, pool, n, args.classes)
        for w in workers:
            r = run_measured(["eval", "zeroshot", "--checkpoint", str(models["late"]), "--data", str(folder),
                              "--workers", str(w), *common], work / "result.json")
            rows.append(_row("zeroshot late", f"{n} images", w, r, r["images"], "images"))
    pairs = make_pairs(work, pool, args.retrieval_images, args.captions_per_image)
    size = f"{args.retrieval_images} x {args.retrieval_images * args.captions_per_image}"
    for task, extra in (("retrieval", ["--checkpoint", str(models["late"])]),
                        ("hybrid", ["--checkpoint", str(models["early"]), "--rerank-from", str(models["late"]),
                                    "--k", str(args.hybrid_k)])):
        if task in args.tasks:
            r = run_measured(["eval", "retrieval", *extra, "--data", str(pairs), "--workers", str(workers[-1]),
                              *common], work / "result.json")
            name = "retrieval late" if task == "retrieval" else f"retrieval hybrid k={args.hybrid_k}"
            rows.append(_row(name, size, workers[-1], r, r["images"], "images"))
    if "vqa" in args.tasks:
        questions = make_vqa(work, pool, args.vqa_questions, args.vqa_images)
        r = run_measured(["eval", "vqa", "--checkpoint", str(models["late_vqa"]), "--data", str(questions),
                          "--workers", str(workers[-1]), *common], work / "result.json")
        rows.append(_row("vqa late", f"{args.vqa_questions} q / {args.vqa_images} img", workers[-1], r,
                         r["questions"], "questions"))
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| workload | size | workers | items/s | eval s | peak RSS MB |", "|---|---|---|---|---|---|"]
    for r in rows:
        rate = r.get("images_per_s") or r.get("questions_per_s")
        unit = "images" if "images_per_s" in r else "questions"
        lines.append(f"| {r['workload']} | {r['size']} | {r['workers']} | {rate:,.1f} {unit}/s | "
                     f"{r['eval_s']:.1f} | {r['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def cmd_bench_eval(args: argparse.Namespace) -> int:
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        rows = bench_eval(args, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="vlm-bench-eval-") as tmp:
            rows = bench_eval(args, Path(tmp))
    print(format_rows(rows))
    if args.json is not None:
        with atomic_write(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0
