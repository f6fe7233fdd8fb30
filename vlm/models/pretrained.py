"""Published weights each family imports, with the figures their authors published (for `vlm models --pretrained`
and docs/PRETRAINED.md). Figures are the papers' and model cards', not measured here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pretrained:
    family: str  # "late" (OpenCLIP) or "early" (ViLT)
    name: str
    published: str  # the authors' figures, with what they measure
    command: str  # the exact import command (downloads need internet once)


PRETRAINED = (
    Pretrained("late", "OpenCLIP ViT-B-32 openai",
               "ImageNet zero-shot 63.3; Flickr30k R@1 image 58.8 / text 78.9",
               "vlm openclip import ViT-B-32-quickgelu --pretrained openai clip-b32-openai.pt"),
    Pretrained("late", "OpenCLIP ViT-B-32 laion2b_s34b_b79k", "ImageNet zero-shot 66.6",
               "vlm openclip import ViT-B-32 --pretrained laion2b_s34b_b79k clip-b32-laion2b.pt"),
    Pretrained("early", "dandelin/vilt-b32-mlm",
               "pre-trained, MLM head only (the paper's zero-shot Flickr30k TR/IR 73.2/55.0, COCO 56.5/40.4 "
               "use an ITM head this checkpoint lacks); 87.4M parameters",
               "vlm vilt import dandelin/vilt-b32-mlm vilt-b32-mlm.pt"),
    Pretrained("early", "dandelin/vilt-b32-finetuned-vqa", "VQAv2 test-dev 71.26 (3,129 answers)",
               "vlm vilt import dandelin/vilt-b32-finetuned-vqa vilt-b32-vqa.pt"),
    Pretrained("early", "dandelin/vilt-b32-finetuned-coco", "COCO 5k R@1 text 61.5 / image 42.7",
               "vlm vilt import dandelin/vilt-b32-finetuned-coco vilt-b32-coco.pt"),
    Pretrained("early", "dandelin/vilt-b32-finetuned-flickr30k", "Flickr30k R@1 text 83.5 / image 64.4",
               "vlm vilt import dandelin/vilt-b32-finetuned-flickr30k vilt-b32-flickr30k.pt"),
)


def pretrained_table() -> str:
    lines = []
    for family in ("late", "early"):
        lines.append(f"{family} fusion ({'OpenCLIP' if family == 'late' else 'Hugging Face ViLT'}):")
        for p in PRETRAINED:
            if p.family == family:
                lines += [f"  {p.name}", f"    published: {p.published}", f"    import:    {p.command}"]
    lines.append("Not importable: ViLT's NLVR2 model (two images per text), OpenCLIP models with timm or "
                 "Hugging Face towers.")
    return "\n".join(lines)
