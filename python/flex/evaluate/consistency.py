"""VBench's consistency score of a sequence of frame features.

For every frame i >= 1: the mean of its cosine similarity to the previous frame and to the
first frame, each clipped below at 0; the score is the mean over frames 1..n-1 (1.0 for a
single frame). Subject consistency (DINO) and background consistency (CLIP) both use it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def consistency(features: torch.Tensor) -> float:
    """Score of features [T, D] (any scale: they are L2-normalised here)."""
    if features.ndim != 2 or features.shape[0] < 1:
        raise ValueError(f"features must be [T >= 1, D], got shape {tuple(features.shape)}")
    if features.shape[0] == 1:
        return 1.0
    f = F.normalize(features.double(), dim=-1)
    to_previous = (f[1:] * f[:-1]).sum(-1).clamp_min(0.0)
    to_first = (f[1:] * f[:1]).sum(-1).clamp_min(0.0)
    return float(((to_previous + to_first) / 2).mean())


def batched_features(encode, x: torch.Tensor, device, batch: int = 32) -> torch.Tensor:
    """encode(x[i:i + batch] on ``device``) for every batch, concatenated on the CPU in float32."""
    out = []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch):
            out.append(encode(x[s:s + batch].to(device)).float().cpu())
    return torch.cat(out)
