"""Fused qk-RMSNorm + Wan 3D RoPE + ring-cache write, one launch for q, k and v.

One program handles one token of one batch element: it loads the token's full H*D row of q
(and k), so the RMSNorm over the whole width is a register reduction, then rotates the
interleaved pairs (2p, 2p+1) plane by plane. Even and odd elements are loaded as two
[BLOCK_H, BLOCK_P] tiles through stride-2 pointers, so a rotation is plain elementwise math:

    even' = even * cos - odd * sin,   odd' = even * sin + odd * cos

Plane p takes its (cos, sin) from the temporal table (p < C_t, row frame_offset + f, and the
head's own row where the table has one per head, [N, H, C_t, 2]), the height table (next C_h planes, row h) or the width table (the rest, row w). k is stored
straight into its ring slot (cache token slot * tpf + (h * grid_w + w)), v is copied there.
All math is float32; each output is rounded once on store.

The frame offset is either a host int or a device int tensor read inside the kernel, so a
step can be captured in a CUDA graph without baking the offset in.

Device indices are range-masked, never trusted (no host sync can check them):
  * a frame whose ring slot (frame_slots) is outside [0, n_slots) gets its rotated q but no
    cache write, like the CUDA kernel;
  * a frame whose temporal row (frame offset + f) is outside freqs_t reads no table row: its
    temporal planes are left unrotated (cos 1, sin 0).
flex.ops rejects both on the host where it can; these rules keep direct callers memory safe.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (
    INDEX_DTYPES, INT64_MIN, TABLE_DTYPES, autotune, check_device, check_index_vector, check_rows, check_table,
    launch_meta, next_pow2, register_op, split_index,
)

_CONFIGS = [triton.Config({}, num_warps=w, num_stages=1) for w in (1, 2, 4, 8)]


@autotune(configs=_CONFIGS, key=["H", "D", "HAS_KV"], fixed={})
@triton.jit
def _norm_rope_cache_kernel(
    q_ptr, k_ptr, v_ptr, qo_ptr, kc_ptr, vc_ptr, wq_ptr, wk_ptr,
    ft_ptr, fh_ptr, fw_ptr, off_ptr, slot_ptr,
    H, D, grid_w, tpf, frame_offset, n_rows_t, n_slots, eps,
    s_qb, s_qt, s_qh,
    s_kb, s_kt, s_kh,
    s_vb, s_vt, s_vh,
    s_ob, s_ot, s_oh,
    s_kcb, s_kct, s_kch,
    s_vcb, s_vct, s_vch,
    s_ft, s_fth, s_fh, s_fw, s_slot,
    CT: tl.constexpr, CH: tl.constexpr,
    HAS_QW: tl.constexpr, HAS_KW: tl.constexpr, HAS_KV: tl.constexpr,
    OFFSET_PTR: tl.constexpr, ROT_K_T: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    f = t // tpf
    hw = t - f * tpf
    row_h = hw // grid_w
    row_w = hw - row_h * grid_w
    if OFFSET_PTR:
        row_t = tl.load(off_ptr).to(tl.int64) + f
    else:
        row_t = frame_offset + f

    heads = tl.arange(0, BLOCK_H).to(tl.int64)  # head offsets: heads * stride may pass 2**31
    planes = tl.arange(0, BLOCK_P)
    n_planes = D // 2
    pmask = planes < n_planes
    mask = (heads < H)[:, None] & pmask[None, :]
    width = H * D

    # Per-plane (cos, sin): temporal planes first, then height, then width.
    is_t = planes < CT
    row_t_ok = (row_t >= 0) & (row_t < n_rows_t)
    is_h = (planes >= CT) & (planes < CT + CH)
    is_w = (planes >= CT + CH) & pmask
    p_h = tl.maximum(planes - CT, 0)
    p_w = tl.maximum(planes - CT - CH, 0)
    # Temporal (cos, sin) per head: s_fth is 0 for a table shared by every head.
    t_rows = ft_ptr + row_t * s_ft + heads[:, None] * s_fth + 2 * planes[None, :]
    t_mask = (heads < H)[:, None] & (is_t & row_t_ok)[None, :]
    cos_t = tl.load(t_rows, mask=t_mask, other=1.0).to(tl.float32)
    sin_t = tl.load(t_rows + 1, mask=t_mask, other=0.0).to(tl.float32)
    cos_h = tl.load(fh_ptr + row_h * s_fh + 2 * p_h, mask=is_h, other=1.0).to(tl.float32)
    sin_h = tl.load(fh_ptr + row_h * s_fh + 2 * p_h + 1, mask=is_h, other=0.0).to(tl.float32)
    cos_w = tl.load(fw_ptr + row_w * s_fw + 2 * p_w, mask=is_w, other=1.0).to(tl.float32)
    sin_w = tl.load(fw_ptr + row_w * s_fw + 2 * p_w + 1, mask=is_w, other=0.0).to(tl.float32)
    cos = tl.where(is_t[None, :], cos_t, tl.where(is_h, cos_h, cos_w)[None, :])
    sin = tl.where(is_t[None, :], sin_t, tl.where(is_h, sin_h, sin_w)[None, :])

    # Element (head, 2p) of a row; +1 is its odd partner.
    w_off = heads[:, None] * D + 2 * planes[None, :]

    # ---- q: norm, rotate, store (contiguous output)
    q_row = q_ptr + b * s_qb + t * s_qt + heads[:, None] * s_qh + 2 * planes[None, :]
    qe = tl.load(q_row, mask=mask, other=0.0).to(tl.float32)
    qo = tl.load(q_row + 1, mask=mask, other=0.0).to(tl.float32)
    if HAS_QW:
        r = tl.rsqrt(tl.sum(tl.sum(qe * qe + qo * qo, axis=1), axis=0) / width + eps)
        qe = qe * r * tl.load(wq_ptr + w_off, mask=mask, other=0.0).to(tl.float32)
        qo = qo * r * tl.load(wq_ptr + w_off + 1, mask=mask, other=0.0).to(tl.float32)
    o_row = qo_ptr + b * s_ob + t * s_ot + heads[:, None] * s_oh + 2 * planes[None, :]
    tl.store(o_row, (qe * cos - qo * sin).to(qo_ptr.dtype.element_ty), mask=mask)
    tl.store(o_row + 1, (qe * sin + qo * cos).to(qo_ptr.dtype.element_ty), mask=mask)

    if HAS_KV:
        slot = tl.load(slot_ptr + f * s_slot).to(tl.int64)
        # A slot outside the cache writes nothing (and loads no k, v).
        slot_ok = (slot >= 0) & (slot < n_slots)
        kv_mask = mask & slot_ok
        c_tok = slot * tpf + hw
        # ---- k: norm, rotate (temporal planes optionally left for rotate-on-load), store in slot
        k_row = k_ptr + b * s_kb + t * s_kt + heads[:, None] * s_kh + 2 * planes[None, :]
        ke = tl.load(k_row, mask=kv_mask, other=0.0).to(tl.float32)
        ko = tl.load(k_row + 1, mask=kv_mask, other=0.0).to(tl.float32)
        if HAS_KW:
            rk = tl.rsqrt(tl.sum(tl.sum(ke * ke + ko * ko, axis=1), axis=0) / width + eps)
            ke = ke * rk * tl.load(wk_ptr + w_off, mask=mask, other=0.0).to(tl.float32)
            ko = ko * rk * tl.load(wk_ptr + w_off + 1, mask=mask, other=0.0).to(tl.float32)
        if ROT_K_T:
            cos_k = cos
            sin_k = sin
        else:
            cos_k = tl.where(is_t[None, :], 1.0, cos)
            sin_k = tl.where(is_t[None, :], 0.0, sin)
        kc_row = kc_ptr + b * s_kcb + c_tok * s_kct + heads[:, None] * s_kch + 2 * planes[None, :]
        tl.store(kc_row, (ke * cos_k - ko * sin_k).to(kc_ptr.dtype.element_ty), mask=kv_mask)
        tl.store(kc_row + 1, (ke * sin_k + ko * cos_k).to(kc_ptr.dtype.element_ty), mask=kv_mask)
        # ---- v: copy into the slot
        dims = tl.arange(0, 2 * BLOCK_P)
        vmask = (heads < H)[:, None] & (dims < D)[None, :] & slot_ok
        v_val = tl.load(v_ptr + b * s_vb + t * s_vt + heads[:, None] * s_vh + dims[None, :], mask=vmask, other=0.0)
        vc_row = vc_ptr + b * s_vcb + c_tok * s_vct + heads[:, None] * s_vch + dims[None, :]
        tl.store(vc_row, v_val.to(vc_ptr.dtype.element_ty), mask=vmask)


def _tables(freqs_t, freqs_h, freqs_w):
    # [N, C, 2] with (cos, sin) adjacent: the kernel indexes row * stride + 2 * plane (+1).
    return tuple(f.contiguous() for f in (freqs_t, freqs_h, freqs_w))


def _launch(q, k, v, q_out, k_cache, v_cache, wq, wk, ft, fh, fw, off_t, slots,
            grid_w, tpf, frame_offset, eps, has_kv, rotate_k_temporal):
    b, t, h, d = q.shape
    ct, ch = ft.shape[-2], fh.shape[1]
    fth = ft.stride(1) if ft.dim() == 4 else 0  # a temporal table per head, or one for all
    n_slots = k_cache.shape[1] // tpf if has_kv else 0
    # Unused pointer arguments get a read-only input (never dereferenced: constexpr-disabled).
    wrap_triton(_norm_rope_cache_kernel)[(t, b)](
        q, k, v, q_out, k_cache, v_cache,
        wq if wq is not None else q, wk if wk is not None else q,
        ft, fh, fw, off_t if off_t is not None else slots, slots,
        h, d, grid_w, tpf, frame_offset, ft.shape[0], n_slots, eps,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        q_out.stride(0), q_out.stride(1), q_out.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        ft.stride(0), fth, fh.stride(0), fw.stride(0), slots.stride(0),
        CT=ct, CH=ch,
        HAS_QW=wq is not None, HAS_KW=wk is not None, HAS_KV=has_kv,
        OFFSET_PTR=off_t is not None, ROT_K_T=rotate_k_temporal,
        BLOCK_H=next_pow2(h), BLOCK_P=next_pow2(d // 2),
        **launch_meta({"num_warps": 4}),
    )


def _new_like(x, *args):
    # Shape-only implementation (fake tensors): the rotated output is a contiguous copy of x.
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@register_op("flex_triton::norm_rope_cache_write", mutates_args={"k_cache", "v_cache"}, fake=_new_like)
def _norm_rope_cache_write_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    norm_q_weight: Optional[torch.Tensor], norm_k_weight: Optional[torch.Tensor], eps: float,
    freqs_t: torch.Tensor, freqs_h: torch.Tensor, freqs_w: torch.Tensor, grid_h: int, grid_w: int,
    frame_offset: int, frame_offset_t: Optional[torch.Tensor],
    k_cache: torch.Tensor, v_cache: torch.Tensor, frame_slots: torch.Tensor, rotate_k_temporal: bool,
) -> torch.Tensor:
    ft, fh, fw = _tables(freqs_t, freqs_h, freqs_w)
    wq = norm_q_weight.reshape(-1).contiguous() if norm_q_weight is not None else None
    wk = norm_k_weight.reshape(-1).contiguous() if norm_k_weight is not None else None
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    _launch(q, k, v, q_out, k_cache, v_cache, wq, wk, ft, fh, fw, frame_offset_t, frame_slots,
            grid_w, grid_h * grid_w, frame_offset, eps, True, rotate_k_temporal)
    return q_out


@register_op("flex_triton::rope3d", mutates_args={}, fake=_new_like)
def _rope3d_op(
    x: torch.Tensor, freqs_t: torch.Tensor, freqs_h: torch.Tensor, freqs_w: torch.Tensor,
    grid_h: int, grid_w: int, frame_offset: int, frame_offset_t: Optional[torch.Tensor],
) -> torch.Tensor:
    ft, fh, fw = _tables(freqs_t, freqs_h, freqs_w)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    # k/v/cache/slot arguments are placeholders; HAS_KV=False never touches them.
    _launch(x, x, x, out, x, x, None, None, ft, fh, fw, frame_offset_t, ft,
            grid_w, grid_h * grid_w, frame_offset, 1.0, False, True)
    return out


# ------------------------------------------------------------------ kernel preconditions + public API


def _check_rope_args(name, x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset):
    """What the kernel needs of x, the tables, the grid and the frame offset; returns the
    offset split into (host int, device tensor or None)."""
    check_rows(name, x, x.device)
    check_table("freqs_t", freqs_t, x.device, heads=x.shape[2])
    for fname, f in (("freqs_h", freqs_h), ("freqs_w", freqs_w)):
        check_table(fname, f, x.device)
    d = x.shape[-1]
    # Every plane of the head dim reads its (cos, sin) from exactly one table.
    planes = freqs_t.shape[-2] + freqs_h.shape[1] + freqs_w.shape[1]
    if 2 * planes != d:
        raise ValueError(f"freqs_t/h/w have {planes} planes in all but head dim {d} needs {d // 2}")
    for gname, g in (("grid_h", grid_h), ("grid_w", grid_w)):
        if not isinstance(g, int) or g < 1:
            raise ValueError(f"{gname} must be an int >= 1, got {g!r}")
    if x.shape[1] % (grid_h * grid_w):
        raise ValueError(f"token count {x.shape[1]} is not a multiple of grid_h * grid_w = {grid_h * grid_w}")
    if grid_h > freqs_h.shape[0] or grid_w > freqs_w.shape[0]:
        raise ValueError(f"freqs_h/freqs_w ({freqs_h.shape[0]}, {freqs_w.shape[0]} rows) are smaller than the grid ({grid_h}, {grid_w})")
    off, off_t = split_index("frame_offset", frame_offset, x.device, INT64_MIN)
    # A host offset is checked here (cheap); a device offset cannot be, so the kernel masks
    # temporal rows outside freqs_t (those frames keep their temporal planes unrotated).
    n_frames = x.shape[1] // (grid_h * grid_w)
    if off_t is None and not 0 <= off <= freqs_t.shape[0] - n_frames:
        raise ValueError(f"frame_offset = {off} needs temporal rows [{off}, {off} + {n_frames}) but freqs_t has "
                         f"{freqs_t.shape[0]} rows")
    return off, off_t


def rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset=0):
    """Wan 3D RoPE of x [B, T, H, D] (tokens in (f, h, w) order); returns a contiguous tensor.

    ``frame_offset`` is an int or a one-element int32/int64 tensor on x's device (read by the
    kernel: no host sync). Checks only what the kernel needs (flex.ops.rope3d validates the rest).
    """
    off, off_t = _check_rope_args("x", x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)
    return _rope3d_op(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, off, off_t)


def norm_rope_cache_write(
    q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
    frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal=True,
):
    """RMSNorm (over H*D, where a weight is given) + 3D RoPE of q and k; k, v into ring slots.

    Same semantics as :func:`flex.reference.norm_rope_cache_write`. q, k, v [B, T, H, D] may
    be token-strided (e.g. slices of a fused qkv tensor), and so may the caches
    [B, n_slots * tpf, H, D]; ``frame_slots`` [F] int32/int64 on the device. A frame whose slot
    is outside [0, n_slots) writes nothing to the caches. Returns the rotated q (contiguous, q's
    dtype). Checks only what the kernel needs (flex.ops.norm_rope_cache_write validates the rest).
    """
    off, off_t = _check_rope_args("q", q, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)
    b, t, h, d = q.shape
    tpf = grid_h * grid_w
    for name, x in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_rows(name, x, q.device)
    for name, x in (("k", k), ("v", v)):
        if x.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(x.shape)}")
    if k_cache.shape[0] != b or k_cache.shape[2:] != q.shape[2:] or v_cache.shape != k_cache.shape:
        # One slot range for both caches: the kernel masks every slot against k_cache's size.
        raise ValueError(f"k_cache and v_cache must both be [B={b}, n_slots*{tpf}, H={h}, D={d}], "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    for name, w in (("norm_q_weight", norm_q_weight), ("norm_k_weight", norm_k_weight)):
        if w is not None:
            if not isinstance(w, torch.Tensor) or w.numel() != h * d or w.dtype not in TABLE_DTYPES:
                raise ValueError(f"{name} must be a floating tensor of H*D = {h * d} elements")
            check_device(name, w, q.device)
    check_index_vector("frame_slots", frame_slots, q.device, INDEX_DTYPES, t // tpf)
    if not (isinstance(eps, (int, float)) and 0 < eps < float("inf")):  # rsqrt(mean + eps) of a zero row
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return _norm_rope_cache_write_op(
        q, k, v, norm_q_weight, norm_k_weight, float(eps), freqs_t, freqs_h, freqs_w, grid_h, grid_w,
        off, off_t, k_cache, v_cache, frame_slots, bool(rotate_k_temporal),
    )
