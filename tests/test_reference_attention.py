import math

import pytest
import torch

from flex import ops, reference
from flex.cache import RingKVCache
from flex.rope import Rope3D


def explicit_attention(q, k, v, slot_frame, tpf, q_first, chunk_frames, scale, key_table=None):
    """Loop over queries: gather the visible keys, softmax, weighted sum (float64)."""
    b, tq, h, d = q.shape
    out = torch.zeros(b, tq, h, d, dtype=torch.float64)
    lse = torch.full((b, h, tq), -math.inf, dtype=torch.float64)
    k = k.to(torch.float64).clone()
    if key_table is not None:
        ct = key_table.shape[1]
        for j in range(k.shape[1]):
            c, s = key_table[j // tpf, :, 0].double(), key_table[j // tpf, :, 1].double()
            e, o = k[:, j, :, 0:2 * ct:2].clone(), k[:, j, :, 1:2 * ct:2].clone()
            k[:, j, :, 0:2 * ct:2], k[:, j, :, 1:2 * ct:2] = e * c - o * s, e * s + o * c
    for i in range(tq):
        qf_rel = i // tpf
        keys = []
        for j in range(k.shape[1]):
            f = int(slot_frame[j // tpf])
            if f < 0:
                continue
            if chunk_frames and f >= q_first + (qf_rel // chunk_frames + 1) * chunk_frames:
                continue
            keys.append(j)
        if not keys:
            continue
        kk, vv = k[:, keys], v[:, keys].double()
        logits = torch.einsum("bhd,bkhd->bhk", q[:, i].double(), kk) * scale
        m = logits.max(-1, keepdim=True).values
        p = torch.exp(logits - m)
        out[:, i] = torch.einsum("bhk,bkhd->bhd", p / p.sum(-1, keepdim=True), vv)
        lse[:, :, i] = (m.squeeze(-1) + p.sum(-1).log())
    return out, lse


def filled_ring(sink, window, tpf, frames, h=2, d=16, seed=0):
    torch.manual_seed(seed)
    cache = RingKVCache(2, h, d, tpf, sink, window, dtype=torch.float64)
    for f in range(0, frames, 3):
        n = min(3, frames - f)
        cache.write(torch.randn(2, n * tpf, h, d, dtype=torch.float64), torch.randn(2, n * tpf, h, d, dtype=torch.float64), f)
    return cache


@pytest.mark.parametrize("sink,window,frames,chunk_frames", [
    (2, 4, 12, 0),   # wrapped ring
    (3, 6, 6, 0),    # partly filled
    (3, 6, 6, 3),    # block-causal over two chunks queried at once
    (0, 5, 9, 0),    # window only
    (4, 3, 4, 0),    # sink only resident
])
@pytest.mark.parametrize("rotate", [False, True])
def test_reference_attention_matches_explicit_gather(sink, window, frames, chunk_frames, rotate):
    tpf, h, d = 5, 2, 16
    cache = filled_ring(sink, window, tpf, frames, h, d)
    nq_frames = 6 if chunk_frames else 3
    q_first = max(0, frames - nq_frames)
    q = torch.randn(2, nq_frames * tpf, h, d, dtype=torch.float64)
    table = None
    if rotate:
        positions = torch.randperm(cache.n_slots).to(torch.float64) * 7 + 100_000  # re-indexed positions
        table = Rope3D.for_wan(d, "flex", 500).temporal_table(positions, dtype=torch.float64)
    out, lse = reference.ring_attention(q, cache.k, cache.v, cache.slot_frame, tpf, q_first, chunk_frames,
                                        0.3, table, return_lse=True)
    want, want_lse = explicit_attention(q, cache.k, cache.v, cache.slot_frame, tpf, q_first, chunk_frames, 0.3, table)
    assert torch.allclose(out, want, atol=1e-12)
    assert torch.allclose(lse.double(), want_lse.to(torch.float32).double(), atol=1e-5)


def test_queries_without_visible_keys_get_zero():
    cache = RingKVCache(1, 1, 4, 2, 0, 3, dtype=torch.float64)
    q = torch.randn(1, 2, 1, 4, dtype=torch.float64)
    out, lse = reference.ring_attention(q, cache.k, cache.v, cache.slot_frame, 2, 0, return_lse=True)
    assert torch.equal(out, torch.zeros_like(out)) and torch.isinf(lse).all()


def test_sdpa_over_resident_prefix_is_exact():
    cache = filled_ring(3, 6, 7, 9, seed=2)
    q = torch.randn(2, 21, 2, 16, dtype=torch.float64)
    want = reference.ring_attention(q, cache.k, cache.v, cache.slot_frame, 7, 6)
    got = ops.ring_attention(q, cache.k, cache.v, cache.slot_frame, 7, 6, backend="sdpa",
                             resident_tokens=cache.resident_prefix_tokens())
    assert torch.allclose(got, want, atol=1e-12)
