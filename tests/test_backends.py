"""Every backend available here, reached through flex.ops, agrees with the float64 reference."""
import pytest
import torch

from flex import ops, reference
from flex.cache import RingKVCache
from flex.rope import Rope3D

GH, GW, H, D = 3, 5, 2, 64
TPF = GH * GW


def backends(op):
    return [b for b in ops.available_backends(op, "cpu") if b != "reference"]


def tables(first, n):
    return Rope3D.for_wan(D, "flex", length=400).tables(first, n, GH, GW)


@pytest.mark.parametrize("backend", backends("rope3d"))
def test_rope3d(backend):
    x = torch.randn(2, 2 * TPF, H, D)
    ft, fh, fw = tables(0, 5)
    want = reference.rope3d(x, ft, fh, fw, GH, GW, 3)
    got = ops.rope3d(x, ft, fh, fw, GH, GW, 3, backend=backend)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max())


@pytest.mark.parametrize("backend", backends("norm_rope_cache_write"))
@pytest.mark.parametrize("rotate_k_temporal", [True, False])
def test_norm_rope_cache_write(backend, rotate_k_temporal):
    q, k, v = torch.randn(3, 1, 3 * TPF, H, D).unbind(0)
    wq, wk = torch.rand(H * D) + 0.5, torch.rand(H * D) + 0.5
    ft, fh, fw = tables(300, 3)
    ring = RingKVCache(1, H, D, TPF, 2, 6)
    slots = ring.slots(300, 3)
    caches = [torch.full_like(ring.k, float("nan")) for _ in range(4)]
    want = reference.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, ft, fh, fw, GH, GW, 0, caches[0], caches[1], slots,
                                           rotate_k_temporal)
    got = ops.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, ft, fh, fw, GH, GW, 0, caches[2], caches[3], slots,
                                    rotate_k_temporal, backend=backend)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max())
    for a, b in ((caches[0], caches[2]), (caches[1], caches[3])):
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.allclose(a.nan_to_num(), b.nan_to_num(), atol=1e-5 * a.nan_to_num().abs().max())


@pytest.mark.parametrize("backend", backends("ring_attention"))
@pytest.mark.parametrize("rotate", [False, True])
def test_ring_attention_over_a_wrapped_ring(backend, rotate):
    ring = RingKVCache(1, H, D, TPF, 3, 6)
    for f in range(0, 21, 3):
        ring.write(torch.randn(1, 3 * TPF, H, D), torch.randn(1, 3 * TPF, H, D), f)
    q = torch.randn(1, 3 * TPF, H, D)
    key_table = Rope3D.for_wan(D, "flex", 400).temporal_table(torch.arange(ring.n_slots) * 3 + 11) if rotate else None
    call = dict(key_freqs_t=key_table, chunk_frames=0, resident_tokens=ring.resident_prefix_tokens(), return_lse=False)
    try:
        ops.resolve_backend("ring_attention", backend, q.device, **call)
    except ValueError:
        pytest.skip(f"{backend} does not support this call")
    want = reference.ring_attention(q, ring.k, ring.v, ring.slot_frame, TPF, 18, key_freqs_t=key_table)
    got = ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, TPF, 18, key_freqs_t=key_table,
                             resident_tokens=ring.resident_prefix_tokens(), backend=backend)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max())


def test_auto_prefers_compiled_kernels_on_cpu():
    if "cpp" in ops.available_backends():
        assert ops.resolve_backend("rope3d", "auto", torch.device("cpu")).__name__.endswith(".cpp")
        # Unmasked ring attention goes to SDPA; anything with a mask to the C++ kernel.
        unmasked = dict(chunk_frames=0, key_freqs_t=None, resident_tokens=12, return_lse=False)
        assert ops.resolve_backend("ring_attention", "auto", torch.device("cpu"), **unmasked).__name__.endswith(".sdpa")
        for masked in (dict(unmasked, chunk_frames=3), dict(unmasked, key_freqs_t=True), dict(unmasked, return_lse=True)):
            assert ops.resolve_backend("ring_attention", "auto", torch.device("cpu"), **masked).__name__.endswith(".cpp")
