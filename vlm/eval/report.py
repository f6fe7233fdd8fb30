"""report.md from report.json: every figure printed here is a value of the JSON, formatted by `fmt`.

Percentages are printed with one decimal; anything else with 3 significant digits (or as an integer).
Paths and names go in `code spans`, so a reader (and the test) can tell figures from names.
"""

from __future__ import annotations

RECALL_COLUMNS = ["image_retrieval_recall@1", "image_retrieval_recall@5", "image_retrieval_recall@10",
                  "text_retrieval_recall@1", "text_retrieval_recall@5", "text_retrieval_recall@10"]


def fmt(value) -> str:
    """The one way a number is printed in the report (the test formats report.json's values the same way)."""
    if value is None:
        return "n/a"
    if isinstance(value, int):  # bool too
        return str(value)
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 1 or value == 0:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _zeroshot(report: dict) -> list[str]:
    zs = report["zeroshot"]
    keys = [k for k in ("acc1", "acc5", "mean_per_class_recall") if k in zs["late"]]
    rows = [[f"`{name}`"] + [fmt(zs[name].get(k)) for k in keys] + [fmt(zs[name].get("fusion_passes"))]
            for name in ("late", "early", "chance")]
    return ["## Zero-shot classification (%)", "",
            *_table(["model", *keys, "fusion passes"], rows), ""]


def _retrieval(report: dict) -> list[str]:
    r = report["retrieval"]
    runs = [("late", r["late"]), ("early", r["early"])]
    runs += [(f"hybrid k={k}", run) for k, run in r["hybrid"].items()]
    rows = [[name] + [fmt(run.get(c)) for c in RECALL_COLUMNS]
            + [fmt(run.get("fusion_passes")), fmt(run.get("wall_time_s"))] for name, run in runs]
    rows.append(["random"] + [fmt(r["random"][c]) for c in RECALL_COLUMNS] + ["n/a", "n/a"])
    header = ["method", "T→I R@1", "T→I R@5", "T→I R@10", "I→T R@1", "I→T R@5", "I→T R@10",
              "fusion passes", "wall s"]
    lines = ["## Retrieval (%)", "",
             f"{fmt(r['late']['images'])} images, {fmt(r['late']['texts'])} captions. "
             "T→I is `image_retrieval_recall@k`, I→T `text_retrieval_recall@k` (CLIP_benchmark's names). "
             "Hybrid rows re-rank each query's late-fusion top k with the early model's ITM scores, looked up "
             "from the exhaustive run (a pair scores the same in any batch); their cost is the fusion passes "
             "they need and the per-query latency measured under Cost.", "",
             *_table(header, rows), ""]
    headline = report.get("hybrid_vs_early")
    if headline:
        lines += [f"Hybrid at k={fmt(headline['k'])} keeps {fmt(headline['image_retrieval_recall@1_kept_percent'])}% "
                  f"of exhaustive early fusion's T→I R@1 and {fmt(headline['text_retrieval_recall@1_kept_percent'])}% "
                  f"of its I→T R@1, with {fmt(headline['fusion_passes_percent'])}% of its fusion passes "
                  f"(T→I alone {fmt(headline['text_to_image_fusion_passes_percent'])}%, "
                  f"I→T alone {fmt(headline['image_to_text_fusion_passes_percent'])}%; a pair both directions "
                  "re-score runs once).", ""]
    return lines


def _vqa(vqa: dict, where: str = "") -> list[str]:
    if not vqa:
        return [f"## VQA{where}", "", "Not run: neither model has a VQA head (no `*-vqa` run found).", ""]
    names = [n for n in ("late", "early", "late_image_zeroed", "early_image_zeroed", "question_only") if n in vqa]
    header = [*[f"`{n}`" for n in names]]
    lines = [f"## VQA accuracy (%, VQAv2 metric){where}", "",
             "Blind baselines: `*_image_zeroed` is the same model and head with every image replaced by zeros; "
             "`question_only` answers with the most common training answer to the same question, image unseen.", "",
             *_table(["", *header], [["overall"] + [fmt(vqa[n]["vqa_accuracy"]) for n in names]]), ""]
    for group, title in (("per_answer_type", "answer type"), ("per_question_family", "question family")):
        keys = sorted({k for n in names for k in vqa[n].get(group, {})})
        rows = [[f"`{k}`"] + [fmt(vqa[n].get(group, {}).get(k)) for n in names] for k in keys]
        if rows:
            lines += [*_table([title, *header], rows), ""]
    return lines


def _compositional(comp: dict, where: str = "") -> list[str]:
    names = ["late", "early", "text_only"]
    types = sorted(comp["late"]["per_negative_type"])
    rows = [["overall"] + [fmt(comp[n]["compositional_accuracy"]) for n in names]]
    rows += [[f"`{t}`"] + [fmt(comp[n]["per_negative_type"].get(t)) for n in names] for t in types]
    return [f"## Compositional two-way accuracy (%; a coin flip scores half){where}", "",
            "`text_only` prefers the caption a bigram model of the training captions finds likelier.", "",
            *_table(["negative type", *[f"`{n}`" for n in names]], rows), ""]


