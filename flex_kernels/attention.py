"""Sink + window attention over a ring KV cache (flash-attention style, online softmax).

Queries q [B, Tq, H, D] of the current chunk attend to every key token of the ring cache
k/v [B, n_slots * tpf, H, D]. Key j lives in slot j // tpf, which holds frame
slot_frame[j // tpf] (-1 = empty, never visible). With chunk_frames > 0 the mask is
block-causal over chunks aligned at q_first_frame: query i (frame q_first_frame + i // tpf)
sees key frames < q_first_frame + ((i // tpf) // chunk_frames + 1) * chunk_frames.

Grid: (query blocks, B * H). Each program first scans the (small) slot_frame vector to find
the first and last slot visible to any of its queries and loops over that key range only, so
empty tails of a partly filled ring and future chunks of a block-causal call cost nothing;
masks inside the range stay per key. Keys of empty slots are not even loaded (masked), so
stale or NaN data there never leaks into the output.

Rotate-on-load (key_freqs_t [n_slots, C_t, 2], or one table per head [n_slots, H, C_t, 2]):
the head dim is split into even and odd halves through stride-2 pointers, each key's first C_t
planes are rotated by its slot's (cos, sin) in registers, and
q.k = dot(q_even, k_even^T) + dot(q_odd, k_odd^T).

Block-causal visibility is computed without overflow for any int64 frames: a key of frame
kf >= q_first_frame is in chunk (kf - q_first_frame) // chunk_frames and is visible to query
chunks at or after it; keys before q_first_frame are visible to all (the same mask as
kf < q_first_frame + (chunk + 1) * chunk_frames, whose right side may pass 2**63). Pointer
offsets are int64, so caches past 2**31 elements are addressed correctly; token indices are
int32 (Tq, Tk < 2**31). slot_frame values are only compared, never used as addresses.

Softmax runs in float32 in the log2 domain; p is rounded to v's dtype for the p.v product
(fp32 inputs use IEEE fp32 dots, not TF32). Queries with no visible key get 0 and lse -inf.
"""
from __future__ import annotations

import math

from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from ._common import (
    MAX_TOKENS, autotune, check_index_vector, check_int64, check_rows, check_table, launch_meta, next_pow2,
    register_op, split_index,
)

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256

