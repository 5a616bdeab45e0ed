"""ring_attention (sink + window attention over a ring cache, optional rotate-on-load): the float64
reference against an explicit gather, every backend against the reference, the public op's
input checks, SDPA, the C++ operator torch.ops.flex.ring_attention and the Triton kernel
flex_kernels.ring_attention.
"""
import math
import os

import pytest
import torch

from flex import ops, reference
from flex.cache import RingKVCache
from flex.rope import Rope3D

from op_inputs import (
    D, DEVICE, DTYPES, GRID, H, HEADS, HEAD_DIMS, I64_MAX, TPF, TPF_3X5, TRITON_DTYPES, _attn_args,
    assert_close, axis_table, backends, fk, fk_attention, fused_qkv, interpreter_only,
    nan_guarded_table, needs_extension, needs_triton, poisoned, qkv_inputs, randn, random_x,
    ring_with_frames, rope_tables, triton_assert_close, triton_check_attention, wan_planes,
)


# --------------------------------------------------------------------------------------------
# Every backend available here, through flex.ops, against the float64 reference


@pytest.mark.parametrize("backend", backends("ring_attention"))
@pytest.mark.parametrize("rotate", [False, True])
def test_ring_attention_over_a_wrapped_ring(backend, rotate):
    ring = RingKVCache(1, H, D, TPF_3X5, 3, 6)
    for f in range(0, 21, 3):
        ring.write(torch.randn(1, 3 * TPF_3X5, H, D), torch.randn(1, 3 * TPF_3X5, H, D), f)
    q = torch.randn(1, 3 * TPF_3X5, H, D)
    key_table = Rope3D.for_wan(D, "flex", 400).temporal_table(torch.arange(ring.n_slots) * 3 + 11) if rotate else None
    call = dict(key_freqs_t=key_table, chunk_frames=0, resident_tokens=ring.resident_prefix_tokens(), return_lse=False)
    try:
        ops.resolve_backend("ring_attention", backend, q.device, **call)
    except ValueError:
        pytest.skip(f"{backend} does not support this call")
    want = reference.ring_attention(q, ring.k, ring.v, ring.slot_frame, TPF_3X5, 18, key_freqs_t=key_table)
    got = ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, TPF_3X5, 18, key_freqs_t=key_table,
                             resident_tokens=ring.resident_prefix_tokens(), backend=backend)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max())


# --------------------------------------------------------------------------------------------
# flex.reference against an explicit float64 gather


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


# --------------------------------------------------------------------------------------------
# flex.ops.ring_attention: input checks, what SDPA refuses


def test_sdpa_refuses_masked_calls():
    c = RingKVCache(1, 2, 32, 12, 1, 3)
    q = torch.randn(1, 12, 2, 32)
    c.write(q, q, 0)  # one resident frame: resident_tokens=12 is a true prefix
    with pytest.raises(ValueError, match="does not support"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame, 12, chunk_frames=1, backend="sdpa", resident_tokens=12)


def test_attention_bad_input():
    c = RingKVCache(1, 2, 32, 12, 1, 3)
    q = torch.randn(1, 12, 2, 32)
    with pytest.raises(ValueError, match="k_cache must have dtype"):
        ops.ring_attention(q.half(), c.k, c.v, c.slot_frame, 12)
    with pytest.raises(ValueError, match="slot_frame"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame[:2], 12)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame, 0)


# --------------------------------------------------------------------------------------------
# The C++ operator torch.ops.flex.ring_attention (CPU; CUDA when a GPU is present)


def ring_inputs(dtype, slot_frame, n_q_frames=3, heads=3, head_dim=64, batch=2, tpf=GRID[0] * GRID[1],
                q_layout="contiguous", cache_layout="contiguous", seed=0):
    """q [B, F*tpf, H, D] and a ring cache whose empty slots (frame -1) hold NaN."""
    n_slots = len(slot_frame)
    q = random_x((batch, n_q_frames * tpf, heads, head_dim), dtype, "cpu", q_layout, seed)
    k = random_x((batch, n_slots * tpf, heads, head_dim), dtype, "cpu", cache_layout, seed + 1)
    v = random_x((batch, n_slots * tpf, heads, head_dim), dtype, "cpu", cache_layout, seed + 2)
    frames = torch.tensor(slot_frame, dtype=torch.int64)
    empty = (frames < 0).repeat_interleave(tpf)
    with torch.no_grad():
        k[:, empty] = float("nan")
        v[:, empty] = float("nan")
    return q, k, v, frames


