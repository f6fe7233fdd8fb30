"""Early fusion (ViLT): one transformer over text tokens and image patches together.

It reasons over both inputs at once, so it can bind attributes to objects, but every image-text pair
costs a full pass: it scores pairs, it cannot embed one side alone.

Two layouts share the parameters. "vlm" (ours): [CLS, text, patches], pooled at the CLS. "vilt" (Hugging
Face transformers' `ViltModel`, so published weights compute what they computed there): BERT text
embeddings (word + position + segment, LayerNorm), [text, image CLS, patches], pooled at the text [CLS],
the position grid resized to each image (bilinear, align_corners=True) and a pixel mask for padded images.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from vlm.models.checkpoint_file import save_model
from vlm.models.config import EarlyFusionConfig
from vlm.models.heads import MLMHead, VQAHead
from vlm.models.preprocess import pixel_mask_of
from vlm.models.towers import PatchConv, block_at, init_like_openclip_blocks, static_shapes

TEXT, IMAGE = 0, 1  # modality-type ids


@dataclass
class FusionOutput:
    pooled: torch.Tensor  # (B, W) pooled CLS, input of the ITM and VQA heads
    text_hidden: torch.Tensor | None  # (B, T, W) final text-token states, input of the MLM head (None: pooled_only)


def text_length(text_mask: torch.Tensor) -> int:
    """Columns up to the batch's last real text token (at least one); all of them while shapes must stay
    static (torch.compile, export, tracing)."""
    if static_shapes() or not text_mask.numel():
        return text_mask.shape[1]
    columns = text_mask.any(dim=0).nonzero()  # real columns of the batch
    return int(columns.max()) + 1 if len(columns) else 1


class EarlyFusionModel(nn.Module):
    def __init__(self, config: EarlyFusionConfig):
        super().__init__()
        self.config = config
        width, vilt = config.width, config.layout == "vilt"
        norm = partial(nn.LayerNorm, eps=config.norm_eps)
        # ViLT takes images of any size (multiples of the patch), so its patch grid is not fixed
        self.patch_embed = PatchEmbed(config.image_size, config.patch_size, 3, width, flatten=not vilt,
                                      strict_img_size=not vilt)
        self.patch_embed.proj = PatchConv.like(self.patch_embed.proj)
        self.image_pos = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + vilt, width) * 0.02)
        self.token_embedding = nn.Embedding(config.vocab_size, width)
        self.text_pos = nn.Parameter(torch.randn(1, config.context_length, width) * 0.02)
        if vilt:  # BERT's segment embedding (always segment 0 here) and embedding LayerNorm
            self.token_type_embedding = nn.Embedding(config.type_vocab_size, width)
            self.text_norm = norm(width)
        self.modality_embedding = nn.Embedding(2, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(
            Block(width, config.heads, config.mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(config.depth)
        )
        self.norm = norm(width)
        self.pooler = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        match_outputs = {"itm": 2, "rank": 1, "none": 0}[config.match_head]
        self.itm_head = nn.Linear(width, match_outputs) if match_outputs else None
        self.mlm_head = MLMHead(width, config.vocab_size, eps=config.norm_eps if vilt else 1e-5) \
            if config.mlm_head else None
        answers = len(config.vqa_answers)
        self.vqa_head = VQAHead(width, answers) if answers else None
        self.grad_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        """OpenCLIP's vision-tower initialisation, scaled by width (see towers.py): timm's std 0.02 leaves
        the blocks of a narrow model near the identity and ITM stalls at the class prior."""
        scale = self.config.width**-0.5
        for p in (self.image_pos, self.text_pos, self.cls_token, self.token_embedding.weight,
                  self.modality_embedding.weight):
            nn.init.normal_(p, std=scale)
        init_like_openclip_blocks(self.blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory for larger batches."""
        self.grad_checkpointing = enable

    def embed_image(self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens with position and modality added; computed once per image for exhaustive scoring.

        "vilt" layout: (B, 1 + h*w, W), the image CLS first; `pixel_mask` (B, H, W) marks the real pixels
        of padded images, whose position grid is resized to their own patch rows and columns.
        """
        if self.config.layout == "vilt":
            images, pixel_mask = self._unpad(images, pixel_mask, crop=False)
            return self._vilt_image_tokens(images, pixel_mask)
        x = self.patch_embed(images) + self.image_pos  # (B, P, W)
        return x + self.modality_embedding.weight[IMAGE]

    def _vilt_image_tokens(self, images: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, W, h, w)
        B, W, h, w = x.shape
        real = self.patch_mask(pixel_mask, (B, h, w), x.device)
        rows, cols = real[:, :, 0].sum(1).tolist(), real[:, 0, :].sum(1).tolist()  # as transformers reads them
        grid = self.config.image_size // self.config.patch_size
        spatial = self.image_pos[:, 1:].transpose(1, 2).reshape(1, W, grid, grid)
        resized = {}  # one interpolation per distinct (rows, cols)
        for size in set(zip(rows, cols, strict=True)):
            pos = F.interpolate(spatial, size=size, mode="bilinear", align_corners=True)
            resized[size] = F.pad(pos, (0, w - size[1], 0, h - size[0]))
        pos = torch.cat([resized[size] for size in zip(rows, cols, strict=True)])  # (B, W, h, w)
        patches = x.flatten(2).transpose(1, 2) + pos.flatten(2).transpose(1, 2)  # (B, h*w, W)
        cls = (self.cls_token + self.image_pos[:, :1]).expand(B, -1, -1)
        return torch.cat([cls, patches], dim=1) + self.modality_embedding.weight[IMAGE]

    def _unpad(self, images: torch.Tensor, pixel_mask: torch.Tensor | None,
               crop: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images padded with NaN (see vlm/models/preprocess.py) -> zero padding and its pixel mask; with `crop`,
        cut the canvas to the batch's largest image (rounded up to whole patches), as transformers pads."""
        if pixel_mask is not None or self.config.layout != "vilt":
            return images, pixel_mask
        pixel_mask = pixel_mask_of(images)
        if pixel_mask is None:
            return images, None
        images = torch.nan_to_num(images, nan=0.0)
        if crop:
            p = self.config.patch_size
            h = -(-int(pixel_mask.any(dim=2).sum(dim=1).max()) // p) * p
            w = -(-int(pixel_mask.any(dim=1).sum(dim=1).max()) // p) * p
            images, pixel_mask = images[..., :h, :w], pixel_mask[:, :h, :w]
        return images, pixel_mask

    def patch_mask(self, pixel_mask: torch.Tensor | None, shape: tuple[int, int, int],
                   device: torch.device) -> torch.Tensor:
        """(B, h, w) 1 on patches of real pixels: the pixel mask resized (nearest) to the patch grid."""
        if pixel_mask is None:
            return torch.ones(shape, dtype=torch.long, device=device)
        return F.interpolate(pixel_mask[:, None].float(), size=shape[1:]).long()[:, 0]

    def image_mask(self, pixel_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, 1 + h*w) True on the image CLS and the real patches of padded images; None without a pixel mask."""
        if pixel_mask is None:
            return None
        B, h, w = pixel_mask.shape[0], *(s // self.config.patch_size for s in pixel_mask.shape[1:])
        real = self.patch_mask(pixel_mask, (B, h, w), pixel_mask.device).flatten(1).bool()
        return torch.cat([torch.ones(B, 1, dtype=torch.bool, device=real.device), real], dim=1)

    def check_text_length(self, ids: torch.Tensor) -> None:
        if ids.shape[1] > self.config.context_length:
            raise ValueError(f"text has {ids.shape[1]} tokens, the model's context is {self.config.context_length}")

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        self.check_text_length(ids)
        if self.config.layout == "vilt":  # BERT: (word + segment 0) + position, then LayerNorm
            x = self.token_embedding(ids) + self.token_type_embedding.weight[0]
            x = self.text_norm(x + self.text_pos[:, : ids.shape[1]])
        else:
            x = self.token_embedding(ids) + self.text_pos[:, : ids.shape[1]]  # (B, T, W)
        return x + self.modality_embedding.weight[TEXT]

    def fuse(self, image_tokens: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None,
             image_mask: torch.Tensor | None = None, cut_text: bool = True, pooled_only: bool = False) -> FusionOutput:
        """Run the joint stack over text and image tokens; padding (text or image) is hidden from attention.

        Text columns after the batch's last real token are hidden from every query, so the stack runs without
        them (identical pooled output and real-token states, less work); `text_hidden` keeps the input's
        length T, zero at the columns cut. `cut_text=False` keeps every column: one shape for every batch of
        the same input size, whatever texts it holds (see vlm/eval/pair_scoring.py). `pooled_only` (the ITM,
        rank and VQA heads): the last block runs at the pooled position only, and `text_hidden` is None.
        """
        if text_mask is None:
            text_mask = ids != self.config.pad_token_id
        self.check_text_length(ids)  # before the cut: a too-long input stays an error even when padded
        B, full_length = ids.shape
        T = text_length(text_mask) if cut_text else full_length
        ids, text_mask = ids[:, :T], text_mask[:, :T]
        vilt = self.config.layout == "vilt"
        text_tokens = self.embed_text(ids)
        if vilt:
            x = torch.cat([text_tokens, image_tokens], dim=1)  # (B, T+1+P, W)
            first_text = 0
        else:
            x = torch.cat([self.cls_token.expand(B, -1, -1), text_tokens, image_tokens], dim=1)  # (B, 1+T+P, W)
            first_text = 1
        visible = torch.ones(B, x.shape[1], dtype=torch.bool, device=x.device)
        visible[:, first_text : first_text + T] = text_mask.bool()
        if image_mask is not None:
            visible[:, first_text + T :] = image_mask
        attn_mask = visible[:, None, None, :]  # (B, 1, 1, L): every query sees the same keys
        blocks = self.blocks[:-1] if pooled_only else self.blocks
        for block in blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, attn_mask=attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=attn_mask)
        if pooled_only:
            first = torch.zeros(B, dtype=torch.long, device=x.device)
            return FusionOutput(pooled=self.pooler(self.norm(block_at(self.blocks[-1], x, first, attn_mask))),
                                text_hidden=None)
        x = self.norm(x)
        text_hidden = x[:, first_text : first_text + T]
        if not vilt:
            text_hidden = text_hidden * text_mask[..., None].to(x.dtype)
        text_hidden = F.pad(text_hidden, (0, 0, 0, full_length - T))  # (B, T_in, W)
        return FusionOutput(pooled=self.pooler(x[:, 0]), text_hidden=text_hidden)

    def forward(self, images: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None,
                pixel_mask: torch.Tensor | None = None, pooled_only: bool = False) -> FusionOutput:
        images, pixel_mask = self._unpad(images, pixel_mask, crop=True)
        return self.fuse(self.embed_image(images, pixel_mask), ids, text_mask, self.image_mask(pixel_mask),
                         pooled_only=pooled_only)

    def _match_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.itm_head is None:
            raise ValueError(f"{self.config.name} has no image-text matching head (match_head: none); "
                               "import a retrieval checkpoint (ViltForImageAndTextRetrieval) to score pairs")
        logits = self.itm_head(pooled)
        if logits.shape[-1] == 1:  # ViLT's rank_output: [0, s] makes 2-way softmax CE the sigmoid loss of s
            logits = torch.cat([torch.zeros_like(logits), logits], dim=-1)
        return logits  # (B, 2): [no match, match]

    def itm_logits(self, images: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None,
                   pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._match_logits(self(images, ids, text_mask, pixel_mask, pooled_only=True).pooled)

    def score(self, images: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None,
              pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Match score of each (image, text) pair: the ITM log-odds (ViLT: its rank logit), higher is better."""
        logits = self.itm_logits(images, ids, text_mask, pixel_mask)
        return logits[:, 1] - logits[:, 0]

    def score_embedded(self, image_tokens: torch.Tensor, ids: torch.Tensor, text_mask: torch.Tensor | None = None,
                       image_mask: torch.Tensor | None = None, cut_text: bool = True) -> torch.Tensor:
        """`score` for patch tokens from `embed_image`, so retrieval embeds each image once; `image_mask`
        from `image_mask(pixel_mask_of(images))` for padded ViLT images; `cut_text` as in `fuse`."""
        fused = self.fuse(image_tokens, ids, text_mask, image_mask, cut_text, pooled_only=True)
        logits = self._match_logits(fused.pooled)
        return logits[:, 1] - logits[:, 0]

    def mlm_logits(self, text_hidden: torch.Tensor) -> torch.Tensor:
        if self.mlm_head is None:
            raise ValueError(f"{self.config.name} has no MLM head (mlm_head: false; train with mlm_weight=0)")
        return self.mlm_head(text_hidden, self.token_embedding.weight)  # (..., vocab)

    def vqa_logits(self, images: torch.Tensor, questions: torch.Tensor, text_mask: torch.Tensor | None = None,
                   pixel_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.vqa_head is None:
            raise RuntimeError(f"{self.config.name} has no VQA head: set vqa_answers in its config")
        return self.vqa_head(self(images, questions, text_mask, pixel_mask, pooled_only=True).pooled)

    def save(self, path) -> None:
        save_model(self, path)
