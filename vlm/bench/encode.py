"""`vlm bench encode`: images/s and texts/s of vlm's encoder against OpenCLIP's, the same weights, one process.

vlm runs its real path (`vlm.index.encoder.Encoder`, what `vlm index build` and `vlm serve` embed with: texts
tokenized, batched by length, each batch run to its last end-of-text). OpenCLIP runs the model it builds from
vlm's export (`open_clip.create_model("local-dir:...")`), eager float32, texts padded to the context as its
tokenizer pads them. Rounds are interleaved (vlm, OpenCLIP, ...) and each side reports its median round; a
float32 matmul ceiling measured in the same run puts the achieved GFLOP/s in proportion. The accuracy check
compares vlm's embeddings with OpenCLIP's; with `--checkpoint` and `--data` (a shapes world) zero-shot acc1 and
retrieval R@1 at `--precision` are reported next to fp32's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "int8", "auto", "onnx")  # onnx: `vlm export onnx`'s float32 graphs on ONNX Runtime


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="images/s and texts/s of vlm's encoder vs OpenCLIP's (same weights)")
    p.add_argument("--model", default="clip-base32", help="late-fusion model name, random init (default: %(default)s)")
    p.add_argument("--checkpoint", type=Path, help="a late-fusion checkpoint instead of --model")
    p.add_argument("--data", type=Path, help="a shapes world: its val captions; with --checkpoint also zero-shot "
                   "acc1 and retrieval R@1 at --precision vs fp32 (default: a small world generated here)")
    p.add_argument("--against", choices=["openclip"], default="openclip")
    add_precision_arguments(p, "OpenCLIP")
    p.add_argument("--batch-size", type=int, default=16, help="images per round")
    p.add_argument("--texts", type=int, default=64, help="captions per round, per caption mix")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; each side reports its median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(func=cmd_bench_encode)


def add_precision_arguments(p: argparse.ArgumentParser, reference: str) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help=f"both sides' precision: bf16 runs {reference} under CPU autocast too (as OpenCLIP's "
                        f"amp_bf16), int8 and onnx are vlm's only ({reference}: fp32); auto: vlm's choice on this "
                        "CPU. Each side is also timed at fp32, for its own speed-up")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile vlm's bf16 or int8 copy (inductor, frozen weights); compile time not counted. "
                        "Without it, what the commands do: late fusion's int8 image tower compiles from clip-base32 "
                        "up, the rest stays eager")


def at_precision(model, precision: str, compile: bool = False):
    """`model` for inference at `precision` (vlm.models.precision); fp32 is the model itself."""
    if precision == "fp32":
        return model
    from vlm.models.precision import with_precision

    return with_precision(model, precision, compile=compile or None)  # None: the commands' default


def reference_context(precision: str):
    """The reference side's context: CPU autocast at bf16 (OpenCLIP's amp_bf16), else float32."""
    from vlm.models.precision import autocast

    return autocast("bf16" if precision == "bf16" else "fp32")


def own_speedups(rows: list[dict], precision: str) -> str:
    """A line per workload: each side at `precision` against its own fp32 (rows with `*_vs_own_fp32`)."""
    lines = [f"{r['workload']}: vlm {r['vlm_vs_own_fp32']:.2f}x, reference {r['reference_vs_own_fp32']:.2f}x"
             for r in rows if "vlm_vs_own_fp32" in r]
    return (f"\n\n{precision} against each side's own fp32:\n" + "\n".join(lines)) if lines else ""


class OnnxEncoder:
    """A late-fusion export (`vlm export onnx`) run by ONNX Runtime, called as `vlm.index.encoder.Encoder` is:
    texts tokenized and cut after the batch's longest real token, as vlm's encoder cuts them."""

    def __init__(self, folder: str | Path, tokenizer, threads: int | None = None):
        import onnxruntime
        import torch

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        folder = Path(folder)
        self.image, self.text = (onnxruntime.InferenceSession(str(folder / name), options,
                                                              providers=["CPUExecutionProvider"])
                                 for name in ("image_encoder.onnx", "text_encoder.onnx"))
        self.tokenizer = tokenizer

    def encode_pixels(self, pixels):
        import torch

        return torch.from_numpy(self.image.run(None, {"images": pixels.numpy()})[0])

    def encode_texts(self, captions: list[str]):
        import torch

        from vlm.tokenizer import cut_padding, padding_mask

        ids = self.tokenizer(captions)
        ids, _ = cut_padding(ids, padding_mask(ids, getattr(self.tokenizer, "pad_id", 0)))
        return torch.from_numpy(self.text.run(None, {"text": ids.numpy()})[0])


def onnx_encoder(model, folder: Path):
    """vlm's ONNX export of `model` (vlm/models/onnx_export.py) on ONNX Runtime, with this process's threads."""
    from vlm.models.onnx_export import export_onnx
    from vlm.tokenizer import get_tokenizer

    export_onnx(model, folder, check=False)
    return OnnxEncoder(folder, get_tokenizer(model))


def openclip_twin(model, folder: Path):
    """OpenCLIP's own model built from vlm's export of `model` (the same weights), in eval mode."""
    import open_clip

    from vlm.models.openclip_compat import export_openclip

    export_openclip(model, folder)
    return open_clip.create_model(f"local-dir:{folder}").eval()


def agreement(ours, theirs) -> dict[str, float]:
    """Max abs difference and smallest cosine of two sets of normalised embeddings, row by row."""
    import torch
    import torch.nn.functional as F

    ours, theirs = torch.as_tensor(ours).float(), torch.as_tensor(theirs).float()
    cosine = (F.normalize(ours, dim=-1) * F.normalize(theirs, dim=-1)).sum(-1)
    return {"max_abs_diff": float((ours - theirs).abs().max()), "min_cosine": float(cosine.min())}


def workloads(args: argparse.Namespace, model) -> dict[str, tuple[str, object]]:
    """name -> (kind, input): a batch of images and the two caption mixes."""
    import torch

    from vlm.bench.inputs import coco_like_captions, shapes_captions
    from vlm.models import image_size

    generator = torch.Generator().manual_seed(args.seed)
    size = image_size(model)
    pixels = torch.randn(args.batch_size, 3, size, size, generator=generator)
    return {f"images {size} px, batch {args.batch_size}": ("image", pixels),
            f"texts, shapes val captions x {args.texts}": ("text", shapes_captions(args.texts, args.data)),
            f"texts, COCO-like 8-30 tokens x {args.texts}": ("text", coco_like_captions(args.texts, args.seed))}


def bench_encode(args: argparse.Namespace, model, reference, inputs: dict[str, tuple[str, object]]) -> list[dict]:
    """Both sides of every workload (`workloads`), interleaved; one row per workload."""
    from statistics import median

    import open_clip
    import torch

    from vlm.bench.timing import count_flops, interleaved_seconds, rate
    from vlm.index.encoder import Encoder

    fp32 = Encoder(model)
    if args.precision == "onnx":
        ours = onnx_encoder(model, args.onnx_dir)
    else:
        ours = Encoder(at_precision(model, args.precision, args.compile))
    context = model.config.text.context_length

    def theirs_text(captions, precision=args.precision):  # as open_clip's users call it: padded to the context
        with torch.no_grad(), reference_context(precision):
            return reference.encode_text(open_clip.tokenize(captions, context_length=context), normalize=True).float()

    def theirs_image(pixels, precision=args.precision):
        with torch.no_grad(), reference_context(precision):
            return reference.encode_image(pixels, normalize=True).float()

    runs, work, own = {}, {}, args.precision not in ("fp32", "onnx")  # own: also each side at fp32
    for name, (kind, x) in inputs.items():
        mine = ours.encode_pixels if kind == "image" else ours.encode_texts
        other = theirs_image if kind == "image" else theirs_text
        runs[f"vlm|{name}"], runs[f"ref|{name}"] = (lambda f=mine, x=x: f(x)), (lambda f=other, x=x: f(x))
        fp32_call = fp32.encode_pixels if kind == "image" else fp32.encode_texts
        if own:
            runs[f"vlm32|{name}"] = lambda f=fp32_call, x=x: f(x)
            runs[f"ref32|{name}"] = lambda f=other, x=x: f(x, "fp32")
        work[name] = (len(x), count_flops(lambda f=fp32_call, x=x: f(x)), count_flops(lambda f=other, x=x: f(x)),
                      agreement(mine(x), other(x)))
    seconds = interleaved_seconds(runs, args.rounds)
    rows = []
    for name, (items, our_flops, their_flops, check) in work.items():
        vlm_rate, ref_rate = rate(items, seconds[f"vlm|{name}"], our_flops), rate(items, seconds[f"ref|{name}"],
                                                                                   their_flops)
        rows.append({"workload": name, "vlm": vlm_rate, "reference": ref_rate,
                     "ratio": vlm_rate["items_per_s"] / ref_rate["items_per_s"], **check})
        if own:
            rows[-1]["vlm_vs_own_fp32"] = median(seconds[f"vlm32|{name}"]) / median(seconds[f"vlm|{name}"])
            rows[-1]["reference_vs_own_fp32"] = median(seconds[f"ref32|{name}"]) / median(seconds[f"ref|{name}"])
    return rows


def quality(model, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Zero-shot acc1 and retrieval R@1 on the shapes world's val split, at fp32 and at --precision."""
    from vlm.eval.run import stream_retrieval, stream_zeroshot
    from vlm.eval.stream import StreamOptions

    options = StreamOptions(workers=0)
    out = {}
    for precision in dict.fromkeys(["fp32", args.precision]):
        m = at_precision(model, precision)
        zeroshot = stream_zeroshot(m, args.data, None, options)[0]
        retrieval = stream_retrieval(m, args.data, None, options, None, 16)[0]
        out[precision] = {"zeroshot_acc1": zeroshot["acc1"],
                          "image_retrieval_recall@1": retrieval["image_retrieval_recall@1"],
                          "text_retrieval_recall@1": retrieval["text_retrieval_recall@1"]}
    return out