def key_tables(head_dim, slot_frame, base_frame=0):
    """Temporal (cos, sin) of each slot's frame (+ base_frame) for rotate-on-load, float64-exact."""
    ct = wan_planes(head_dim)[0]
    frames = [base_frame + max(f, 0) for f in slot_frame]
    return axis_table(ct, frames)


LSE_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


def cpu_attention_paths(dtype):
    """16-bit inputs may take the matrix-unit (brgemm) path; FLEX_CPU_ATTENTION_FP32 forces fp32 GEMMs."""
    return [None, "1"] if dtype in (torch.float16, torch.bfloat16) else [None]


def check_attention(q, k, v, frames, tpf, q_first_frame, chunk_frames, key_freqs_t=None, what=""):
    dtype = q.dtype
    scale = q.shape[-1] ** -0.5
    # The reference multiplies masked keys by probability 0, so it gets the cache with the NaN
    # poison of its empty slots zeroed; the kernel gets the poisoned cache.
    k64, v64 = k.double().nan_to_num(0.0), v.double().nan_to_num(0.0)
    out_ref, lse_ref = reference.ring_attention(q.double(), k64, v64, frames, tpf,
                                                q_first_frame, chunk_frames, scale, key_freqs_t, True)
    no_key = torch.isinf(lse_ref)
    for force_fp32 in cpu_attention_paths(dtype):
        label = f"{what} [FLEX_CPU_ATTENTION_FP32={force_fp32}]"
        saved = os.environ.pop("FLEX_CPU_ATTENTION_FP32", None)
        if force_fp32 is not None:
            os.environ["FLEX_CPU_ATTENTION_FP32"] = force_fp32
        try:
            out, lse = torch.ops.flex.ring_attention(q, k, v, frames, tpf, q_first_frame, chunk_frames,
                                                     scale, key_freqs_t, True)
            out_only, empty_lse = torch.ops.flex.ring_attention(q, k, v, frames, tpf, q_first_frame,
                                                                chunk_frames, scale, key_freqs_t, False)
        finally:
            os.environ.pop("FLEX_CPU_ATTENTION_FP32", None)
            if saved is not None:
                os.environ["FLEX_CPU_ATTENTION_FP32"] = saved
        assert out.is_contiguous() and lse.dtype == torch.float32
        assert lse.shape == (q.shape[0], q.shape[2], q.shape[1])
        assert_close(out, out_ref, dtype, "out " + label)
        assert torch.equal(torch.isinf(lse), no_key), f"lse -inf pattern {label}"
        if (~no_key).any():
            err = (lse.double()[~no_key] - lse_ref.double()[~no_key]).abs().max().item()
            bound = LSE_TOL[dtype] * max(1.0, lse_ref[~no_key].abs().max().item())
            assert err <= bound, f"lse error {err:.3g} > {bound:.3g} {label}"
        assert empty_lse.numel() == 0
        assert torch.equal(out_only, out)
    return out, lse


