"""The upstream-style path, rewritten here so both are measured in one run.

It follows how the public Self Forcing code computes a chunk's self-attention inputs:
qk RMSNorm as separate ops (fp32, cast back, times the weight), RoPE as a float64 complex
multiply against a table of the first 1024 positions, a KV cache that evicts by shifting the
whole window with a copy, and attention over a contiguous slice of that cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from flex.cache import SlotTable
from flex.models.wan import CausalWanModel
from flex.rope import axis_planes, base_thetas

MAX_POSITIONS = 1024  # upstream's table size: frame indices past it crash


def rope_table(head_dim: int, device) -> torch.Tensor:
    """complex128 [1024, D/2] = concat of the three axis tables, as upstream precomputes."""
    pos = torch.arange(MAX_POSITIONS, dtype=torch.float64)
    tables = [torch.polar(torch.ones(MAX_POSITIONS, p, dtype=torch.float64), torch.outer(pos, base_thetas(p)))
              for p in axis_planes(head_dim)]
    return torch.cat(tables, dim=1).to(device)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """[B, T, H*D] RMSNorm in fp32, cast back, times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)).type_as(x) * weight


def rope_apply(x: torch.Tensor, table: torch.Tensor, n_frames: int, grid_h: int, grid_w: int, start_frame: int):
    """x [B, T, H, D] rotated with a float64 complex multiply, per sample."""
    b, t, h, d = x.shape
    ct, ch, cw = axis_planes(d)
    tt, th, tw = table.split([ct, ch, cw], dim=1)
    freqs = torch.cat([
        tt[start_frame:start_frame + n_frames].view(n_frames, 1, 1, -1).expand(n_frames, grid_h, grid_w, -1),
        th[:grid_h].view(1, grid_h, 1, -1).expand(n_frames, grid_h, grid_w, -1),
        tw[:grid_w].view(1, 1, grid_w, -1).expand(n_frames, grid_h, grid_w, -1),
    ], dim=-1).reshape(t, 1, -1)
    out = []
    for i in range(b):
        xi = torch.view_as_complex(x[i].to(torch.float64).reshape(t, h, -1, 2))
        out.append(torch.view_as_real(xi * freqs).flatten(2))
    return torch.stack(out).type_as(x)


class ShiftingCache:
    """Upstream-style cache: a contiguous buffer whose window is shifted left by copying.

    Like upstream, the fill index lives on the device and is read back with .item() at every
    write (a host sync per layer and pass). The passes of one chunk overwrite its tokens.
    """

    def __init__(self, batch, heads, head_dim, tokens_per_frame, sink_frames, window_frames, dtype, device):
        self.tpf, self.sink = tokens_per_frame, sink_frames
        cap = (sink_frames + window_frames) * tokens_per_frame
        self.k = torch.zeros(batch, cap, heads, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)
        self.end_index = torch.zeros((), dtype=torch.int64, device=device)
        self.end = 0  # tokens filled (host copy of end_index)
        self.chunk_start = None  # first frame of the chunk occupying the last tokens

    def write(self, k, v, first_frame=None):
        n = k.shape[1]
        cap = self.k.shape[1]
        self.end = int(self.end_index.item())
        if first_frame is not None and first_frame == self.chunk_start:
            self.end -= n  # another pass of the same chunk: overwrite it
        elif self.end + n > cap:  # evict the oldest window tokens by shifting the rest left
            sink = self.sink * self.tpf
            drop = self.end + n - cap
            keep = self.end - sink - drop
            self.k[:, sink:sink + keep] = self.k[:, sink + drop:self.end].clone()
            self.v[:, sink:sink + keep] = self.v[:, sink + drop:self.end].clone()
            self.end -= drop
        self.k[:, self.end:self.end + n] = k
        self.v[:, self.end:self.end + n] = v
        self.end += n
        self.end_index.fill_(self.end)
        self.chunk_start = first_frame


def self_attention_inputs(q, k, v, wq, wk, table, cache, n_frames, grid_h, grid_w, start_frame, eps=1e-6):
    """Norm + RoPE + cache write of one chunk the upstream way; returns rotated q."""
    b, t, h, d = q.shape
    if start_frame + n_frames > MAX_POSITIONS:
        raise IndexError(f"upstream RoPE table has {MAX_POSITIONS} positions, frame {start_frame + n_frames - 1} requested")
    qn = rms_norm(q.reshape(b, t, h * d), wq, eps).view(b, t, h, d)
    kn = rms_norm(k.reshape(b, t, h * d), wk, eps).view(b, t, h, d)
    q_rot = rope_apply(qn, table, n_frames, grid_h, grid_w, start_frame)
    k_rot = rope_apply(kn, table, n_frames, grid_h, grid_w, start_frame)
    cache.write(k_rot, v, start_frame)
    return q_rot


def attention(q, cache: ShiftingCache, scale=None):
    """Attention over the contiguous filled slice of the shifting cache."""
    k = cache.k[:, :cache.end].transpose(1, 2)
    v = cache.v[:, :cache.end].transpose(1, 2)
    return F.scaled_dot_product_attention(q.transpose(1, 2), k, v, scale=scale).transpose(1, 2)


class UpstreamCaches:
    """One ShiftingCache per layer; quacks like the ring cache where the pipeline looks."""

    def __init__(self, model, batch, grid_h, grid_w, sink_frames, window_frames):
        self.grid_h, self.grid_w = grid_h, grid_w
        self.device = model.device
        self.layers = [ShiftingCache(batch, model.num_heads, model.head_dim, grid_h * grid_w, sink_frames,
                                     window_frames, model.param_dtype, model.device) for _ in range(model.num_layers)]
        self.rope_freqs = rope_table(model.head_dim, model.device)
        # The pipeline places each chunk on a slot table before calling the model; the twin
        # keeps its own shifting caches and ignores those positions.
        self.table = SlotTable(sink_frames, window_frames, grid_h * grid_w, model.device)


class UpstreamStyleWan(CausalWanModel):
    """The same DiT (same weights) whose self-attention runs the upstream-style path."""

    @classmethod
    def sharing_weights_of(cls, model: CausalWanModel) -> "UpstreamStyleWan":
        with torch.device("meta"):
            twin = cls(model.config, fp32_modulation=model.fp32_modulation)
        twin.load_state_dict(model.state_dict(), assign=True)
        return twin

    def new_cache(self, batch, grid_h, grid_w, sink_frames=0, window_frames=21, dtype=None, device=None):
        return UpstreamCaches(self, batch, grid_h, grid_w, sink_frames, window_frames)

    def forward(self, x, timestep, text, cache, first_frame, rope=None, backend="auto"):
        b, n, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        gh, gw = h // ph, w // pw

        def attend(i, attn, q, k, v):
            layer = cache.layers[i]
            q_rot = self_attention_inputs(q, k, v, attn.norm_q.weight, attn.norm_k.weight, cache.rope_freqs, layer,
                                          n, gh, gw, first_frame, self.eps)
            return attention(q_rot, layer)

        return self.forward_with_attention(x, timestep, text, attend)