def load_late_model(args: argparse.Namespace):
    import vlm

    model = vlm.load(args.checkpoint) if args.checkpoint else vlm.create_model(args.model)
    if model.config.arch != "dual_encoder":
        raise vlm.UserError(f"{args.checkpoint or args.model}: `vlm bench encode` needs a late-fusion "
                            f"(dual_encoder) model, this is {model.config.arch}")
    return model.eval()


def cmd_bench_encode(args: argparse.Namespace) -> int:
    from vlm.bench.inputs import markdown_rows, write_report
    from vlm.bench.timing import environment, matmul_ceiling_gflops, peak_rss_mb
    from vlm.models.cpu import cpu_class

    if min(args.batch_size, args.texts, args.rounds) < 1:
        raise ValueError("--batch-size, --texts and --rounds must be at least 1")
    model = load_late_model(args)
    if args.precision == "auto":
        from vlm.models.precision import resolve_precision

        args.precision = resolve_precision("auto", "encode")
    inputs = workloads(args, model)  # a wrong --data fails here, before any export
    with tempfile.TemporaryDirectory(prefix="vlm-bench-encode-") as tmp:
        reference = openclip_twin(model, Path(tmp) / "openclip")
        report = {"model": model.config.name, "precision": args.precision, "compile": args.compile,
                  "cpu_class": cpu_class(), "against": args.against,
                  "rounds": args.rounds, **environment(), "matmul_ceiling_gflops_per_s": matmul_ceiling_gflops()}
        args.onnx_dir = Path(tmp) / "onnx"
        report["rows"] = bench_encode(args, model, reference, inputs)
    if args.checkpoint and args.data and args.precision != "onnx":  # the export is exact (checked to 1e-4)
        report["quality"] = quality(model, args)
    report["peak_rss_mb"] = peak_rss_mb()
    table = markdown_rows(report["rows"], "items", "OpenCLIP")
    table += (f"\n\n{report['model']} at {args.precision}, median of {args.rounds} rounds, float32 matmul ceiling "
              f"{report['matmul_ceiling_gflops_per_s']:.1f} GFLOP/s, peak RSS {report['peak_rss_mb']:,.0f} MB")
    table += own_speedups(report["rows"], args.precision)
    for precision, q in report.get("quality", {}).items():
        table += f"\n{precision}: " + ", ".join(f"{k} {v:.2f}" for k, v in q.items())
    write_report(report, table, args.json)
    return 0