RINGS = {
    "full_in_order": ([0, 1, 2, 3, 4, 5], 6),
    "partly_filled": ([0, 1, 2, -1, 3, -1], 4),
    "wrapped": ([0, 1, 2, 9, 10, 11, 6, 7, 8], 12),   # sink 0-2, window slots wrap around
    "sink_only": ([0, 1, 2, -1, -1, -1], 3),
    "window_only": ([14, 12, 13, 15, 16], 17),
    "empty": ([-1, -1], 0),
}


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ring", sorted(RINGS))
@pytest.mark.parametrize("head_dim,heads", [(32, 3), (64, 2), (128, 2)])
def test_ring_attention_matches_reference(dtype, ring, head_dim, heads):
    slot_frame, q_first = RINGS[ring]
    q, k, v, frames = ring_inputs(dtype, slot_frame, n_q_frames=3, heads=heads, head_dim=head_dim,
                                  seed=head_dim)
    out, lse = check_attention(q, k, v, frames, GRID[0] * GRID[1], q_first, 0, what=f"{ring} D={head_dim}")
    if ring == "empty":
        assert (out == 0).all() and torch.isinf(lse).all() and (lse < 0).all()


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_q_frames", [1, 3])
def test_ring_attention_block_causal(dtype, n_q_frames):
    """Two chunks in one call: each chunk sees the cache up to its own end, not the next chunk."""
    tpf = GRID[0] * GRID[1]
    chunk = n_q_frames
    q_first = 6
    slot_frame = [0, 1, 2] + [q_first - 1] + list(range(q_first, q_first + 2 * chunk)) + [-1]
    q, k, v, frames = ring_inputs(dtype, slot_frame, n_q_frames=2 * chunk, heads=2, head_dim=64)
    check_attention(q, k, v, frames, tpf, q_first, chunk, what=f"block-causal chunk={chunk}")


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_queries_without_keys(dtype):
    """Keys all later than the queries' chunk: output 0, lse -inf (block-causal)."""
    q, k, v, frames = ring_inputs(dtype, [7, 8, -1], n_q_frames=2, heads=2, head_dim=32)
    out, lse = check_attention(q, k, v, frames, 63, 0, 1, what="no visible key")
    assert (out == 0).all() and torch.isinf(lse).all()
    # Chunk 0 (frame 0) sees nothing, chunk 1 of a later start sees frame 7 only.
    out, lse = check_attention(q, k, v, frames, 63, 6, 1, what="first chunk blind")
    assert torch.isinf(lse[:, :, :63]).all() and torch.isfinite(lse[:, :, 63:]).all()


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("ring", ["wrapped", "partly_filled", "window_only"])
@pytest.mark.parametrize("tpf_grid", [GRID, (2, 3)])
def test_ring_attention_rotate_on_load(dtype, ring, tpf_grid):
    """Keys cached without temporal rotation, rotated per slot while loading (frames past 10^5).

    A 7 x 9 grid rotates the queries per slot; a 2 x 3 grid (6 keys per slot) rotates each key.
    """
    slot_frame, q_first = RINGS[ring]
    tpf = tpf_grid[0] * tpf_grid[1]
    q, k, v, frames = ring_inputs(dtype, slot_frame, n_q_frames=2, heads=3, head_dim=64, tpf=tpf)
    key_freqs_t = key_tables(64, slot_frame, base_frame=100_000)
    check_attention(q, k, v, frames, tpf, q_first, 0, key_freqs_t, what=f"rotate-on-load {ring} tpf={tpf}")
    check_attention(q, k, v, frames, tpf, q_first, 1, key_freqs_t, what=f"rotate-on-load causal {ring}")


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_strided(dtype):
    q, k, v, frames = ring_inputs(dtype, [0, 1, 2, 5, -1, 4], n_q_frames=2, heads=3, head_dim=64,
                                  q_layout="qkv_slice", cache_layout="padded")
    check_attention(q, k, v, frames, 63, 4, 1, key_tables(64, [0, 1, 2, 5, -1, 4], 7), what="strided")
    q2, k2, v2, _ = ring_inputs(dtype, [0, 1, 2, 5, -1, 4], n_q_frames=1, heads=3, head_dim=64,
                                q_layout="heads_major", cache_layout="heads_major")
    check_attention(q2, k2, v2, frames, 63, 6, 0, what="heads-major")


@needs_extension
def test_ring_attention_rotate_on_load_matches_rotated_cache():
    """norm_rope_cache_write(rotate_k_temporal=False) + rotate-on-load == fully rotated cache."""
    tpf, head_dim, frame_offset = GRID[0] * GRID[1], 64, 200_000
    q, k, v = qkv_inputs(1, 3 * tpf, 2, head_dim, torch.float32, "cpu", False, seed=5)
    tables = rope_tables(head_dim, 3, frame_offset)
    caches = {}
    for rot in (True, False):
        kc, vc = poisoned((1, 4 * tpf, 2, head_dim), torch.float32, "cpu"), poisoned((1, 4 * tpf, 2, head_dim), torch.float32, "cpu")
        qo = torch.ops.flex.norm_rope_cache_write(q, k, v, None, None, 1e-6, *tables, *GRID, frame_offset,
                                                  kc, vc, torch.tensor([3, 0, 1]), rot)
        caches[rot] = (qo, kc, vc)
    slot_frame = torch.tensor([frame_offset + 1, frame_offset + 2, -1, frame_offset])
    rows = [1, 2, 0, 0]  # temporal table rows of each slot's frame (empty slot: any)
    key_freqs_t = tables[0][[frame_offset + r for r in rows]]
    qo, kc, vc = caches[True]
    full, _ = torch.ops.flex.ring_attention(qo, kc, vc, slot_frame, tpf, frame_offset, 0, head_dim ** -0.5, None, False)
    qo2, kc2, vc2 = caches[False]
    on_load, _ = torch.ops.flex.ring_attention(qo2, kc2, vc2, slot_frame, tpf, frame_offset, 0, head_dim ** -0.5,
                                               key_freqs_t, False)
    assert_close(on_load, full.double(), torch.float32, "rotate-on-load vs rotated cache")


