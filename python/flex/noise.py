"""Antiphase Noise Sampling (ANS): AR(1)-correlated initial noise across a chunk's frames."""
from __future__ import annotations

import math

import torch

from .checks import check_float, check_int


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
    return antiphase(eps, rho).to(dtype)


def antiphase(eps: torch.Tensor, rho: float = -1.0) -> torch.Tensor:
    """The ANS recursion on given i.i.d. N(0, I) frames ``eps`` [B, f, ...] (dim 1 is time):
    z_0 = eps_0, z_u = rho z_{u-1} + sqrt(1 - rho^2) eps_u. Computed in float32 (float64 for
    float64 input) and returned in eps's dtype; rho = 0 returns eps itself."""
    rho = check_float("rho", rho, -1.0, 1.0)
    if not isinstance(eps, torch.Tensor) or eps.dim() < 2 or not eps.is_floating_point():
        raise ValueError(f"eps must be a floating tensor [B, f, ...], got {getattr(eps, 'shape', type(eps).__name__)}")
    if rho == 0.0:
        return eps
    work = eps.to(torch.float64 if eps.dtype == torch.float64 else torch.float32)
    keep, fresh = rho, math.sqrt(1.0 - rho * rho)
    frames = [work[:, 0]]
    for u in range(1, eps.shape[1]):
        frames.append(keep * frames[-1] + fresh * work[:, u] if fresh else keep * frames[-1])
    return torch.stack(frames, dim=1).to(eps.dtype)


# ---------------------------------------------------------------- noise sources of a stream


class NoiseSource:
    """Where a stream's noise comes from: each chunk's initial noise, then one re-noising
    draw per denoising step after the first, in the order the pipeline asks for them.

    ``start(video_shape, device, dtype)`` is called once per stream (video_shape [B, F, C, H,
    W]; device / dtype: the model's), then per chunk ``initial(f0, n)`` and, for steps
    i = 0 .. steps - 2, ``renoise(i, f0, n)``; each returns [B, n, C, H, W] (any dtype and
    device: the pipeline casts to its own).
    """

    def start(self, video_shape, device, dtype) -> None:
        self.video_shape = tuple(video_shape)
        self.device, self.dtype = torch.device(device), dtype

    def chunk_shape(self, n: int) -> tuple:
        b, _, c, h, w = self.video_shape
        return (b, n, c, h, w)

    def initial(self, f0: int, n: int) -> torch.Tensor:
        raise NotImplementedError

    def renoise(self, step: int, f0: int, n: int) -> torch.Tensor:
        raise NotImplementedError


class ChunkNoise(NoiseSource):
    """FLEX's default: per chunk, antiphase initial noise (ANS, ``rho``) then the re-noising
    of each step (antiphase with ``renoise_rho``, 0 = i.i.d.), drawn in float32 from
    ``generator`` on its device (the global RNG of the model's device when None)."""

    def __init__(self, rho: float = -1.0, renoise_rho: float = 0.0, generator: torch.Generator | None = None):
        self.rho = check_float("rho", rho, -1.0, 1.0)
        self.renoise_rho = check_float("renoise_rho", renoise_rho, -1.0, 1.0)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator

    def _draw(self, n, rho):
        device = self.generator.device if self.generator is not None else self.device
        return antiphase_noise(self.chunk_shape(n), rho, self.generator, device)

    def initial(self, f0, n):
        return self._draw(n, self.rho)

    def renoise(self, step, f0, n):
        return self._draw(n, self.renoise_rho)


class UpstreamNoise(NoiseSource):
    """Self Forcing's own draws: the whole video's initial noise at once, then each re-noising
    with ``randn_like`` of the chunk, all on the model's device in the model's dtype, from one
    generator seeded like upstream's ``set_seed(seed)`` (a fresh generator seeded with ``seed``
    gives the global generator's sequence after ``torch.manual_seed(seed)``)."""

    def __init__(self, seed: int):
        self.seed = check_int("seed", seed, -2**63, 2**64 - 1)

    def start(self, video_shape, device, dtype):
        super().start(video_shape, device, dtype)
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.video = torch.randn(self.video_shape, generator=self.generator, device=self.device, dtype=dtype)

    def initial(self, f0, n):
        return self.video[:, f0:f0 + n]

    def renoise(self, step, f0, n):
        return torch.randn(self.chunk_shape(n), generator=self.generator, device=self.device, dtype=self.dtype)


class GivenNoise(NoiseSource):
    """Explicit whole-video tensors: ``noise`` [B, F, C, H, W] for the initial noise and / or
    ``renoise`` (one whole-video tensor per step after the first); what is not given comes
    from ``fallback``."""

    def __init__(self, noise: torch.Tensor | None, renoise=None, fallback: NoiseSource | None = None):
        self.noise, self.renoise_tensors = noise, renoise
        self.fallback = fallback if fallback is not None else ChunkNoise(0.0)

    def start(self, video_shape, device, dtype):
        super().start(video_shape, device, dtype)
        self.fallback.start(video_shape, device, dtype)

    def initial(self, f0, n):
        return self.noise[:, f0:f0 + n] if self.noise is not None else self.fallback.initial(f0, n)

    def renoise(self, step, f0, n):
        if self.renoise_tensors is not None:
            return self.renoise_tensors[step][:, f0:f0 + n]
        return self.fallback.renoise(step, f0, n)
