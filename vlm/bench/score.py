"""`vlm bench score`: early-fusion pairs/s of vlm's scorer against Hugging Face's ViltForImageAndTextRetrieval.

The reference is transformers' own model at the shape of `--model` (fusion-base32: ViLT-B/32 at 224 px, 40
text tokens), random init, captions padded to the context as ViltProcessor pads them. vlm scores the same
pairs twice: with the very same weights imported into its ViLT layout (`vlm.models.vilt_compat`), so the scores
can be compared, and as `--model` itself in vlm's own layout (random init). Both go through the scorer the
evaluator uses (`FusionPairScorer`: patch tokens embedded once, batches of one shape, text cut to the longest
real caption). Rounds are interleaved; each side reports its median round.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vlm.bench.encode import add_precision_arguments


def register_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="early-fusion pairs/s of vlm's scorer vs Hugging Face ViLT (same weights)")
    p.add_argument("--model", default="fusion-base32", help="early-fusion model name: the shape (default: %(default)s)")
    p.add_argument("--against", choices=["vilt"], default="vilt")
    add_precision_arguments(p, "ViLT")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per round")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds; each side reports its median")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the report to this JSON file")
    p.set_defaults(func=cmd_bench_score)


def wordpiece_vocab(size: int) -> list[str]:
    """BERT's special tokens, the caption words, then unused entries up to `size` (30522 as bert-base)."""
    from vlm.bench.inputs import COCO_WORDS

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(COCO_WORDS)]
    return words + [f"[unused{i}]" for i in range(max(0, size - len(words)))]


def vilt_at_shape(config, vocab: list[str], seed: int):
    """transformers' ViltForImageAndTextRetrieval at the shape of an EarlyFusionConfig, random init. Its own
    init leaves the CLS and position embeddings at zero (they get small random values) and scores every pair
    near 0 (std 0.02 rank head); a unit-variance rank head makes scores of order 1, so differences show."""
    import torch
    import transformers

    torch.manual_seed(seed)
    hf_config = transformers.ViltConfig(
        vocab_size=len(vocab), max_position_embeddings=config.context_length, hidden_size=config.width,
        num_hidden_layers=config.depth, num_attention_heads=config.heads,
        intermediate_size=round(config.width * config.mlp_ratio), image_size=config.image_size,
        patch_size=config.patch_size, pad_token_id=0, architectures=["ViltForImageAndTextRetrieval"])
    model = transformers.ViltForImageAndTextRetrieval(hf_config).eval()
    with torch.no_grad():
        for p in (model.vilt.embeddings.cls_token, model.vilt.embeddings.position_embeddings):
            p.normal_(0, 0.02)
        model.rank_output.weight.normal_(0, 1)
    return model


def vlm_twin(hf_model, vocab: list[str]):
    """The EarlyFusionModel (ViLT layout) holding the very weights of `hf_model`."""
    from vlm.models.checkpoint import model_from_weights
    from vlm.models.vilt_compat import config_from_vilt, from_vilt_state_dict

    config = config_from_vilt(hf_model.config, "rank", tuple(vocab), True, "vilt-bench")
    sd = {k.removeprefix("vilt."): v for k, v in hf_model.state_dict().items()}
    return model_from_weights(config, from_vilt_state_dict(sd, config), "vilt-bench").eval()


