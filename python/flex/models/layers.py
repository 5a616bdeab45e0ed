"""The layers of the Wan2.1 DiT (parameter names and numerics of Wan's ``WanModel``).

Precision: Linear / Conv layers run in the parameters' dtype; norms compute in float32
(float64 for float64 input). Self-attention itself is pluggable (``attend``), so the ring-cache
pass, the dense twin and the upstream-style benchmark share every other line of the block.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import WanConfig


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding [N, dim] of raw timesteps t [N]: [cos, sin], float64."""
    half = dim // 2
    pos = t.to(torch.float64).flatten()
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat((angles.cos(), angles.sin()), dim=1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def linear_in(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in x's dtype (weights cast to it)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (float64 for float64 input), returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x):
        dt = compute_dtype(x)
        w = None if self.weight is None else self.weight.to(dt)
        b = None if self.bias is None else self.bias.to(dt)
        return F.layer_norm(x.to(dt), self.normalized_shape, w, b, self.eps).to(x.dtype)


class WanRMSNorm(nn.Module):
    """Wan's RMSNorm: normalised in float32, cast back to x's dtype, then times the weight."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.to(compute_dtype(x))
        y = (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)).to(x.dtype)
        return y * self.weight.to(x.dtype)


class WanSelfAttention(nn.Module):
    """Projections and qk-norm weights of self-attention; attention itself is pluggable."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim, self.eps = num_heads, dim // num_heads, eps
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def forward(self, x, attend: Callable):
        """x [B, T, dim] -> o(attend(q, k, v)); q, k, v are raw projections [B, T, H, D]."""
        b, t = x.shape[:2]
        shape = (b, t, self.num_heads, self.head_dim)
        out = attend(self, self.q(x).view(shape), self.k(x).view(shape), self.v(x).view(shape))
        return self.o(out.reshape(b, t, -1))


class WanCrossAttention(nn.Module):
    """Text cross-attention over all text_len tokens (Wan passes no text mask)."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps)
        self.norm_k = WanRMSNorm(dim, eps)

    def text_kv(self, context):
        """K, V [B, H, L, D] of the embedded text (computed once per prompt)."""
        b, n = context.shape[:2]
        k = self.norm_k(self.k(context)).view(b, n, self.num_heads, self.head_dim)
        v = self.v(context).view(b, n, self.num_heads, self.head_dim)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x, kv):
        b, t = x.shape[:2]
        q = self.norm_q(self.q(x)).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = kv
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype))
        return self.o(out.transpose(1, 2).reshape(b, t, -1))


class WanAttentionBlock(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = WanLayerNorm(dim, cfg.eps)
        self.self_attn = WanSelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = WanLayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = WanLayerNorm(dim, cfg.eps)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x, e0, n_frames: int, text_kv, attend: Callable):
        """x [B, T, dim] (stream dtype), e0 [B, F, 6, dim] (stream dtype)."""
        wdt = self.modulation.dtype
        mod = (self.modulation.to(e0.dtype).unsqueeze(1) + e0).chunk(6, dim=2)  # each [B, F, 1, dim]

        def modulate(h, shift, scale):
            return (h.unflatten(1, (n_frames, -1)) * (1 + scale) + shift).flatten(1, 2)

        def gated(y, gate):
            return (y.to(x.dtype).unflatten(1, (n_frames, -1)) * gate).flatten(1, 2)

        y = self.self_attn(modulate(self.norm1(x), mod[0], mod[1]).to(wdt), attend)
        x = x + gated(y, mod[2])
        x = x + self.cross_attn(self.norm3(x).to(wdt), text_kv).to(x.dtype)
        y = self.ffn(modulate(self.norm2(x), mod[3], mod[4]).to(wdt))
        return x + gated(y, mod[5])


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.norm = WanLayerNorm(cfg.dim, cfg.eps)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim ** 0.5)

    def forward(self, x, e, n_frames: int):
        """x [B, T, dim], e [B, F, dim] (the time embedding, before time_projection)."""
        shift, scale = (self.modulation.to(e.dtype).unsqueeze(1) + e.unsqueeze(2)).chunk(2, dim=2)
        h = (self.norm(x).unflatten(1, (n_frames, -1)) * (1 + scale) + shift).flatten(1, 2)
        return self.head(h.to(self.head.weight.dtype))



__all__ = ["Head", "WanAttentionBlock", "WanCrossAttention", "WanLayerNorm", "WanRMSNorm", "WanSelfAttention", "compute_dtype", "linear_in", "sinusoidal_embedding"]