@needs_extension
@pytest.mark.parametrize("change,match", [
    (dict(k_cache=torch.randn(1, 189, 2, 32).half()), r"k_cache dtype \(Half\) must match q \(Float\)"),
    (dict(v_cache=torch.randn(1, 189, 3, 32)), "v_cache must be"),
    (dict(k_cache=torch.randn(1, 189, 2, 16)), "k_cache must be"),
    (dict(v_cache=torch.randn(1, 126, 2, 32)), "v_cache shape"),
    (dict(k_cache=torch.randn(1, 190, 2, 32), v_cache=torch.randn(1, 190, 2, 32)), "multiple of tokens_per_frame"),
    (dict(slot_frame=torch.tensor([0, 1])), "slot_frame must be 1-D with one frame per cache slot"),
    (dict(slot_frame=torch.tensor([0.0, 1.0, 2.0])), "slot_frame must be int64, got Float"),
    (dict(key_freqs_t=torch.randn(2, 6, 2)), r"key_freqs_t must be \[n_slots, C_t, 2\]"),
    (dict(key_freqs_t=torch.randn(3, 17, 2)), "key_freqs_t must be"),
    (dict(key_freqs_t=torch.randn(3, 6, 2).double()), "key_freqs_t must be float32"),
    (dict(tokens_per_frame=0), "tokens_per_frame must be positive"),
    (dict(q=torch.randn(1, 63, 32)), "q must be 4-D"),
    (dict(q=torch.randn(1, 63, 2, 32).double()), "q must be float32, float16 or bfloat16"),
    (dict(q=torch.randn(1, 63, 2, 64)[..., ::2]), "last dim of q must be contiguous"),
])
def test_ring_attention_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.flex.ring_attention(**_attn_args(**change))


@needs_extension
def test_ring_attention_opcheck():
    for args in (_attn_args(), _attn_args(key_freqs_t=None, return_lse=False, chunk_frames=0)):
        torch.library.opcheck(torch.ops.flex.ring_attention.default, tuple(args.values()))


@needs_extension
def test_ring_attention_compiles():
    args = _attn_args()

    def f(q):
        out, lse = torch.ops.flex.ring_attention(q * 1.0, *list(args.values())[1:])
        return out.sum() + lse.clamp_min(-1e30).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args["q"]), f(args["q"]))