def bench_score(args: argparse.Namespace, hf_model, shared, native) -> dict:
    """Pairs/s of the three scorers on the same pairs, interleaved; the shared-weights scores compared."""
    from statistics import median

    import torch

    from vlm.bench.encode import at_precision, reference_context
    from vlm.bench.inputs import coco_like_captions
    from vlm.bench.timing import count_flops, interleaved_seconds, rate
    from vlm.eval.pair_scoring import FusionPairScorer
    from vlm.tokenizer import get_tokenizer

    n, size = args.batch_size, shared.config.image_size
    pixels = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(args.seed))
    captions = coco_like_captions(n, args.seed)
    ids = get_tokenizer(shared)(captions)  # padded to the context, as ViltProcessor(padding="max_length")
    native_ids, pairs = get_tokenizer(native)(captions), torch.arange(n)

    def scorer(model, token_ids):
        return lambda: FusionPairScorer(model, pixels, token_ids, batch_size=n).score_pairs(pairs, pairs)

    def theirs(precision=args.precision):
        with torch.no_grad(), reference_context(precision):
            return hf_model(input_ids=ids, attention_mask=(ids != 0).long(), pixel_values=pixels,
                            pixel_mask=torch.ones(n, size, size, dtype=torch.long)).logits[:, 0].float()

    runs = {"vlm": scorer(at_precision(shared, args.precision, args.compile), ids), "reference": theirs,
            "vlm_native": scorer(at_precision(native, args.precision, args.compile), native_ids)}
    own = args.precision != "fp32"  # each side at fp32 too, for its own speed-up
    if own:
        runs.update(vlm32=scorer(shared, ids), ref32=lambda: theirs("fp32"))
    flops = {"vlm": count_flops(scorer(shared, ids)), "reference": count_flops(theirs),
             "vlm_native": count_flops(scorer(native, native_ids))}
    flops.update(vlm32=flops["vlm"], ref32=flops["reference"])
    ours_scores, their_scores = runs["vlm"](), theirs()
    difference = float((ours_scores - their_scores).abs().max())
    check = {"max_abs_diff": difference, "relative_diff": difference / float(their_scores.abs().max())}
    seconds = interleaved_seconds(runs, args.rounds)
    rates = {name: rate(n, seconds[name], flops[name]) for name in runs}
    row = {"workload": f"pairs {size} px, {ids.shape[1]} tokens, batch {n}", "vlm": rates["vlm"],
           "reference": rates["reference"], "ratio": rates["vlm"]["items_per_s"] / rates["reference"]["items_per_s"],
           **check}
    if own:
        row["vlm_vs_own_fp32"] = median(seconds["vlm32"]) / median(seconds["vlm"])
        row["reference_vs_own_fp32"] = median(seconds["ref32"]) / median(seconds["reference"])
    native_row = {"workload": f"{native.config.name} (vlm layout, own random weights)", "vlm": rates["vlm_native"],
                  "reference": rates["reference"],
                  "ratio": rates["vlm_native"]["items_per_s"] / rates["reference"]["items_per_s"],
                  "max_abs_diff": float("nan"), "relative_diff": float("nan")}
    return {"rows": [row, native_row]}


def cmd_bench_score(args: argparse.Namespace) -> int:
    import vlm
    from vlm.bench.encode import own_speedups
    from vlm.bench.inputs import markdown_rows, write_report
    from vlm.bench.timing import environment, matmul_ceiling_gflops, peak_rss_mb

    if min(args.batch_size, args.rounds) < 1:
        raise ValueError("--batch-size and --rounds must be at least 1")
    native = vlm.create_model(args.model).eval()
    if native.config.arch != "early_fusion":
        raise vlm.UserError(f"{args.model}: `vlm bench score` needs an early-fusion model, this is "
                            f"{native.config.arch}")
    if args.precision == "auto":
        from vlm.models.precision import resolve_precision

        args.precision = resolve_precision("auto", "score")
    vocab = wordpiece_vocab(30522)
    hf_model = vilt_at_shape(native.config, vocab, args.seed)
    shared = vlm_twin(hf_model, vocab)
    from vlm.models.cpu import cpu_class

    report = {"model": args.model, "precision": args.precision, "compile": args.compile, "cpu_class": cpu_class(),
              "against": args.against, "rounds": args.rounds,
              **environment(), "matmul_ceiling_gflops_per_s": matmul_ceiling_gflops()}
    report.update(bench_score(args, hf_model, shared, native))
    report["peak_rss_mb"] = peak_rss_mb()
    table = markdown_rows(report["rows"], "pairs", "HF ViLT", ("max abs diff / max score", "relative_diff", ".2e"))
    table += (f"\n\n{args.model} shape at {args.precision}, median of {args.rounds} rounds, float32 matmul ceiling "
              f"{report['matmul_ceiling_gflops_per_s']:.1f} GFLOP/s, peak RSS {report['peak_rss_mb']:,.0f} MB")
    table += own_speedups(report["rows"], args.precision)
    write_report(report, table, args.json)
    return 0
