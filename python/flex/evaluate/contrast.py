"""Contrast: RMS contrast, the standard deviation of each frame's luma (0..1), averaged.

A video fading to grey loses contrast; its contrast drift is negative.
"""
from __future__ import annotations

import torch

from .pixels import luma, per_frame

NAME = "contrast"
SUMMARY = "standard deviation of the BT.601 luma of each frame (0..1 scale), averaged over frames"
WEIGHTS: tuple = ()


def _frame_contrast(rgb: torch.Tensor) -> torch.Tensor:
    return luma(rgb).flatten(1).std(dim=1, correction=0)


def segment_value(frames, fps: float) -> float:
    return float(per_frame(frames, _frame_contrast).mean())


def load(weights_dir=None, device=None):
    return segment_value