@pytest.fixture
def one_thread():
    """Run with a single intra-op thread (tasks then cover several query blocks)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("chunk_frames", [0, 3])
def test_ring_attention_many_blocks(one_thread, dtype, rotate, chunk_frames):
    """Several 256-query blocks per task, runs of slots longer than one 1024-key block, a wrapped
    ring with an empty slot, block-causal chunks that straddle query blocks."""
    n_q_frames = 13  # 819 queries: 4 query blocks of <= 256
    q_first = 20
    slot_frame = [0, 1, 2] + list(range(q_first - 6, q_first + n_q_frames)) + [-1, q_first - 7]
    q, k, v, frames = ring_inputs(dtype, slot_frame, n_q_frames=n_q_frames, heads=2, head_dim=64, batch=1)
    key_freqs_t = key_tables(64, slot_frame, base_frame=123_456) if rotate else None
    check_attention(q, k, v, frames, 63, q_first, chunk_frames, key_freqs_t,
                    what=f"many blocks rotate={rotate} chunk={chunk_frames}")


@needs_extension
@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_negative_scale(dtype):
    """A non-positive scale takes the unfused softmax of the 16-bit path."""
    q, k, v, frames = ring_inputs(dtype, [0, 1, -1, 2], n_q_frames=2, heads=2, head_dim=64)
    k64, v64 = k.double().nan_to_num(0.0), v.double().nan_to_num(0.0)
    out, lse = torch.ops.flex.ring_attention(q, k, v, frames, 63, 3, 1, -0.07, None, True)
    ref, ref_lse = reference.ring_attention(q.double(), k64, v64, frames, 63, 3, 1, -0.07, None, True)
    assert_close(out, ref, dtype, "negative scale")
    assert (lse.double() - ref_lse).abs().max() <= LSE_TOL[dtype] * max(1.0, ref_lse.abs().max().item())


@needs_extension
@pytest.mark.parametrize("change,match", [
    (dict(slot_frame=torch.tensor([0, 1, -1], dtype=torch.int32)), "slot_frame must be int64, got Int"),
    (dict(slot_frame=torch.tensor([[0, 1, -1]])), "slot_frame must be 1-D"),
    (dict(tokens_per_frame=-63), "tokens_per_frame must be positive"),
    (dict(tokens_per_frame=-2**63), "tokens_per_frame must be positive"),
    (dict(q_first_frame=-1), "q_first_frame must be >= 0, got -1"),
    (dict(chunk_frames=-1), "chunk_frames must be >= 0"),
    (dict(q_first_frame=I64_MAX), r"q_first_frame \+ query frames \+ chunk_frames = .* does not fit in int64"),
    (dict(q_first_frame=2**63 - 2, chunk_frames=0), "does not fit in int64"),
    (dict(chunk_frames=I64_MAX), "does not fit in int64"),
    (dict(scale=float("nan")), "scale must be finite, got nan"),
    (dict(scale=float("inf")), "scale must be finite"),
    (dict(scale=-float("inf")), "scale must be finite"),
    (dict(key_freqs_t=torch.randn(3, 6)), r"key_freqs_t must be \[n_slots, C_t, 2\]"),
    (dict(key_freqs_t=torch.randn(3, 6, 3)), r"key_freqs_t must be \[n_slots, C_t, 2\]"),
    (dict(v_cache=torch.randn(1, 189, 2, 32).half()), r"v_cache dtype \(Half\) must match q \(Float\)"),
    (dict(v_cache=torch.randn(1, 189, 2, 64)[..., ::2]), "last dim of v_cache must be contiguous"),
    (dict(k_cache=torch.randn(189, 2, 32)), "k_cache must be 4-D"),
    (dict(q=torch.randn(1, 63, 2, 0), k_cache=torch.randn(1, 189, 2, 0), v_cache=torch.randn(1, 189, 2, 0),
          key_freqs_t=None), "head dim D of q must be positive"),
])
def test_ring_attention_more_bad_input(change, match):
    with pytest.raises(ValueError, match=f"ring_attention: .*{match}"):
        torch.ops.flex.ring_attention(**_attn_args(**change))


@needs_extension
@pytest.mark.parametrize("shape,n_slots", [((1, 0, 2, 32), 3), ((0, 63, 2, 32), 3), ((1, 63, 0, 32), 3),
                                           ((1, 63, 2, 32), 0)])
def test_ring_attention_empty(shape, n_slots):
    """Empty queries or an empty cache: well-formed outputs, no uninitialised values."""
    b, tq, h, d = shape
    k = torch.randn(b, n_slots * 63, h, d)
    args = _attn_args(q=torch.randn(shape), k_cache=k, v_cache=k.clone(), slot_frame=torch.zeros(n_slots, dtype=torch.int64),
                      key_freqs_t=torch.randn(n_slots, 6, 2))
    out, lse = torch.ops.flex.ring_attention(**args)
    assert out.shape == shape and lse.shape == (b, h, tq)
    assert (out == 0).all() and (lse == float("-inf")).all()


@needs_extension
def test_ring_attention_huge_frames():
    """Frames near the int64 limit that pass the checks mask correctly (no overflow)."""
    q, k, v, _ = ring_inputs(torch.float32, [0, 1, 2], n_q_frames=1, heads=2, head_dim=32, batch=1)
    first = I64_MAX - 10
    frames = torch.tensor([first - 1, first, first + 1])
    k64, v64 = k.double(), v.double()
    out, lse = torch.ops.flex.ring_attention(q, k, v, frames, 63, first, 2, 0.2, None, True)
    ref, ref_lse = reference.ring_attention(q.double(), k64, v64, frames, 63, first, 2, 0.2, None, True)
    assert_close(out, ref, torch.float32, "huge frames")
    torch.testing.assert_close(lse.double(), ref_lse.double(), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The Triton kernel flex_kernels.ring_attention (GPU, or the CPU interpreter)


# sink/window/written/write_chunk: the ring; q_first/q_frames: the queries; chunk_frames: mask;
# slot_order: the expected slot_frame (documents wrapped rings); dev_qff: q_first_frame on device.
ATTN_CASES = {
    "sink-only": dict(sink=2, window=0, written=2, write_chunk=1, q_first=1, q_frames=1, chunk_frames=1,
                      slot_order=[0, 1]),
    "window-only-wrapped": dict(sink=0, window=4, written=6, write_chunk=1, q_first=5, q_frames=1, chunk_frames=0,
                                slot_order=[4, 5, 2, 3]),
    "sink-window-wrapped": dict(sink=1, window=5, written=9, write_chunk=3, q_first=6, q_frames=3, chunk_frames=3,
                                slot_order=[0, 6, 7, 8, 4, 5], dev_qff=True),
    "partly-filled-3-chunks-of-1": dict(sink=1, window=5, written=3, write_chunk=3, q_first=0, q_frames=3,
                                        chunk_frames=1, slot_order=[0, 1, 2, -1, -1, -1]),
    "2-chunks-of-3-wrapped": dict(sink=1, window=6, written=12, write_chunk=3, q_first=6, q_frames=6, chunk_frames=3,
                                  slot_order=[0, 7, 8, 9, 10, 11, 6], dev_qff=True),
    "queries-without-keys": dict(sink=0, window=3, written=0, write_chunk=3, q_first=2, q_frames=2, chunk_frames=1,
                                 slot_order=[3, 4, 5], frames_override=[3, 4, 5]),
    "empty-ring": dict(sink=1, window=2, written=0, write_chunk=1, q_first=0, q_frames=1, chunk_frames=0,
                       slot_order=[-1, -1, -1]),
}


def attention_inputs(case, head_dim, dtype, rotate, seed):
    ring = ring_with_frames(head_dim, dtype, case["sink"], case["window"], case["written"], case["write_chunk"], seed)
    slot_frame = ring.slot_frame
    if "frames_override" in case:  # keys of future frames only: some queries see nothing
        ring.k.copy_(randn(*ring.k.shape, dtype=dtype, seed=seed + 100))
        ring.v.copy_(randn(*ring.v.shape, dtype=dtype, seed=seed + 101))
        slot_frame = torch.tensor(case["frames_override"], dtype=torch.int64, device=DEVICE)
    assert slot_frame.tolist() == case["slot_order"]
    q, _, _ = fused_qkv(1, case["q_frames"] * TPF, head_dim, dtype, seed + 7)
    key_freqs = None
    if rotate:
        # Re-indexed positions (any per-slot position, e.g. window-relative or far away).
        g = torch.Generator().manual_seed(seed)
        positions = torch.randperm(len(slot_frame), generator=g) + torch.randint(0, 200_000, (1,), generator=g)
        key_freqs = Rope3D.for_wan(head_dim, "flex", length=480).temporal_table(positions.to(DEVICE))
    # Reference on clean caches; the kernel gets caches whose empty slots hold NaN (never read)
    # and, for the rotate cases, caches that are token-strided slices of one fused kv buffer.
    empty = (slot_frame < 0).repeat_interleave(TPF)
    k_ref, v_ref = ring.k.clone(), ring.v.clone()
    k_ref[:, empty] = 0
    v_ref[:, empty] = 0
    kv = torch.stack((ring.k, ring.v), dim=2)
    kv[:, empty] = float("nan")
    k_cache, v_cache = kv.unbind(2)
    if not rotate:
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    return q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs


@needs_triton
@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotate-on-load"])
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("case", list(ATTN_CASES))
def test_ring_attention(case, head_dim, dtype, rotate):
    c = ATTN_CASES[case]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, head_dim, dtype, rotate, seed=head_dim)
    qff = torch.tensor(c["q_first"], device=DEVICE) if c.get("dev_qff") else c["q_first"]
    out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, qff, c["chunk_frames"],
                                 key_freqs_t=key_freqs, return_lse=True)
    ref_out, ref_lse = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                                key_freqs_t=key_freqs, return_lse=True)
    triton_check_attention(out, lse, ref_out, ref_lse, dtype)


@needs_triton
def test_ring_attention_scale_and_no_lse():
    c = ATTN_CASES["sink-window-wrapped"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, _ = attention_inputs(c, 64, torch.float32, False, seed=3)
    out = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"], scale=0.3)
    assert isinstance(out, torch.Tensor)
    ref = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"], scale=0.3)
    triton_assert_close(out, ref, torch.float32, "out (scale 0.3)")


@needs_triton
def test_ring_attention_odd_head_dim():
    """A head dim that is no power of two (48: padded to 64 inside, 8 temporal planes)."""
    c = ATTN_CASES["2-chunks-of-3-wrapped"]
    for rotate in (False, True):
        q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 48, torch.float32, rotate, seed=9)
        out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                     key_freqs_t=key_freqs, return_lse=True)
        ref_out, ref_lse = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                                    key_freqs_t=key_freqs, return_lse=True)
        triton_check_attention(out, lse, ref_out, ref_lse, torch.float32)


@needs_triton
@interpreter_only
@pytest.mark.parametrize("blocks", [(16, 64), (64, 16), (16, 16)], ids=lambda b: f"M{b[0]}-N{b[1]}")
def test_ring_attention_block_sizes(blocks, monkeypatch):
    """Other tile shapes than the interpreter default (the GPU autotunes over several)."""
    monkeypatch.setattr(fk_attention, "_FIXED", {"BLOCK_M": blocks[0], "BLOCK_N": blocks[1]})
    c = ATTN_CASES["2-chunks-of-3-wrapped"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 32, torch.float16, True, seed=4)
    out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                 key_freqs_t=key_freqs, return_lse=True)
    ref_out, ref_lse = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                                key_freqs_t=key_freqs, return_lse=True)
    triton_check_attention(out, lse, ref_out, ref_lse, torch.float16)


@needs_triton
def test_key_freqs_rows_of_empty_slots_are_not_read():
    """Rotate-on-load reads the (cos, sin) row of resident slots only: NaN rows of empty slots
    and NaN rows around the table never reach the output."""
    c = ATTN_CASES["partly-filled-3-chunks-of-1"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 32, torch.float32, True, seed=12)
    empty = slot_frame < 0
    poisoned = key_freqs.clone()
    poisoned[empty] = float("nan")
    out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                 key_freqs_t=nan_guarded_table(poisoned), return_lse=True)
    ref_out, ref_lse = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                                key_freqs_t=key_freqs, return_lse=True)
    triton_check_attention(out, lse, ref_out, ref_lse, torch.float32)


# Block-causal masks at the ends of the int64 range, where q_first_frame + k * chunk_frames
# passes 2**31 or 2**63. slot_frame -1 (and any negative frame) is an empty slot.
EXTREME_CASES = {
    "past-int32": dict(q_first=2**31 - 2, chunk=3, q_frames=6,
                       frames=[2**31 - 7, 2**31 - 2, 2**31, 2**31 + 1, 2**31 + 4, -1, 2**31 + 5]),
    "end-of-int64": dict(q_first=I64_MAX - 3, chunk=3, q_frames=4,
                         frames=[I64_MAX, I64_MAX - 5, I64_MAX - 1, 0, -1, I64_MAX - 3]),
    "sum-past-int64": dict(q_first=2**62 + 2**61, chunk=2**62, q_frames=2,
                           frames=[I64_MAX, 2**62, 3, -5, 2**62 + 2**61]),
    "huge-chunk": dict(q_first=0, chunk=I64_MAX, q_frames=2, frames=[I64_MAX, I64_MAX - 1, 0, -1]),
    "chunk-past-frames": dict(q_first=2**40, chunk=2**40, q_frames=3,
                              frames=[2**41 - 1, 2**41, 2**40, 2**39, -(2**62)]),
}


def small_equivalent(frames, q_first, chunk, q_frames, tpf):
    """slot_frame, q_first_frame and chunk_frames of small size with the same visibility.

    Visibility is defined with Python ints (no overflow): query i sees frame f >= 0 iff
    f < q_first + ((i // tpf) // chunk + 1) * chunk. The small problem keeps every query's
    chunk (chunk' = min(chunk, q_frames)) and puts each key at the start of the first query
    chunk that sees it (or of the chunk after the last: seen by none).
    """
    n_chunks = (q_frames - 1) // chunk + 1
    small_chunk = min(chunk, q_frames)

    def first_chunk(f):
        return next((c for c in range(n_chunks) if f < q_first + (c + 1) * chunk), n_chunks)

    small = torch.tensor([-1 if f < 0 else 1 + first_chunk(f) * small_chunk for f in frames], dtype=torch.int64)
    expected = torch.tensor([[f >= 0 and f < q_first + ((i // tpf) // chunk + 1) * chunk for f in frames for _ in range(tpf)]
                             for i in range(q_frames * tpf)])
    assert torch.equal(reference.visible_keys(small, tpf, q_frames * tpf, 1, small_chunk), expected)
    return small.to(DEVICE), 1, small_chunk


@needs_triton
@pytest.mark.parametrize("q_first_on", ["int", "int64-tensor", "int32-tensor"])
@pytest.mark.parametrize("case", list(EXTREME_CASES))
def test_ring_attention_extreme_frames(case, q_first_on):
    c = EXTREME_CASES[case]
    if q_first_on == "int32-tensor" and c["q_first"] >= 2**31:
        pytest.skip("q_first_frame does not fit int32")
    head_dim, dtype, tpf = 32, torch.float32, 5
    n_slots = len(c["frames"])
    q = randn(1, c["q_frames"] * tpf, HEADS, head_dim, dtype=dtype, seed=90)
    k_cache, v_cache = (randn(1, n_slots * tpf, HEADS, head_dim, dtype=dtype, seed=91 + i) for i in range(2))
    slot_frame = torch.tensor(c["frames"], dtype=torch.int64, device=DEVICE)
    small_frames, small_first, small_chunk = small_equivalent(c["frames"], c["q_first"], c["chunk"], c["q_frames"], tpf)
    qff = c["q_first"]
    if q_first_on != "int":
        qff = torch.tensor(qff, dtype=torch.int64 if q_first_on == "int64-tensor" else torch.int32, device=DEVICE)
    out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, tpf, qff, c["chunk"], return_lse=True)
    ref_out, ref_lse = reference.ring_attention(q, k_cache, v_cache, small_frames, tpf, small_first, small_chunk,
                                                return_lse=True)
    triton_check_attention(out, lse, ref_out, ref_lse, dtype)


@needs_triton
def test_strided_slot_frame():
    """slot_frame may be a strided view: the gaps (frame 0, visible) are never read."""
    c = ATTN_CASES["partly-filled-3-chunks-of-1"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, _ = attention_inputs(c, 32, torch.float32, False, seed=13)
    backing = torch.zeros(2 * slot_frame.numel(), dtype=torch.int64, device=DEVICE)
    backing[::2] = slot_frame
    out = fk.ring_attention(q, k_cache, v_cache, backing[::2], TPF, c["q_first"], c["chunk_frames"])
    ref = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"])
    triton_assert_close(out, ref, torch.float32, "out")


@needs_triton
def test_ring_attention_without_slots():
    """A cache of zero slots: every query gets 0 and lse -inf, nothing is read."""
    q = randn(1, TPF, HEADS, 32, dtype=torch.float32, seed=14)
    empty = torch.zeros(1, 0, HEADS, 32, device=DEVICE)
    out, lse = fk.ring_attention(q, empty, empty, torch.zeros(0, dtype=torch.int64, device=DEVICE), TPF, 0, 1,
                                 return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


@needs_triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
def test_ops_ring_attention_triton_backend(dtype):
    c = ATTN_CASES["sink-window-wrapped"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 64, dtype, True, seed=23)
    out, lse = ops.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                  key_freqs_t=key_freqs, return_lse=True, backend="triton")
    ref_out, ref_lse = ops.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                          key_freqs_t=key_freqs, return_lse=True, backend="reference")
    triton_check_attention(out, lse, ref_out, ref_lse, dtype)
