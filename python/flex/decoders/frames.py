"""What every video decoder shares: the latent layout it takes and the uint8 frames it gives."""
from __future__ import annotations

import torch

LATENT_CHANNELS = 16


def pixel_frames(latent_frames: int) -> int:
    """Pixel frames decoded from ``latent_frames`` latent frames (4F - 3)."""
    return 4 * latent_frames - 3 if latent_frames > 0 else 0


def check_latents(latents) -> torch.Tensor:
    """``latents`` if it is a floating-point [B, F, 16, h, w] tensor with at least one of each; else ValueError."""
    is_tensor = isinstance(latents, torch.Tensor)
    if not is_tensor or latents.dim() != 5 or latents.shape[2] != LATENT_CHANNELS or 0 in latents.shape:
        got = f"shape {tuple(latents.shape)}" if is_tensor else f"a {type(latents).__name__}"
        raise ValueError(f"latents must be a [B, F, {LATENT_CHANNELS}, h, w] tensor with B, F, h, w >= 1, got {got}")
    if not latents.is_floating_point():
        raise ValueError(f"latents must be a floating-point tensor, got {latents.dtype}")
    return latents


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> [B, T, H, W, 3] uint8 on the CPU, as Self Forcing does it:
    x * 0.5 + 0.5, then :func:`unit_to_uint8`."""
    return unit_to_uint8(video.float() * 0.5 + 0.5)


def unit_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[B, 3, T, H, W] in [0, 1] -> [B, T, H, W, 3] uint8 on the CPU: clamped to [0, 1], times 255,
    truncated (Self Forcing's frames go through ``torchvision.io.write_video``, which casts the
    float frames to uint8)."""
    video = (255.0 * video.float().clamp(0, 1)).to(torch.uint8)
    return video.permute(0, 2, 3, 4, 1).cpu()


__all__ = ["LATENT_CHANNELS", "check_latents", "pixel_frames", "to_uint8", "unit_to_uint8"]
