"""Antiphase Noise Sampling (ANS): AR(1)-correlated initial noise across a chunk's frames."""
from __future__ import annotations

import math

import torch

from .checks import check_float


def antiphase_noise(
    shape,
    rho: float = -1.0,
    generator: torch.Generator | None = None,
    device=None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Noise of ``shape`` = [B, f, C, H, W] whose frames follow z_u = rho z_{u-1} + sqrt(1-rho^2) eps_u.

    Every frame is N(0, I) and Cov(z_u, z_v) = rho^|u-v| I. rho = -1 gives exact alternation
    z_u = (-1)^u z_0; rho = 0 is plain i.i.d. noise. Drawn in float32 with ``generator``
    (on the generator's device when ``device`` is None), then cast to ``dtype``.
    """
    shape = tuple(shape)
    if len(shape) != 5:
        raise ValueError(f"shape must be [B, f, C, H, W], got {shape}")
    rho = check_float("rho", rho, -1.0, 1.0)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype (noise is real-valued), got {dtype!r}")
    if device is None:
        device = generator.device if generator is not None else "cpu"
    eps = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    if rho == 0.0:
        return eps.to(dtype)
    keep, fresh = rho, math.sqrt(1.0 - rho * rho)
    frames = [eps[:, 0]]
    for u in range(1, shape[1]):
        frames.append(keep * frames[-1] + fresh * eps[:, u] if fresh else keep * frames[-1])
    return torch.stack(frames, dim=1).to(dtype)
