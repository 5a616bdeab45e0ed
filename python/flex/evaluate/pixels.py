"""Per-pixel quantities the weights-free metrics share, on uint8 RGB frames [T, H, W, 3].

Frames are handled a few at a time in float32 so that a long segment at full resolution never
needs a float copy of itself.
"""
from __future__ import annotations

import numpy as np
import torch

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of OpenCV's RGB -> grey
BLOCK = 16  # frames converted to float at once


def as_frames(frames) -> torch.Tensor:
    """uint8 [T, H, W, 3] torch tensor from numpy or torch input (checked)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"frames must be a numpy array or torch tensor, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be [T, H, W, 3] (RGB), got shape {tuple(frames.shape)}")
    if frames.dtype != torch.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"frames must not be empty, got shape {tuple(frames.shape)}")
    return frames


def adjacent_mean_abs_diff(frames) -> torch.Tensor:
    """[T - 1] float64: mean |frame[t + 1] - frame[t]| over pixels and channels, in 0..255 levels."""
    frames = as_frames(frames)
    out = []
    for s in range(0, frames.shape[0] - 1, BLOCK):
        block = frames[s:s + BLOCK + 1].float()
        out.append((block[1:] - block[:-1]).abs().mean(dim=(1, 2, 3)).double())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def per_frame(frames, fn) -> torch.Tensor:
    """[T] float64 of ``fn`` (float32 [t, H, W, 3] in 0..1 -> [t]) over blocks of frames."""
    frames = as_frames(frames)
    return torch.cat([fn(frames[s:s + BLOCK].float() / 255.0).double() for s in range(0, frames.shape[0], BLOCK)])


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """[..., H, W] luma of float RGB [..., H, W, 3]."""
    return rgb @ torch.tensor(LUMA, dtype=rgb.dtype)
