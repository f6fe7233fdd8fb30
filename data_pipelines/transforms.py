"""Image transforms for training and evaluation, and the normalisation constants both model families use."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from data_pipelines.images import to_rgb

# OpenAI CLIP's normalisation, which OpenCLIP uses for its ViT models; vlm.models.openclip_compat imports these.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class ToNormalizedTensor:
    """PIL RGB image -> (3, H, W) float tensor, `(x / 255 - mean) / std`: ToTensor + Normalize in one numpy pass.

    Measured on the 2-core dev machine under load: torchvision's ToTensor + Normalize ran as five torch ops
    of ~9 ms each at 224 px in the main process, because torch's intra-op threads fight over busy cores
    (0.3 ms with one thread). numpy is single-threaded, and one fused pass is cheaper anyway.
    """

    def __init__(self, mean: tuple[float, ...] = IMAGE_MEAN, std: tuple[float, ...] = IMAGE_STD):
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = 1.0 / (255.0 * np.asarray(std, dtype=np.float32))
        self.offset = np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)  # the decoder's rules, for an image opened elsewhere; no copy when already RGB
        pixels = np.asarray(image, dtype=np.float32)  # (H, W, 3)
        pixels *= self.scale
        pixels -= self.offset
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


class ImageTransform(T.Compose):
    """A Compose that knows the smallest input it needs (`decode_size`, the short side), so loaders can
    decode large JPEGs at a reduced scale without losing pixels the output would use."""

    def __init__(self, transforms: list, image_size: int, decode_size: int | None = None):
        super().__init__(transforms)
        self.image_size = image_size
        self.decode_size = decode_size or image_size


def eval_transform(image_size: int) -> ImageTransform:
    """Resize the short side (bicubic, as OpenCLIP), centre crop, to tensor, normalise."""
    return ImageTransform([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        ToNormalizedTensor(),
    ], image_size)


def train_transform(
    image_size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    color_jitter: float = 0.0,
) -> ImageTransform:
    """Random resized crop (OpenCLIP's default scale 0.9-1.0), optional flip and colour jitter.

    No horizontal flip by default: a flipped image no longer matches a caption that says "left of".
    Colour jitter is off by default for the same reason with colour words (and hue jitter is never used).
    """
    steps = [T.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter))
    steps.append(ToNormalizedTensor())
    # After a draft decode to decode_size, the smallest square crop (scale[0] of the area) still spans image_size
    # pixels; at the extreme aspect ratios its short side is sqrt(3/4) of that (~0.8x), mildly upsampled.
    return ImageTransform(steps, image_size, math.ceil(image_size / math.sqrt(scale[0])))