_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in (
        (128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (128, 128, 8, 2),
        (64, 64, 4, 3), (64, 32, 4, 2), (64, 64, 4, 4),
    )
]
# Under the interpreter: one tile size (tl.dot needs >= 16); 32 keeps the per-op cost of the
# interpreter low while 63-token frames still straddle block edges.
_FIXED = {"BLOCK_M": 32, "BLOCK_N": 32}


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # float32 inputs: exact IEEE products (the default would be TF32 on a GPU); other dtypes
    # ignore the precision setting.
    if IEEE:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _key_chunk(frame, q_first, chunk_frames):
    # The query chunk from which a key of this frame is visible: -1 (all) before q_first, else
    # (frame - q_first) // chunk_frames. With 0 <= q_first <= frame, frame - q_first cannot overflow.
    return tl.where(frame < q_first, -1, (frame - q_first) // chunk_frames)


@autotune(configs=_CONFIGS, key=["Tq", "Tk", "HEAD_DIM", "ROTATE", "CAUSAL"], fixed=_FIXED)
@triton.jit
def _ring_attention_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, lse_ptr, sf_ptr, kf_ptr, qff_ptr,
    Tq, Tk, H, n_slots, tpf, q_first_frame, chunk_frames, qk_scale,
    s_sf,
    s_qb, s_qt, s_qh,
    s_kb, s_kt, s_kh,
    s_vb, s_vt, s_vh,
    s_ob, s_ot, s_oh,
    s_kf, s_kfh,
    HEAD_DIM: tl.constexpr, CT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_S: tl.constexpr,
    ROTATE: tl.constexpr, CAUSAL: tl.constexpr, QFF_PTR: tl.constexpr, STORE_LSE: tl.constexpr,
    IEEE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_in = offs_m < Tq

    # ---- key range: the slots visible to at least one query of this block
    slots = tl.arange(0, BLOCK_S)
    slot_frame = tl.load(sf_ptr + slots * s_sf, mask=slots < n_slots, other=-1)
    slot_vis = slot_frame >= 0
    if CAUSAL:
        if QFF_PTR:
            q_first = tl.load(qff_ptr).to(tl.int64)
        else:
            q_first = q_first_frame  # i32, i64 or a constexpr 1; frame - q_first is int64 either way
        q_chunk = (offs_m // tpf) // chunk_frames  # [BLOCK_M]
        block_chunk = tl.max(tl.where(m_in, q_chunk, 0), axis=0)
        slot_vis = slot_vis & (_key_chunk(slot_frame, q_first, chunk_frames) <= block_chunk)
    lo_slot = tl.min(tl.where(slot_vis, slots, BLOCK_S), axis=0)
    hi_slot = tl.max(tl.where(slot_vis, slots + 1, 0), axis=0)
    lo = (lo_slot * tpf) // BLOCK_N * BLOCK_N
    hi = hi_slot * tpf

    q_base = q_ptr + b * s_qb + h * s_qh
    k_base = k_ptr + b * s_kb + h * s_kh
    v_base = v_ptr + b * s_vb + h * s_vh
    dims = tl.arange(0, BLOCK_D)
    dmask = dims < HEAD_DIM
    q_off = offs_m.to(tl.int64) * s_qt  # int64: token * stride may pass 2**31
    if ROTATE:
        planes = tl.arange(0, BLOCK_P)
        emask = 2 * planes < HEAD_DIM
        omask = 2 * planes + 1 < HEAD_DIM
        rot = planes < CT
        q_rows = q_base + q_off[:, None] + 2 * planes[None, :]
        q_even = tl.load(q_rows, mask=m_in[:, None] & emask[None, :], other=0.0)
        q_odd = tl.load(q_rows + 1, mask=m_in[:, None] & omask[None, :], other=0.0)
    else:
        q = tl.load(q_base + q_off[:, None] + dims[None, :], mask=m_in[:, None] & dmask[None, :], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_slot = offs_n // tpf
        key_frame = tl.load(sf_ptr + key_slot * s_sf, mask=offs_n < Tk, other=-1)
        key_ok = key_frame >= 0
        k_off = offs_n.to(tl.int64) * s_kt
        v_off = offs_n.to(tl.int64) * s_vt
        if ROTATE:
            k_rows = k_base + k_off[:, None] + 2 * planes[None, :]
            k_even = tl.load(k_rows, mask=key_ok[:, None] & emask[None, :], other=0.0).to(tl.float32)
            k_odd = tl.load(k_rows + 1, mask=key_ok[:, None] & omask[None, :], other=0.0).to(tl.float32)
            cs_rows = kf_ptr + key_slot[:, None] * s_kf + h * s_kfh + 2 * planes[None, :]
            cs_mask = key_ok[:, None] & rot[None, :]
            cos = tl.load(cs_rows, mask=cs_mask, other=1.0).to(tl.float32)
            sin = tl.load(cs_rows + 1, mask=cs_mask, other=0.0).to(tl.float32)
            k_even_r = (k_even * cos - k_odd * sin).to(q_even.dtype)
            k_odd_r = (k_even * sin + k_odd * cos).to(q_odd.dtype)
            s = _dot(q_even, tl.trans(k_even_r), IEEE_DOT)
            s += _dot(q_odd, tl.trans(k_odd_r), IEEE_DOT)
        else:
            k = tl.load(k_base + k_off[:, None] + dims[None, :], mask=key_ok[:, None] & dmask[None, :], other=0.0)
            s = _dot(q, tl.trans(k), IEEE_DOT)
        visible = key_ok[None, :]
        if CAUSAL:
            visible = visible & (_key_chunk(key_frame, q_first, chunk_frames)[None, :] <= q_chunk[:, None])
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Rows that have seen no key yet keep m = -inf; shift them by 0 so exp2 gives 0, not NaN.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_shift)
        p = tl.exp2(s - m_shift[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + v_off[:, None] + dims[None, :], mask=key_ok[:, None] & dmask[None, :], other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE_DOT)
        m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    out = tl.where(has_key[:, None], out, 0.0)
    o_rows = o_ptr + b * s_ob + h * s_oh + (offs_m.to(tl.int64) * s_ot)[:, None] + dims[None, :]
    tl.store(o_rows, out.to(o_ptr.dtype.element_ty), mask=m_in[:, None] & dmask[None, :])
    if STORE_LSE:
        lse = tl.where(has_key, (m_i + tl.log2(tl.where(has_key, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(lse_ptr + bh.to(tl.int64) * Tq + offs_m, lse, mask=m_in)


def _outputs(q, return_lse):
    b, tq, h, d = q.shape
    out = torch.empty((b, tq, h, d), dtype=q.dtype, device=q.device)
    lse = torch.empty((b, h, tq) if return_lse else (0,), dtype=torch.float32, device=q.device)
    return out, lse


def _fake(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, q_first_frame_t, chunk_frames,
          scale, key_freqs_t, return_lse):
    return _outputs(q, return_lse)


@register_op("flex_triton::ring_attention", mutates_args={}, fake=_fake)
def _ring_attention_op(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_frame: torch.Tensor,
    tokens_per_frame: int, q_first_frame: int, q_first_frame_t: Optional[torch.Tensor], chunk_frames: int,
    scale: float, key_freqs_t: Optional[torch.Tensor], return_lse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    b, tq, h, d = q.shape
    tk = k_cache.shape[1]
    n_slots = slot_frame.shape[0]
    out, lse = _outputs(q, return_lse)
    rotate = key_freqs_t is not None
    kf = key_freqs_t.contiguous() if rotate else slot_frame
    ct = key_freqs_t.shape[-2] if rotate else 0
    per_head = rotate and kf.dim() == 4  # [n_slots, H, C_t, 2]: a table per head
    causal = chunk_frames > 0

    def grid(meta):
        return (triton.cdiv(tq, meta["BLOCK_M"]), b * h)

    wrap_triton(_ring_attention_kernel)[grid](
        q, k_cache, v_cache, out, lse if return_lse else out, slot_frame, kf,
        q_first_frame_t if q_first_frame_t is not None else slot_frame,
        tq, tk, h, n_slots, tokens_per_frame, q_first_frame, max(chunk_frames, 1), scale * LOG2E,
        slot_frame.stride(0),
        q.stride(0), q.stride(1), q.stride(2),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        kf.stride(0), kf.stride(1) if per_head else 0,
        HEAD_DIM=d, CT=ct, BLOCK_D=next_pow2(d, 16), BLOCK_P=next_pow2((d + 1) // 2, 16),
        BLOCK_S=next_pow2(n_slots),
        ROTATE=rotate, CAUSAL=causal, QFF_PTR=q_first_frame_t is not None, STORE_LSE=return_lse,
        IEEE_DOT=q.dtype == torch.float32,
        **launch_meta(dict(_FIXED, num_warps=4)),
    )
    return out, lse


def ring_attention(
    q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame=0, chunk_frames=0,
    scale=None, key_freqs_t=None, return_lse=False,
):
    """Attention of q [B, Tq, H, D] over every resident slot of a ring KV cache.

    Same semantics as :func:`flex.reference.ring_attention`. q, k_cache, v_cache may be
    token-strided (last dim contiguous); head dims up to 256 (powers of two are fastest).
    ``q_first_frame`` is an int or a one-element int32/int64 device tensor (no host sync; a
    device value must be >= 0, like the int). Returns out (contiguous, q's dtype), or
    (out, lse [B, H, Tq] float32) when ``return_lse``. Checks only what the kernel needs
    (flex.ops.ring_attention validates the rest).
    """
    check_rows("q", q, q.device)
    b, tq, h, d = q.shape
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head dim must be <= {MAX_HEAD_DIM} for the Triton ring attention, got {d}")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        check_rows(name, c, q.device)
        # tl.dot takes operands of one dtype.
        if c.shape[0] != b or c.shape[2:] != q.shape[2:] or c.dtype != q.dtype:
            raise ValueError(f"{name} must be [B={b}, n_keys, H={h}, D={d}] {q.dtype}, got {tuple(c.shape)} {c.dtype}")
    tk = k_cache.shape[1]
    if v_cache.shape[1] != tk:
        raise ValueError("k_cache and v_cache must hold the same number of keys")
    if max(tq, tk) > MAX_TOKENS:
        raise ValueError(f"q and the caches must hold at most {MAX_TOKENS} tokens, got {tq} and {tk}")
    if not isinstance(tokens_per_frame, int) or tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be an int >= 1, got {tokens_per_frame!r}")
    # Key j reads slot_frame[j // tokens_per_frame]: one entry per frame of the cache.
    if tk % tokens_per_frame:
        raise ValueError(f"slot_frame needs k_cache.shape[1] / tokens_per_frame entries, but {tk} keys are "
                         f"not a multiple of tokens_per_frame = {tokens_per_frame}")
    check_index_vector("slot_frame", slot_frame, q.device, (torch.int64,), tk // tokens_per_frame)
    # The block-causal mask is exact for any int64 frames when q_first_frame >= 0.
    qff, qff_t = split_index("q_first_frame", q_first_frame, q.device, 0)
    check_int64("chunk_frames", chunk_frames, 0)
    if key_freqs_t is not None:
        check_table("key_freqs_t", key_freqs_t, q.device, heads=h)
        if key_freqs_t.shape[0] != slot_frame.numel() or 2 * key_freqs_t.shape[-2] > d:
            raise ValueError(f"key_freqs_t must be [n_slots={slot_frame.numel()}, C_t <= D/2, 2] or "
                             f"[n_slots, H, C_t, 2], got {tuple(key_freqs_t.shape)}")
    scale = d ** -0.5 if scale is None else float(scale)
    if not math.isfinite(scale):  # every logit would be NaN or inf
        raise ValueError(f"scale must be a finite number, got {scale!r}")
    out, lse = _ring_attention_op(
        q, k_cache, v_cache, slot_frame, tokens_per_frame, qff, qff_t, chunk_frames, scale,
        key_freqs_t, bool(return_lse),
    )
    return (out, lse) if return_lse else out
