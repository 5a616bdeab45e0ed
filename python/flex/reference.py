"""Plain-PyTorch float64 references that every kernel is tested against.

Readable rather than fast. Each function computes in float64 and rounds once to the input
dtype, which is the accuracy the kernels aim for (fp32 compute, one rounding on store).
"""
from __future__ import annotations

import torch


def _token_grid(n_tokens: int, grid_h: int, grid_w: int, device):
    """(f, h, w) of each token of a chunk laid out in (f, h, w) order."""
    t = torch.arange(n_tokens, device=device)
    return t // (grid_h * grid_w), (t // grid_w) % grid_h, t % grid_w


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[..., 2p], x[..., 2p+1]) by per-plane (cos, sin)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def rope_cos_sin(n_tokens, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset=0, rotate_temporal=True):
    """Per-token (cos, sin), each [T, Hh, D/2] float64, for a chunk in (f, h, w) order.

    ``freqs_t`` is [N, C_t, 2] (every head alike: Hh = 1) or [N, H, C_t, 2] (a temporal table
    per head: Hh = H).
    """
    f, h, w = _token_grid(n_tokens, grid_h, grid_w, freqs_t.device)
    ft = freqs_t.to(torch.float64)[f + frame_offset]
    ft = ft[:, None] if ft.dim() == 3 else ft  # [T, Hh, C_t, 2]
    if not rotate_temporal:
        ft = torch.stack((torch.ones_like(ft[..., 0]), torch.zeros_like(ft[..., 1])), dim=-1)
    heads = ft.shape[1]
    spatial = torch.cat((freqs_h.to(torch.float64)[h], freqs_w.to(torch.float64)[w]), dim=1)
    table = torch.cat((ft, spatial[:, None].expand(-1, heads, -1, -1)), dim=2)
    return table[..., 0], table[..., 1]


def rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset=0, rotate_temporal=True):
    """Wan 3D RoPE of x [B, T, H, D] (tokens in (f, h, w) order), float64 math."""
    cos, sin = rope_cos_sin(x.shape[1], freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset, rotate_temporal)
    out = _rotate(x.to(torch.float64), cos[None], sin[None])
    return out.to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm of x [B, T, H, D] over the full H*D width of each token (as Wan's qk norm)."""
    x64 = x.to(torch.float64)
    rms = torch.rsqrt(x64.pow(2).mean(dim=(-2, -1), keepdim=True) + eps)
    y = x64 * rms
    if weight is not None:
        y = y * weight.to(torch.float64).reshape(x.shape[-2], x.shape[-1])
    return y


def norm_rope_cache_write(
    q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
    frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal=True,
):
    """RMSNorm + 3D RoPE of q and k, k and v written to their ring-cache slots; returns q.

    Norms are applied only where a weight is given. With ``rotate_k_temporal=False`` the cached
    keys keep their temporal planes unrotated (rotate-on-load reads them later).
    """
    def norm(x, w):
        return rms_norm(x, w, eps) if w is not None else x.to(torch.float64)

    qn, kn = norm(q, norm_q_weight), norm(k, norm_k_weight)
    q_out = rope3d(qn, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset).to(q.dtype)
    k_rot = rope3d(kn, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset, rotate_k_temporal)
    b, t, h, d = k.shape
    tpf = grid_h * grid_w
    n_frames = t // tpf
    slots = frame_slots.to(k_cache.device, torch.int64)
    k_cache.view(b, -1, tpf, h, d).index_copy_(1, slots, k_rot.reshape(b, n_frames, tpf, h, d).to(k_cache.dtype))
    v_cache.view(b, -1, tpf, h, d).index_copy_(1, slots, v.reshape(b, n_frames, tpf, h, d).to(v_cache.dtype))
    return q_out


def visible_keys(slot_frame, tokens_per_frame, n_queries, q_first_frame, chunk_frames=0):
    """[Tq, Tk] bool: which cached key token each query token may attend to.

    Key j lives in slot j // tpf and holds frame slot_frame[slot] (-1 = empty, never visible).
    With chunk_frames > 0 the order is block-causal over chunks aligned at q_first_frame:
    query frame q_first_frame + i // tpf sees frames before the end of its own chunk.
    """
    key_frame = slot_frame.to(torch.int64).repeat_interleave(tokens_per_frame)
    visible = (key_frame >= 0)[None, :].expand(n_queries, -1)
    if chunk_frames and chunk_frames > 0:
        q_rel = torch.arange(n_queries, device=slot_frame.device) // tokens_per_frame
        chunk_end = q_first_frame + (q_rel // chunk_frames + 1) * chunk_frames
        visible = visible & (key_frame[None, :] < chunk_end[:, None])
    return visible


def rotate_keys_on_load(k_cache, key_freqs_t, tokens_per_frame):
    """Apply the temporal rotation of each slot (key_freqs_t [n_slots, C_t, 2], or
    [n_slots, H, C_t, 2] with a table per head) to cached keys."""
    k64 = k_cache.to(torch.float64)
    ft = key_freqs_t.to(torch.float64).repeat_interleave(tokens_per_frame, dim=0)
    ft = ft[:, None] if ft.dim() == 3 else ft  # [Tk, Hh, C_t, 2]
    ct = ft.shape[2]
    cos, sin = ft[..., 0][None], ft[..., 1][None]
    out = k64.clone()
    out[..., : 2 * ct] = _rotate(k64[..., : 2 * ct], cos, sin)
    return out


def ring_attention(
    q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame=0, chunk_frames=0,
    scale=None, key_freqs_t=None, return_lse=False,
):
    """Attention of a chunk's queries q [B, Tq, H, D] over every resident ring-cache slot.

    Masked by ``visible_keys``; ``key_freqs_t`` enables rotate-on-load. Queries that see no
    key get output 0 and lse -inf. Returns out (q.dtype), plus lse [B, H, Tq] float32 if asked.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = rotate_keys_on_load(k_cache, key_freqs_t, tokens_per_frame) if key_freqs_t is not None else k_cache.to(torch.float64)
    visible = visible_keys(slot_frame, tokens_per_frame, q.shape[1], q_first_frame, chunk_frames)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.to(torch.float64), k) * scale
    logits = logits.masked_fill(~visible[None, None], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse[..., None]).nan_to_num(0.0)  # rows with no key: all zero
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v_cache.to(torch.float64)).to(q.dtype)
    return (out, lse.to(torch.float32)) if return_lse else out
