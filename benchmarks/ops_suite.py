"""Op benchmarks: the upstream-style path against every FLEX backend present, on Wan shapes."""
from __future__ import annotations

import itertools

import torch

from flex import ops
from flex.cache import RingKVCache
from flex.rope import Rope3D

from . import upstream
from .timing import measure

# Largest float64 score matrix the reference backend may build (elements).
REFERENCE_SCORE_LIMIT = 6e7


def backends(op: str, device: torch.device) -> list[str]:
    """Backends to time. The Triton interpreter on a CPU is a correctness path, not a speed."""
    return [b for b in ops.available_backends(op, device.type) if not (b == "triton" and device.type == "cpu")]


def shapes(device: torch.device, quick: bool) -> dict:
    """Wan 480x832 chunk: 3 frames x 30x52 tokens, 12 heads x 128. CPU attention is reduced."""
    if quick:
        return dict(frames=3, grid=(6, 10), heads=4, head_dim=128, resident=12, attn_grid=(6, 10))
    if device.type == "cuda":
        return dict(frames=3, grid=(30, 52), heads=12, head_dim=128, resident=12, attn_grid=(30, 52))
    return dict(frames=3, grid=(30, 52), heads=12, head_dim=128, resident=12, attn_grid=(15, 26))


def _row(op, impl, seconds, shape, dtype, work, unit, roof, baseline=None):
    rate = work / seconds / (1e9 if unit == "GB/s" else 1e12)
    return dict(op=op, impl=impl, seconds=seconds, rate=rate, unit=unit, roofline_fraction=rate / roof if roof else None,
                shape=shape, dtype=str(dtype).replace("torch.", ""), speedup_vs_upstream=None if baseline is None else baseline / seconds)


