"""Causal Wan2.1 DiT as Self Forcing runs it, on FLEX's ring KV cache and fused ops.

Parameter names and shapes are Wan2.1's (``WanModel``), so a Self Forcing / CausVid / LongLive
generator state dict loads with ``strict=True`` once its ``model.`` prefix is stripped (see
:mod:`flex.models.checkpoint`). The numerics follow Wan:

* patchify with a Conv3d (kernel = stride = patch), tokens in (frame, row, column) order;
* timestep -> sinusoidal(freq_dim) of the raw t in [cos, sin] order (float64) ->
  time_embedding -> e; e0 = time_projection(e) in 6 chunks, one set per latent frame;
* each block: x += gate * self_attn(norm1(x) * (1 + scale) + shift);
  x += cross_attn(norm3(x), text); x += gate_ffn * ffn(norm2(x) * (1 + scale_ffn) + shift_ffn);
* qk RMSNorm over the full width (fp32), Wan's interleaved 3D RoPE (temporal / height / width
  planes = C - 2 (C // 3), C // 3, C // 3 of the C = head_dim / 2 planes);
* head: (head.modulation + e) -> shift, scale; out = head(norm(x) * (1 + scale) + shift),
  unpatchified to [B, F, out_dim, H, W].

Precision: Linear / Conv layers run in the parameters' dtype. The residual stream, the time
embedding and all modulation math run in float32 (float64 when the model is float64) with the
weights they use upcast -- original Wan's convention (it runs these under
``autocast(float32)``). ``fp32_modulation=False`` instead keeps everything in the parameter
dtype, which is what Self Forcing's all-bf16 generator does (its autocasts are commented out).

Self-attention of a chunk goes through :func:`flex.ops.norm_rope_cache_write` (qk-norm, RoPE,
k/v straight into their ring slots) and :func:`flex.ops.ring_attention` (queries against every
resident slot). :meth:`CausalWanModel.forward_full` is the plain dense-attention twin: the
whole sequence at once, with an explicit frame mask and explicit positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..cache import RingKVCache
from ..rope import Rope3D, axis_planes

# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class WanConfig:
    """Architecture of a Wan2.1 DiT (the fields of Wan's config.json, plus text_dim)."""

    dim: int = 1536
    ffn_dim: int = 8960
    num_heads: int = 12
    num_layers: int = 30
    text_len: int = 512
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    eps: float = 1e-6
    rope_base: float = 10000.0

    def __post_init__(self):
        for name in ("dim", "ffn_dim", "num_heads", "num_layers", "text_len", "text_dim", "freq_dim",
                     "in_dim", "out_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        axis_planes(self.head_dim)  # raises a ValueError naming head_dim when it cannot split
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim must be even, got {self.freq_dim}")
        patch = tuple(self.patch_size)
        if len(patch) != 3 or any(not isinstance(p, int) or p < 1 for p in patch):
            raise ValueError(f"patch_size must be 3 ints >= 1, got {self.patch_size!r}")
        if patch[0] != 1:
            raise ValueError(f"patch_size[0] (temporal) must be 1 for per-frame causal generation, got {patch}")
        object.__setattr__(self, "patch_size", patch)
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_dict(cls, d: Mapping) -> "WanConfig":
        """From a Wan config.json dict; unknown keys (model_type, _class_name, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: (tuple(v) if k == "patch_size" else v) for k, v in d.items() if k in names}
        return cls(**kwargs)


WAN_PRESETS: dict[str, WanConfig] = {
    "wan2.1-t2v-1.3b": WanConfig(),
    "tiny": WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, text_len=16, text_dim=32, freq_dim=32),
}


def wan_config(name: str | WanConfig = "wan2.1-t2v-1.3b", **overrides) -> WanConfig:
    """A preset by name (see ``WAN_PRESETS``), with optional field overrides."""
    if isinstance(name, WanConfig):
        cfg = name
    elif name in WAN_PRESETS:
        cfg = WAN_PRESETS[name]
    else:
        raise ValueError(f"preset must be one of {sorted(WAN_PRESETS)}, got {name!r}")
    return replace(cfg, **overrides) if overrides else cfg


# ---------------------------------------------------------------- small pieces


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding [N, dim] of raw timesteps t [N]: [cos, sin], float64."""
    half = dim // 2
    pos = t.to(torch.float64).flatten()
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat((angles.cos(), angles.sin()), dim=1)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A Linear evaluated in x's dtype (weights cast to it)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 (float64 for float64 input), returned in x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x):
        dt = _compute_dtype(x)
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
        xf = x.to(_compute_dtype(x))
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


# ---------------------------------------------------------------- caches and positions


@dataclass
class TextCache:
    """Cross-attention K/V of one (batch of) prompt(s), one (k, v) per layer."""

    kv: list
    batch: int

    def __len__(self):
        return len(self.kv)


class WanKVCache:
    """One :class:`flex.cache.RingKVCache` per layer, all with the same slot bookkeeping."""

    def __init__(self, num_layers, batch, num_heads, head_dim, grid_h, grid_w, sink_frames, window_frames,
                 dtype=torch.float32, device=None):
        self.grid_h, self.grid_w = grid_h, grid_w
        self.layers = [
            RingKVCache(batch, num_heads, head_dim, grid_h * grid_w, sink_frames, window_frames, dtype, device)
            for _ in range(num_layers)
        ]

    sink_frames = property(lambda self: self.layers[0].sink_frames)
    window_frames = property(lambda self: self.layers[0].window_frames)
    tokens_per_frame = property(lambda self: self.layers[0].tokens_per_frame)
    n_slots = property(lambda self: self.layers[0].n_slots)
    slot_frame = property(lambda self: self.layers[0].slot_frame)
    frames_written = property(lambda self: self.layers[0].frames_written)
    dtype = property(lambda self: self.layers[0].k.dtype)
    device = property(lambda self: self.layers[0].k.device)
    batch = property(lambda self: self.layers[0].k.shape[0])

    def slots(self, first_frame: int, n_frames: int) -> torch.Tensor:
        return self.layers[0].slots(first_frame, n_frames)

    def slot_frame_after(self, first_frame: int, n_frames: int, slots: torch.Tensor | None = None) -> torch.Tensor:
        """``slot_frame`` as it will be once frames [first_frame, +n_frames) are written (device ops)."""
        slots = self.slots(first_frame, n_frames) if slots is None else slots
        frames = torch.arange(first_frame, first_frame + n_frames, device=self.device)
        return self.slot_frame.clone().index_copy_(0, slots, frames)

    def matches(self, batch, grid_h, grid_w, sink_frames, window_frames, dtype, device) -> bool:
        return (self.batch, self.grid_h, self.grid_w, self.sink_frames, self.window_frames, self.dtype) == (
            batch, grid_h, grid_w, sink_frames, window_frames, dtype) and self.device == torch.device(device)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()

    def data_ptrs(self) -> list[int]:
        return [p for layer in self.layers for p in (layer.k.data_ptr(), layer.v.data_ptr(), layer.slot_frame.data_ptr())]


@dataclass
class ChunkRope:
    """RoPE tables of one chunk, computed once and shared by every layer and pass.

    freqs_t [n_frames, C_t, 2] rotates the chunk's queries (and its keys unless keys are
    rotated on load); freqs_h / freqs_w the rows and columns; key_freqs_t [n_slots, C_t, 2]
    (or None) is the temporal rotation of each ring slot's keys applied at read time.
    """

    freqs_t: torch.Tensor
    freqs_h: torch.Tensor
    freqs_w: torch.Tensor
    key_freqs_t: torch.Tensor | None
    scale: float

    @property
    def rotate_on_load(self) -> bool:
        return self.key_freqs_t is not None


def chunk_rope(
    rope: Rope3D,
    cache: WanKVCache,
    first_frame: int,
    n_frames: int,
    *,
    rotate_on_load: bool = False,
    position_shift: int = 0,
    scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> ChunkRope:
    """Tables of chunk [first_frame, +n_frames) with positions shifted for sliding windows.

    A query of frame f sits at position f - position_shift; a key of frame f at position f
    when f is a sink frame (f < cache.sink_frames), else f - position_shift. position_shift 0
    is Wan's absolute positions; a shift needs ``rotate_on_load`` (cached keys carry no
    temporal rotation then, and the key table is rebuilt from the slots' frames).
    """
    if not isinstance(position_shift, int) or position_shift < 0:
        raise ValueError(f"position_shift must be an int >= 0, got {position_shift!r}")
    if position_shift and not rotate_on_load:
        raise ValueError("position_shift > 0 needs rotate_on_load=True (pre-rotated keys cannot move)")
    if position_shift > first_frame:
        raise ValueError(f"position_shift ({position_shift}) must not exceed first_frame ({first_frame})")
    head_dim = 2 * (rope.thetas_t.numel() + rope.thetas_h.numel() + rope.thetas_w.numel())
    scale = head_dim ** -0.5 if scale is None else float(scale)
    ft, fh, fw = rope.tables(first_frame - position_shift, n_frames, cache.grid_h, cache.grid_w, cache.device, dtype)
    key_ft = None
    if rotate_on_load:
        frames = cache.slot_frame_after(first_frame, n_frames)
        pos = torch.where(frames < cache.sink_frames, frames, frames - position_shift).clamp_min(0)
        key_ft = rope.temporal_table(pos, dtype)  # empty slots (-1) are masked; any row will do
    return ChunkRope(ft, fh, fw, key_ft, scale)


def _resolve_backends(backend) -> dict[str, str]:
    """{op: backend} for the two attention ops from a name or a mapping."""
    op_names = ("norm_rope_cache_write", "ring_attention")
    allowed = ("auto",) + ops.BACKENDS
    if isinstance(backend, str):
        if backend not in allowed:
            raise ValueError(f"backend must be one of {allowed} or a dict {{op: backend}}, got {backend!r}")
        usable = ops.available_backends() if backend != "auto" else []
        out = {}
        for op in op_names:
            # An available backend that lacks an op (sdpa, flash: attention only) leaves that op
            # to "auto"; an unavailable one is passed on so that ops names the reason.
            lacks = backend in usable and backend not in ops.available_backends(op)
            out[op] = "auto" if lacks else backend
        return out
    if isinstance(backend, Mapping):
        unknown = set(backend) - set(op_names)
        if unknown:
            raise ValueError(f"backend keys must be among {op_names}, got {sorted(unknown)}")
        for op, name in backend.items():
            if name not in allowed:
                raise ValueError(f"backend[{op!r}] must be one of {allowed}, got {name!r}")
        return {op: backend.get(op, "auto") for op in op_names}
    raise ValueError(f"backend must be a str or a dict {{op: backend}}, got {type(backend).__name__}")


@dataclass(frozen=True)
class PassKernels:
    """The two self-attention ops of a chunk pass, resolved to backend functions once.

    Dispatch (flex.ops) imports modules and checks arguments on every call; a pass resolves
    once and calls the backend functions directly, so torch.compile can trace it whole.
    """

    norm_rope_cache_write: Callable
    ring_attention: Callable
    # Whether ring_attention slices the resident prefix (sdpa, flash), so that its work depends
    # on resident_tokens; the masked kernels read the slot frames on the device instead.
    slices_resident_prefix: bool = False


def resolve_pass_kernels(backend, device, dtype, head_dim: int, rotate_on_load: bool) -> PassKernels:
    """PassKernels for a model pass (chunk_frames 0, resident prefix given, no lse)."""
    be = _resolve_backends(backend)
    device = torch.device(device)
    nrc = ops.resolve_backend("norm_rope_cache_write", be["norm_rope_cache_write"], device, dtype=dtype,
                              head_dim=head_dim)
    # Only whether key_freqs_t is given matters to the backends' supports().
    ra = ops.resolve_backend("ring_attention", be["ring_attention"], device, chunk_frames=0,
                             key_freqs_t=True if rotate_on_load else None, resident_tokens=0, return_lse=False,
                             dtype=dtype, head_dim=head_dim)
    return PassKernels(nrc.norm_rope_cache_write, ra.ring_attention, getattr(ra, "SLICES_RESIDENT_PREFIX", False))


# ---------------------------------------------------------------- the model


class CausalWanModel(nn.Module):
    """Wan2.1 T2V DiT generating chunk by chunk over a ring KV cache (Self Forcing style)."""

    def __init__(self, config: str | WanConfig = "wan2.1-t2v-1.3b", *, fp32_modulation: bool = True, **overrides):
        super().__init__()
        cfg = wan_config(config, **overrides)
        self.config = cfg
        self.fp32_modulation = fp32_modulation
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)

    # -- small properties
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def eps(self) -> float:
        return self.config.eps

    @property
    def param_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def stream_dtype(self) -> torch.dtype:
        """dtype of the residual stream, modulation and outputs (see module docstring)."""
        wdt = self.param_dtype
        if wdt == torch.float64 or not self.fp32_modulation:
            return wdt
        return torch.float32

    @property
    def table_dtype(self) -> torch.dtype:
        """RoPE tables: float64 for a float64 model, else float32."""
        return torch.float64 if self.param_dtype == torch.float64 else torch.float32

    def default_rope(self) -> Rope3D:
        """Wan's unmodified 3D RoPE for this head size."""
        return Rope3D.for_wan(self.head_dim, "none", base=self.config.rope_base)

    # -- caches
    def new_cache(self, batch: int, grid_h: int, grid_w: int, sink_frames: int = 0, window_frames: int = 21,
                  dtype: torch.dtype | None = None, device=None) -> WanKVCache:
        """Ring KV caches of every layer for a [grid_h x grid_w]-token frame grid."""
        return WanKVCache(self.num_layers, batch, self.num_heads, self.head_dim, grid_h, grid_w, sink_frames,
                          window_frames, dtype or self.param_dtype, device or self.device)

    def encode_text(self, context: torch.Tensor) -> TextCache:
        """Text embedding + every layer's cross-attention K/V of context [B, L <= text_len, text_dim].

        Like Wan, the context is zero-padded to text_len tokens and every token is attended.
        """
        cfg = self.config
        if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[-1] != cfg.text_dim \
                or not 1 <= context.shape[1] <= cfg.text_len:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"text must be [B, L <= {cfg.text_len}, {cfg.text_dim}], got {shape}")
        context = context.to(self.device, self.param_dtype)
        if context.shape[1] < cfg.text_len:
            pad = context.new_zeros(context.shape[0], cfg.text_len - context.shape[1], cfg.text_dim)
            context = torch.cat((context, pad), dim=1)
        emb = self.text_embedding(context)
        return TextCache([blk.cross_attn.text_kv(emb) for blk in self.blocks], context.shape[0])

    # -- shared trunk
    def _check_latents(self, x):
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[2] != cfg.in_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be latents [B, F, {cfg.in_dim}, H, W], got {shape}")
        _, ph, pw = cfg.patch_size
        if x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(f"latent height/width {tuple(x.shape[3:])} must be multiples of the patch {(ph, pw)}")

    def _timesteps(self, timestep, b, n, device) -> torch.Tensor:
        """[B, F] timesteps from a scalar, [F] or [B, F] (raw t, e.g. 937.5; float32 by default)."""
        t = torch.as_tensor(timestep, device=device)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.dim() > 2:
            raise ValueError(f"timestep must be a scalar, [F] or [B, F], got shape {tuple(t.shape)}")
        try:
            return t.expand(b, n)
        except RuntimeError:
            raise ValueError(f"timestep must broadcast to [B={b}, F={n}], got shape {tuple(t.shape)}") from None

    def forward_with_attention(self, x, timestep, text, attend) -> torch.Tensor:
        """Patchify, time embedding, blocks, head, unpatchify, with self-attention done by
        ``attend(layer_index, self_attn_module, q, k, v) -> [B, T, H, D]`` (q, k, v are the raw
        projections). forward() and forward_full() plug their caches in here; so can callers."""
        cfg = self.config
        b, n, c, h, w = x.shape
        if not isinstance(text, TextCache):
            text = self.encode_text(text)
        if text.batch != b or len(text) != self.num_layers:
            raise ValueError(f"text was encoded for batch {text.batch}, but x has batch {b}")
        sdt, wdt = self.stream_dtype, self.param_dtype
        t = self._timesteps(timestep, b, n, x.device)

        # Time embedding and projection in the stream dtype (float32 modulation).
        s = sinusoidal_embedding(cfg.freq_dim, t).to(sdt)
        te = self.time_embedding
        e = _linear(te[2], F.silu(_linear(te[0], s)))
        e0 = _linear(self.time_projection[1], F.silu(e))
        e, e0 = e.view(b, n, cfg.dim), e0.view(b, n, 6, cfg.dim)

        tokens = self.patch_embedding(x.to(wdt).transpose(1, 2))  # [B, dim, F, gh, gw]
        _, _, _, gh, gw = tokens.shape
        hs = tokens.flatten(2).transpose(1, 2).to(sdt)
        for i, blk in enumerate(self.blocks):
            hs = blk(hs, e0, n, text.kv[i], lambda attn, q, k, v, i=i: attend(i, attn, q, k, v))
        out = self.head(hs, e, n)  # [B, T, pt*ph*pw*C]
        pt, ph, pw = cfg.patch_size
        out = out.view(b, n, gh, gw, pt, ph, pw, cfg.out_dim).permute(0, 1, 4, 7, 2, 5, 3, 6)
        return out.reshape(b, n * pt, cfg.out_dim, gh * ph, gw * pw).to(sdt)

    # -- cached chunk step
    def forward(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache | torch.Tensor,
        cache: WanKVCache,
        first_frame: int,
        rope: ChunkRope | None = None,
        backend: str | Mapping[str, str] = "auto",
    ) -> torch.Tensor:
        """Flow prediction of chunk x [B, n, C, H, W] (frames first_frame..+n) at ``timestep``.

        The chunk's k/v are written into its ring slots (overwriting whatever an earlier pass of
        the same chunk wrote) and its queries attend to every resident slot, the chunk itself
        included (bidirectional inside a chunk). ``rope`` defaults to Wan's absolute positions.
        """
        self._check_latents(x)
        b, n, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        gh, gw = h // ph, w // pw
        if not isinstance(cache, WanKVCache) or len(cache.layers) != self.num_layers:
            raise ValueError("cache must be a WanKVCache of this model (see CausalWanModel.new_cache)")
        if (cache.grid_h, cache.grid_w, cache.batch) != (gh, gw, b):
            raise ValueError(
                f"cache was built for batch {cache.batch} and a {cache.grid_h}x{cache.grid_w} token grid, "
                f"got batch {b} and {gh}x{gw}")
        if cache.dtype != self.param_dtype:
            raise ValueError(f"cache dtype {cache.dtype} must equal the model's parameter dtype {self.param_dtype}")
        if not isinstance(first_frame, int) or first_frame < 0:
            raise ValueError(f"first_frame must be an int >= 0, got {first_frame!r}")
        slots = cache.slots(first_frame, n)  # also checks the chunk fits in the window
        frames = torch.arange(first_frame, first_frame + n, device=cache.device)
        if rope is None:
            rope = chunk_rope(self.default_rope(), cache, first_frame, n, dtype=self.table_dtype)
        kernels = resolve_pass_kernels(backend, x.device, self.param_dtype, self.head_dim, rope.rotate_on_load)
        for layer in cache.layers:  # host mirror of the device bookkeeping chunk_pass does
            layer.frames_written = max(layer.frames_written, first_frame + n)
        resident = cache.layers[0].resident_prefix_tokens()
        return self.chunk_pass(x, timestep, text, cache, slots, frames, rope, resident, kernels)

    def chunk_pass(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache,
        cache: WanKVCache,
        slots: torch.Tensor,
        frames: torch.Tensor,
        rope: ChunkRope,
        resident_tokens: int,
        kernels: "PassKernels",
    ) -> torch.Tensor:
        """forward() without validation or host bookkeeping: device tensors in, device work only.

        slots / frames [n] int64 (device): the ring slot and the frame index of each chunk frame;
        resident_tokens: the resident ring prefix once the chunk is written (for the unmasked
        backends). Every layer writes the chunk's k/v into its slots, records ``frames`` in its
        ``slot_frame`` and attends over the ring -- nothing is read back to the host, so the
        pass can be traced whole by torch.compile and captured in a CUDA graph.
        """
        _, _, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        gh, gw = h // ph, w // pw
        rotate_k_temporal = not rope.rotate_on_load

        def attend(i, attn, q, k, v):
            layer = cache.layers[i]
            q_rot = kernels.norm_rope_cache_write(
                q, k, v, attn.norm_q.weight, attn.norm_k.weight, self.eps, rope.freqs_t, rope.freqs_h,
                rope.freqs_w, gh, gw, 0, layer.k, layer.v, slots, rotate_k_temporal)
            layer.slot_frame.index_copy_(0, slots, frames)
            return kernels.ring_attention(q_rot, layer.k, layer.v, layer.slot_frame, gh * gw, 0, 0, rope.scale,
                                          rope.key_freqs_t, False, resident_tokens)

        return self.forward_with_attention(x, timestep, text, attend)

    # -- dense reference
    def forward_full(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache | torch.Tensor,
        mask: torch.Tensor | None = None,
        rope: Rope3D | Sequence[Rope3D] | None = None,
        *,
        query_pos: torch.Tensor | None = None,
        key_pos: torch.Tensor | None = None,
        scale: float | Sequence[float] | None = None,
    ) -> torch.Tensor:
        """The whole sequence x [B, F, C, H, W] through plain attention with an explicit mask.

        mask [F, F] bool: query frame a may see key frame b (default: all). Positions default
        to absolute frame indices; ``query_pos`` [F] and ``key_pos`` [F] or [F, F] (the key
        position of frame b as seen by query frame a) override them, and ``rope`` / ``scale``
        may be given per query frame -- enough to express any chunk-wise cached rollout
        (sliding windows, re-indexed positions, a RoPE scale that changes over time).
        Norms and RoPE are computed here independently of flex.ops (Wan's complex-number form).
        """
        self._check_latents(x)
        b, n, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        gh, gw = h // ph, w // pw
        tpf = gh * gw
        dev = x.device
        mask = torch.ones(n, n, dtype=torch.bool, device=dev) if mask is None else mask.to(dev, torch.bool)
        if mask.shape != (n, n):
            raise ValueError(f"mask must be [F, F] = [{n}, {n}], got {tuple(mask.shape)}")
        ropes = list(rope) if isinstance(rope, (list, tuple)) else [rope or self.default_rope()] * n
        if len(ropes) != n:
            raise ValueError(f"rope must be one Rope3D or one per frame ({n}), got {len(ropes)}")
        scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * n
        scales = [self.head_dim ** -0.5 if s is None else float(s) for s in scales]
        qp = torch.arange(n, device=dev) if query_pos is None else torch.as_tensor(query_pos, device=dev)
        kp = qp if key_pos is None else torch.as_tensor(key_pos, device=dev)
        kp = kp.expand(n, n) if kp.dim() == 1 else kp
        if qp.shape != (n,) or kp.shape != (n, n):
            raise ValueError(f"query_pos must be [F] and key_pos [F] or [F, F] with F = {n}")

        # Group query frames that see the same keys the same way (one group in the plain case).
        groups: dict = {}
        for a in range(n):
            key = (id(ropes[a]), tuple(kp[a].tolist()), tuple(mask[a].tolist()), scales[a])
            groups.setdefault(key, []).append(a)
        all_tok = torch.arange(n * tpf, device=dev)
        token_frame, hh, ww = all_tok // tpf, (all_tok // gw) % gh, all_tok % gw
        sdt = self.stream_dtype if self.stream_dtype == torch.float64 else torch.float32

        def angles(r: Rope3D, t_pos, tok):
            """[T, D/2] float64 rotation angles of tokens ``tok`` at temporal positions t_pos [T]."""
            return torch.cat((
                t_pos.to(torch.float64)[:, None] * r.thetas_t.to(dev)[None],
                hh[tok].to(torch.float64)[:, None] * r.thetas_h.to(dev)[None],
                ww[tok].to(torch.float64)[:, None] * r.thetas_w.to(dev)[None]), dim=1)

        def apply_rope(z, ang):
            zc = torch.view_as_complex(z.to(torch.float64).reshape(*z.shape[:-1], -1, 2))
            rot = torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
            return torch.view_as_real(zc * rot).flatten(-2).to(sdt)

        def attend(i, attn, q, k, v):
            qn = attn.norm_q(q.flatten(2)).view_as(q)
            kn = attn.norm_k(k.flatten(2)).view_as(k)
            out = torch.zeros(q.shape, dtype=sdt, device=dev)
            for (_, _, _, sc), frames in groups.items():
                a0 = frames[0]
                r = ropes[a0]
                q_tok = torch.cat([torch.arange(a * tpf, (a + 1) * tpf, device=dev) for a in frames])
                qr = apply_rope(qn[:, q_tok], angles(r, qp[token_frame[q_tok]], q_tok))
                kr = apply_rope(kn, angles(r, kp[a0][token_frame], all_tok))
                logits = torch.einsum("bqhd,bkhd->bhqk", qr, kr) * sc
                visible = mask[a0][token_frame]  # [Tk]
                logits = logits.masked_fill(~visible[None, None, None, :], float("-inf"))
                probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
                out[:, q_tok] = torch.einsum("bhqk,bkhd->bqhd", probs, v.to(sdt))
            return out.to(q.dtype)

        return self.forward_with_attention(x, timestep, text, attend)


__all__ = [
    "CausalWanModel", "ChunkRope", "PassKernels", "resolve_pass_kernels", "TextCache", "WAN_PRESETS", "WanConfig", "WanKVCache", "chunk_rope",
    "sinusoidal_embedding", "wan_config",
]
