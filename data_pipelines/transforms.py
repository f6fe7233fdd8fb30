"""Image transforms for training and evaluation, and the normalisation constants both model families use."""

from __future__ import annotations

from torchvision import transforms as T

# OpenAI CLIP's normalisation, which OpenCLIP uses for its ViT models; vlm.models.openclip_compat imports these.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def eval_transform(image_size: int) -> T.Compose:
    """Resize the short side (bicubic, as OpenCLIP), centre crop, to tensor, normalise."""
    return T.Compose([
        T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(image_size),
        T.ToTensor(),
        T.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])


def train_transform(
    image_size: int,
    scale: tuple[float, float] = (0.9, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    color_jitter: float = 0.0,
) -> T.Compose:
    """Random resized crop (OpenCLIP's default scale 0.9-1.0), optional flip and colour jitter.

    No horizontal flip by default: a flipped image no longer matches a caption that says "left of".
    Colour jitter is off by default for the same reason with colour words (and hue jitter is never used).
    """
    steps = [T.RandomResizedCrop(image_size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if color_jitter:
        steps.append(T.ColorJitter(brightness=color_jitter, contrast=color_jitter))
    steps += [T.ToTensor(), T.Normalize(IMAGE_MEAN, IMAGE_STD)]
    return T.Compose(steps)
