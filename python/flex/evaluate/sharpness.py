"""Sharpness: variance of the Laplacian of each frame's luma, averaged over frames.

The 4-neighbour Laplacian (0 1 0 / 1 -4 1 / 0 1 0) on luma in 0..1, over interior pixels
(no padding). Late blur shows as falling sharpness. On 0..255 luma (OpenCV's usual scale) the
values are 255^2 = 65025 times larger.
"""
from __future__ import annotations

import torch

from .pixels import luma, per_frame

NAME = "sharpness"
SUMMARY = "variance of the 4-neighbour Laplacian of luma (0..1 scale), interior pixels, averaged over frames"
WEIGHTS: tuple = ()


def _frame_sharpness(rgb: torch.Tensor) -> torch.Tensor:
    y = luma(rgb)
    if y.shape[1] < 3 or y.shape[2] < 3:
        raise ValueError(f"sharpness needs frames of at least 3x3 pixels, got {y.shape[1]}x{y.shape[2]}")
    lap = (y[:, :-2, 1:-1] + y[:, 2:, 1:-1] + y[:, 1:-1, :-2] + y[:, 1:-1, 2:] - 4 * y[:, 1:-1, 1:-1])
    return lap.flatten(1).var(dim=1, correction=0)


def segment_value(frames, fps: float) -> float:
    return float(per_frame(frames, _frame_sharpness).mean())


def load(weights_dir=None, device=None):
    return segment_value
