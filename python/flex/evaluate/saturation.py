"""Mean saturation: HSV saturation (max - min) / max of each pixel, averaged (0..1).

Catches the colour saturation long rollouts drift into.
"""
from __future__ import annotations

import torch

from .pixels import per_frame

NAME = "saturation"
SUMMARY = "mean HSV saturation (max - min) / max over pixels (0 where max = 0), 0..1"
WEIGHTS: tuple = ()


def _frame_saturation(rgb: torch.Tensor) -> torch.Tensor:
    high = rgb.amax(dim=-1)
    low = rgb.amin(dim=-1)
    sat = torch.where(high > 0, (high - low) / high.clamp_min(1e-12), torch.zeros_like(high))
    return sat.mean(dim=(1, 2))


def segment_value(frames, fps: float) -> float:
    return float(per_frame(frames, _frame_saturation).mean())


def load(weights_dir=None, device=None):
    return segment_value
