"""The image transforms VBench applies before each model, in plain torch.

VBench reads frames as float tensors in 0..255, resizes them with torchvision's tensor Resize
(antialias off), then scales to 0..1 and normalises. torchvision's tensor Resize without
antialias is ``F.interpolate(align_corners=False)``, and an int size sets the shorter side
(the longer one becomes ``int(size * long / short)``), which is what these functions do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_chw(frames) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float32 [T, 3, H, W] in 0..255."""
    from .pixels import as_frames

    return as_frames(frames).permute(0, 3, 1, 2).float()


def resize_shorter(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize [T, 3, H, W] so the shorter side is ``size`` (torchvision's rule for an int size)."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return x
    return F.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False)


def resize_longer_at_most(x: torch.Tensor, size: int) -> torch.Tensor:
    """VBench's imaging-quality "longer" mode: if the longer side exceeds ``size``, scale it to ``size``."""
    h, w = x.shape[-2:]
    if max(h, w) <= size:
        return x
    scale = size / max(h, w)
    return F.interpolate(x, size=(int(scale * h), int(scale * w)), mode="bilinear", align_corners=False)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's CenterCrop for inputs at least ``size`` on both sides."""
    h, w = x.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def normalize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype, device=x01.device).view(1, 3, 1, 1)
    return (x01 - m) / s


def dino_input(frames) -> torch.Tensor:
    """VBench's dino_transform(224): shorter side 224 (bilinear), /255, ImageNet normalisation."""
    return normalize(resize_shorter(to_chw(frames), 224, "bilinear") / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_input(frames) -> torch.Tensor:
    """VBench's clip_transform(224): shorter side 224 (bicubic), centre crop 224, /255, CLIP normalisation."""
    x = center_crop(resize_shorter(to_chw(frames), 224, "bicubic"), 224)
    return normalize(x / 255.0, CLIP_MEAN, CLIP_STD)