def rope_cases(device, dtype, quick, roof_gbps, repeats):
    """rope3d alone, then the fused norm + RoPE + cache write of q, k, v."""
    s = shapes(device, quick)
    (gh, gw), nf, h, d = s["grid"], s["frames"], s["heads"], s["head_dim"]
    t, tpf = nf * gh * gw, gh * gw
    first = 60  # a chunk in the middle of a long video: the ring is full and wrapping
    rope = Rope3D.for_wan(d, "flex", length=480)
    tables = rope.tables(first, nf, gh, gw, device=device)
    x = torch.randn(1, t, h, d, device=device, dtype=dtype)
    table = upstream.rope_table(d, device)
    rows = []
    shape = f"[1, {t}, {h}, {d}]"
    nbytes = 2 * x.numel() * x.element_size()
    base = measure(lambda: upstream.rope_apply(x, table, nf, gh, gw, first), device, repeats=repeats)
    rows.append(_row("rope3d", "upstream (float64 complex)", base, shape, dtype, nbytes, "GB/s", roof_gbps, base))
    for name in backends("rope3d", device):
        sec = measure(lambda: ops.rope3d(x, *tables, gh, gw, 0, backend=name), device, repeats=repeats)
        rows.append(_row("rope3d", name, sec, shape, dtype, nbytes, "GB/s", roof_gbps, base))

    # Fused: q, k, v from one qkv projection (strided), norms over H*D, write into the ring.
    qkv = torch.randn(1, t, 3, h, d, device=device, dtype=dtype)
    q, k, v = qkv.unbind(2)
    wq = torch.rand(h * d, device=device, dtype=dtype) + 0.5
    wk = torch.rand(h * d, device=device, dtype=dtype) + 0.5
    sink, window = 3, 9
    ring = RingKVCache(1, h, d, tpf, sink, window, dtype=dtype, device=device)
    slots = ring.slots(first, nf)
    shifting = upstream.ShiftingCache(1, h, d, tpf, sink, window, dtype, device)
    for f in range(0, sink + window, nf):
        shifting.write(k[:, : nf * tpf], v[:, : nf * tpf], f)
    nbytes = 6 * x.numel() * x.element_size() + 2 * wq.numel() * wq.element_size()
    # As in generation, every 5th call (4 denoising passes + the clean pass) starts a new chunk.
    frame_counter = (sink + window + nf * (i // 5) for i in itertools.count())
    base = measure(lambda: upstream.self_attention_inputs(q, k, v, wq, wk, table, shifting, nf, gh, gw, next(frame_counter)), device, repeats=repeats)
    rows.append(_row("norm_rope_cache_write", "upstream (norms + complex RoPE + shift copy)", base, shape, dtype, nbytes, "GB/s", roof_gbps, base))
    for name in backends("norm_rope_cache_write", device):
        fn = lambda: ops.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, *tables, gh, gw, 0, ring.k, ring.v, slots, backend=name)
        sec = measure(fn, device, repeats=repeats)
        rows.append(_row("norm_rope_cache_write", name, sec, shape, dtype, nbytes, "GB/s", roof_gbps, base))
    return rows


def flex_attention_call(q, ring: RingKVCache, scale=None):
    """torch's flex_attention (compiled) over the whole ring with the per-slot frame mask.

    Returns a no-argument callable, or the reason it cannot run here.
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        return f"torch.nn.attention.flex_attention not importable: {err}"
    slot_frame, tpf = ring.slot_frame, ring.tokens_per_frame

    def resident(b, h, q_idx, kv_idx):
        return slot_frame[kv_idx // tpf] >= 0

    try:
        mask = create_block_mask(resident, None, None, q.shape[1], ring.k.shape[1], device=q.device)
        attend = torch.compile(flex_attention, dynamic=False)
        qt, kt, vt = q.transpose(1, 2), ring.k.transpose(1, 2), ring.v.transpose(1, 2)
        call = lambda: attend(qt, kt, vt, block_mask=mask, scale=scale).transpose(1, 2)  # noqa: E731
        call()  # compile now, outside the timing
    except Exception as err:  # noqa: BLE001 -- a missing compiler must not stop the other rows
        return f"flex_attention failed: {type(err).__name__}: {err}"[:300]
    return call


def attention_cases(device, dtype, quick, roof_tflops, repeats):
    """A chunk's queries over a full ring (sink 3 + window 9), plain and rotate-on-load."""
    s = shapes(device, quick)
    (gh, gw), nf, h, d, resident = s["attn_grid"], s["frames"], s["heads"], s["head_dim"], s["resident"]
    tpf = gh * gw
    tq, tk = nf * tpf, resident * tpf
    ring = RingKVCache(1, h, d, tpf, 3, resident - 3, dtype=dtype, device=device)
    for f in range(0, 60, nf):  # wrap the ring several times
        ring.write(torch.randn(1, nf * tpf, h, d, device=device, dtype=dtype),
                   torch.randn(1, nf * tpf, h, d, device=device, dtype=dtype), f)
    first = 60 - nf
    q = torch.randn(1, tq, h, d, device=device, dtype=dtype)
    shifting = upstream.ShiftingCache(1, h, d, tpf, 3, resident - 3, dtype, device)
    shifting.k.copy_(ring.k)
    shifting.v.copy_(ring.v)
    flops = 4 * tq * tk * d * h
    shape = f"q [1, {tq}, {h}, {d}] over {tk} keys"
    rows = []
    base = measure(lambda: shifting.attend(q, tk), device, repeats=repeats)
    rows.append(_row("ring_attention", "upstream (SDPA over cache slice)", base, shape, dtype, flops, "TFLOP/s", roof_tflops, base))
    prefix = ring.resident_prefix_tokens()
    small = tq * tk * h <= REFERENCE_SCORE_LIMIT
    for name in backends("ring_attention", device):
        if name == "reference" and not small:
            continue
        fn = lambda: ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, tpf, first, resident_tokens=prefix, backend=name)
        sec = measure(fn, device, repeats=repeats)
        rows.append(_row("ring_attention", name, sec, shape, dtype, flops, "TFLOP/s", roof_tflops, base))
    fn = flex_attention_call(q, ring)
    if callable(fn):
        sec = measure(fn, device, repeats=repeats)
        rows.append(_row("ring_attention", "torch flex_attention (compiled, slot mask)", sec, shape, dtype, flops,
                         "TFLOP/s", roof_tflops, base))
    else:
        print(f"note: no flex_attention row: {fn}")

    # Rotate-on-load: keys cached without temporal rotation, positions re-indexed per chunk.
    rope = Rope3D.for_wan(d, "flex", length=480)
    positions = torch.arange(ring.n_slots, device=device)  # window-relative positions
    key_table = rope.temporal_table(positions)
    table = upstream.rope_table(d, device)

    def rerotate_then_sdpa():
        # What infinity-style windows do upstream: rotate the whole cache again, then attend.
        k = upstream.rope_apply(ring.k, table, ring.n_slots, gh, gw, 0)
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), ring.v.transpose(1, 2)).transpose(1, 2)

    base_rot = measure(rerotate_then_sdpa, device, repeats=repeats)
    rows.append(_row("ring_attention_rotate_on_load", "upstream (re-rotate cache + SDPA)", base_rot, shape, dtype, flops, "TFLOP/s", roof_tflops, base_rot))
    for name in backends("ring_attention", device):
        if name == "reference" and not small:
            continue
        try:
            ops.resolve_backend("ring_attention", name, device, key_freqs_t=key_table, chunk_frames=0, resident_tokens=None, return_lse=False)
        except ValueError:
            continue  # backend has no rotate-on-load (sdpa, flash)
        fn = lambda: ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, tpf, first, key_freqs_t=key_table, backend=name)
        sec = measure(fn, device, repeats=repeats)
        rows.append(_row("ring_attention_rotate_on_load", name, sec, shape, dtype, flops, "TFLOP/s", roof_tflops, base_rot))
    return rows