def _cost(report: dict) -> list[str]:
    cost = report["cost"]
    keys = ["parameters", "gflops_image", "gflops_text", "gflops_pair", "encode_pairs_per_s", "score_pairs_per_s"]
    rows = [[f"`{k}`", fmt(cost["late"][k]), fmt(cost["early"][k])] for k in keys]
    latency = cost["latency"]
    lat_rows = [[f"`{name}`", fmt(v["p50_ms"]), fmt(v["p99_ms"]), fmt(v["fusion_passes_per_query"])]
                for name, v in latency.items()]
    return ["## Cost", "",
            f"Measured on the CPU with {fmt(cost['torch_threads'])} torch threads. A pair's FLOPs: late fusion a "
            "dot product of two embeddings, early fusion one pass of the joint stack.", "",
            *_table(["", "late", "early"], rows), "",
            "Latency of one text query against the whole image set (images indexed beforehand):", "",
            *_table(["method", "p50 ms", "p99 ms", "fusion passes"], lat_rows), ""]


def render_markdown(report: dict, images: list[str] | None = None) -> str:
    setup = report["setup"]
    lines = ["# Late versus early fusion", "",
             f"Late: `{setup['late_model']}` (`{setup['late_checkpoint']}`); early: `{setup['early_model']}` "
             f"(`{setup['early_checkpoint']}`); data: `{setup['data']}`, split `{setup['split']}`.", "",
             "## Summary", "", format_summary_table(report), ""]
    lines += _zeroshot(report) + _retrieval(report) + _vqa(report["vqa"]) + _compositional(report["compositional"])
    heldout = report.get("heldout")
    if heldout:
        where = f", split `{heldout['split']}` (colour-shape pairs never seen in training)"
        lines += _vqa(heldout["vqa"], where) + _compositional(heldout["compositional"], where)
    lines += _cost(report)
    for name in images or []:
        lines += [f"![{name}]({name})", ""]
    return "\n".join(lines)


def format_summary_table(report: dict) -> str:
    """The short late-vs-early table (the quickstart prints it; the README shows it)."""
    k = str(report["hybrid_vs_early"]["k"]) if report.get("hybrid_vs_early") else None
    r = report["retrieval"]
    hybrid = r["hybrid"].get(k, {}) if k else {}
    vqa, comp, zs = report["vqa"], report["compositional"], report["zeroshot"]
    latency = report["cost"]["latency"]
    rows = [
        ["zero-shot acc1 %", zs["late"]["acc1"], zs["early"]["acc1"], None, zs["chance"]["acc1"]],
        ["retrieval T→I R@1 %", r["late"]["image_retrieval_recall@1"], r["early"]["image_retrieval_recall@1"],
         hybrid.get("image_retrieval_recall@1"), r["random"]["image_retrieval_recall@1"]],
        ["retrieval I→T R@1 %", r["late"]["text_retrieval_recall@1"], r["early"]["text_retrieval_recall@1"],
         hybrid.get("text_retrieval_recall@1"), r["random"]["text_retrieval_recall@1"]],
        ["retrieval fusion passes", r["late"]["fusion_passes"], r["early"]["fusion_passes"],
         hybrid.get("fusion_passes"), None],
        ["query latency p50 ms", latency["late"]["p50_ms"], latency["early"]["p50_ms"],
         latency.get(f"hybrid@{k}", {}).get("p50_ms"), None],
        ["VQA accuracy %", vqa.get("late", {}).get("vqa_accuracy"), vqa.get("early", {}).get("vqa_accuracy"),
         None, vqa.get("question_only", {}).get("vqa_accuracy")],
        ["compositional %", comp["late"]["compositional_accuracy"], comp["early"]["compositional_accuracy"],
         None, comp["text_only"]["compositional_accuracy"]],
    ]
    heldout = report.get("heldout")
    if heldout:
        hv, hc = heldout["vqa"], heldout["compositional"]
        rows += [
            [f"VQA accuracy %, {heldout['split']}", hv.get("late", {}).get("vqa_accuracy"),
             hv.get("early", {}).get("vqa_accuracy"), None, hv.get("question_only", {}).get("vqa_accuracy")],
            [f"compositional %, {heldout['split']}", hc["late"]["compositional_accuracy"],
             hc["early"]["compositional_accuracy"], None, hc["text_only"]["compositional_accuracy"]],
        ]
    header = ["", "late", "early", f"hybrid k={k}" if k else "hybrid", "blind"]
    return "\n".join(_table(header, [[name] + [fmt(v) if v is not None else "" for v in values]
                                     for name, *values in rows]))
