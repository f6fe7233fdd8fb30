"""The image preprocessing each model was trained with, carried by its config.

`model_transform(model)` is what every command feeds a model: OpenCLIP's square resize + centre crop with
the model's own mean/std, or ViLT's processor (shorter side to `image_size`, longer side at most
1333/800 of it, both floored to multiples of 32, mean = std = 0.5, bicubic with antialiasing on uint8
tensors, as transformers' ViltImageProcessor does).

An extreme aspect ratio (a 4000x10 strip, a 1-pixel line) would round its short side to 0 px there and
crash the resize (transformers crashes too): each side is clamped to at least `VILT_SIZE_DIVISOR` (32 px,
one ViLT patch), stretching the short side rather than padding it, so every patch holds real pixels. An image
whose resized sides are 32 px or more (up to 20:1 at ViLT's 384 px) is unchanged.

ViLT images keep their aspect ratio, so they differ in size. To batch them through the same code as square
images, each is placed top-left on a canvas of the largest size the rule allows and the rest is filled with
NaN: the pixel mask travels inside the pixels. `EarlyFusionModel` reads it back (`pixel_mask_of`), zeroes
the padding as transformers pads, and hides the padded patches from attention.
"""

from __future__ import annotations

import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from data_pipelines.images import to_rgb
from data_pipelines.transforms import ImageTransform, ToNormalizedTensor, eval_transform, train_transform

VILT_MEAN = VILT_STD = (0.5, 0.5, 0.5)
VILT_SIZE_DIVISOR = 32
MAX_LONGER_EDGE, MAX_SHORTER_EDGE = 1333, 800  # ViLT's aspect-ratio cap (transformers' constants)


def vilt_resize_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """transformers' ViltImageProcessor.resize, step for step."""
    longer = int(MAX_LONGER_EDGE / MAX_SHORTER_EDGE * shorter)
    if height < width:
        new_h, new_w = shorter, width * (shorter / height)
    else:
        new_h, new_w = height * (shorter / width), shorter
    if max(new_h, new_w) > longer:
        scale = longer / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    new_h, new_w = int(new_h + 0.5), int(new_w + 0.5)
    return new_h // VILT_SIZE_DIVISOR * VILT_SIZE_DIVISOR, new_w // VILT_SIZE_DIVISOR * VILT_SIZE_DIVISOR


def clamped_to_a_patch(size: tuple[int, int]) -> tuple[int, int]:
    """Each side at least one patch (`VILT_SIZE_DIVISOR`): a strip's short side is stretched, never 0 px."""
    return max(size[0], VILT_SIZE_DIVISOR), max(size[1], VILT_SIZE_DIVISOR)


def vilt_canvas_size(shorter: int) -> int:
    """The longest side ViLT's resize can give: every image fits a square canvas of this size."""
    return int(MAX_LONGER_EDGE / MAX_SHORTER_EDGE * shorter) // VILT_SIZE_DIVISOR * VILT_SIZE_DIVISOR


class ViltImageTransform:
    """PIL image -> (3, C, C) float tensor: ViLT's resize and normalisation, NaN outside the image."""

    def __init__(self, shorter: int):
        self.shorter = shorter
        self.canvas = vilt_canvas_size(shorter)
        self.image_size = self.canvas
        self.decode_size = None  # full JPEG decodes (no libjpeg draft scaling), as transformers reads images

    def unpadded(self, image: Image.Image) -> torch.Tensor:
        """(3, h, w): exactly what ViltImageProcessor gives for this one image, each side at least one patch."""
        pixels = TF.pil_to_tensor(to_rgb(image))  # uint8 (3, H, W)
        size = clamped_to_a_patch(vilt_resize_shape(pixels.shape[1], pixels.shape[2], self.shorter))
        pixels = TF.resize(pixels, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
        return (pixels.float() / 255 - 0.5) / 0.5

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = self.unpadded(image)
        out = torch.full((3, self.canvas, self.canvas), float("nan"))
        out[:, : pixels.shape[1], : pixels.shape[2]] = pixels
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shorter={self.shorter}, canvas={self.canvas})"


def pixel_mask_of(images: torch.Tensor) -> torch.Tensor | None:
    """(B, H, W) long, 1 on real pixels, from NaN padding; None when nothing is padded."""
    padded = torch.isnan(images[:, 0])
    if not bool(padded.any()):
        return None
    return (~padded).long()


def config_transform(config, train: bool = False) -> ImageTransform | ViltImageTransform:
    """The transform of a model config (either family); `train` adds the training augmentation (CLIP only:
    ViLT fine-tunes on its evaluation preprocessing)."""
    if getattr(config, "preprocess", "clip") == "vilt":
        return ViltImageTransform(config.image_size)
    if not hasattr(config, "image"):  # early fusion with CLIP-style preprocessing (vlm's own models)
        return train_transform(config.image_size) if train else eval_transform(config.image_size)
    size = config.image.image_size
    transform = train_transform(size) if train else eval_transform(size)
    if not train:  # OpenCLIP's inference preprocessing, as its image_transform builds it
        interpolation = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
        mode = interpolation[config.image_interpolation]
        if config.image_resize_mode == "squash":
            transform.transforms[:2] = [T.Resize((size, size), interpolation=mode)]
        else:
            transform.transforms[:2] = [T.Resize(size, interpolation=mode), T.CenterCrop(size)]
    transform.transforms[-1] = ToNormalizedTensor(config.image_mean, config.image_std)
    return transform


def model_transform(model, train: bool = False):
    """What evaluation, serving and training feed `model`: see the module docstring."""
    return config_transform(model.config, train)
