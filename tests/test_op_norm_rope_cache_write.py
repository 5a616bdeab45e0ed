"""norm_rope_cache_write (qk-RMSNorm + 3D RoPE + k/v written into ring-cache slots): every backend
against the float64 reference, the C++ operator torch.ops.flex.norm_rope_cache_write and the
Triton kernel flex_kernels.norm_rope_cache_write.
"""
import pytest
import torch

from flex import ops, reference
from flex.cache import RingKVCache
from flex.rope import Rope3D

from op_inputs import (
    CUDA, D, DEVICE, DEVICES, DTYPES, GH, GRID, GRID_OVERFLOW, GW, H, HEADS, HEAD_DIMS, I64_MAX,
    SMALL_GRID, SMALL_TPF, TPF, TPF_3X5, TRITON_DTYPES, _nrc_args, assert_close, backends, fk,
    fused_qkv, needs_extension, needs_triton, poisoned, qkv_inputs, randn, rope_tables, tables,
    tables_3x5, triton_assert_close,
)


# --------------------------------------------------------------------------------------------
# Every backend available here, through flex.ops, against the float64 reference


@pytest.mark.parametrize("backend", backends("norm_rope_cache_write"))
@pytest.mark.parametrize("rotate_k_temporal", [True, False])
def test_norm_rope_cache_write(backend, rotate_k_temporal):
    q, k, v = torch.randn(3, 1, 3 * TPF_3X5, H, D).unbind(0)
    wq, wk = torch.rand(H * D) + 0.5, torch.rand(H * D) + 0.5
    ft, fh, fw = tables_3x5(300, 3)
    ring = RingKVCache(1, H, D, TPF_3X5, 2, 6)
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


# --------------------------------------------------------------------------------------------
# The C++ operator torch.ops.flex.norm_rope_cache_write (CPU; CUDA when a GPU is present)


def check_cache(got: torch.Tensor, want: torch.Tensor, dtype, what: str) -> None:
    """Written elements match the reference, unwritten ones are still NaN (the poison)."""
    written = ~torch.isnan(want.cpu())
    assert torch.equal(~torch.isnan(got.cpu()), written), f"{what}: wrong set of written cache elements"
    assert_close(got.cpu()[written], want.cpu()[written], dtype, what)


def run_norm_rope_cache(dtype, device, head_dim=64, heads=3, n_frames=3, frame_offset=20, slots=None,
                        n_slots=5, norms=(True, True), rotate_k_temporal=True, strided=False,
                        slot_dtype=torch.int64, weight_dtype=torch.float32, batch=2, seed=0):
    tpf = GRID[0] * GRID[1]
    q, k, v = qkv_inputs(batch, n_frames * tpf, heads, head_dim, dtype, device, strided, seed)
    g = torch.Generator().manual_seed(seed + 100)
    # drawn in float64: float64 weights have bits that a float32 copy would lose
    wq = (torch.rand(heads * head_dim, generator=g, dtype=torch.float64) + 0.5).to(device, weight_dtype) \
        if norms[0] else None
    wk = (torch.rand(heads * head_dim, generator=g, dtype=torch.float64) + 0.5).to(device, weight_dtype) \
        if norms[1] else None
    tables = rope_tables(head_dim, n_frames, frame_offset, device=device)
    if slots is None:
        slots = [(n_slots - 1 + f) % n_slots for f in range(n_frames)]  # wraps around the ring
    frame_slots = torch.tensor(slots, dtype=slot_dtype, device=device)
    cache_shape = (batch, n_slots * tpf, heads, head_dim)
    k_cache, v_cache = poisoned(cache_shape, dtype, device), poisoned(cache_shape, dtype, device)
    q_out = torch.ops.flex.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, *tables, *GRID, frame_offset,
                                                 k_cache, v_cache, frame_slots, rotate_k_temporal)
    k_ref, v_ref = (poisoned(cache_shape, torch.float64, device) for _ in range(2))
    q_ref = reference.norm_rope_cache_write(q.double(), k.double(), v.double(), wq, wk, 1e-6, *tables,
                                            *GRID, frame_offset, k_ref, v_ref, frame_slots, rotate_k_temporal)
    what = f"{dtype} D={head_dim} F={n_frames} offset={frame_offset} slots={slots}"
    assert q_out.is_contiguous() and q_out.shape == q.shape
    assert_close(q_out, q_ref, dtype, "q_out " + what)
    check_cache(k_cache, k_ref, dtype, "k_cache " + what)
    check_cache(v_cache, v_ref, dtype, "v_cache " + what)
    return q_out, k_cache, v_cache


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,heads", [(32, 3), (64, 2), (128, 3)])
@pytest.mark.parametrize("n_frames", [1, 3])
def test_norm_rope_cache_write_matches_reference(device, dtype, head_dim, heads, n_frames):
    for frame_offset, rotate_k_temporal in ((0, True), (20, False), (100_003, True)):
        run_norm_rope_cache(dtype, device, head_dim, heads, n_frames, frame_offset,
                            rotate_k_temporal=rotate_k_temporal, seed=head_dim + n_frames)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norms", [(False, False), (True, False), (False, True)])
def test_norm_rope_cache_write_optional_norms(device, dtype, norms):
    run_norm_rope_cache(dtype, device, norms=norms, rotate_k_temporal=False)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_rope_cache_write_strided_qkv(device, dtype):
    run_norm_rope_cache(dtype, device, head_dim=128, heads=2, strided=True, slots=[2, 0, 4])


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_norm_rope_cache_write_slot_and_weight_dtypes(device):
    run_norm_rope_cache(torch.bfloat16, device, slot_dtype=torch.int32, weight_dtype=torch.bfloat16,
                        slots=[1, 3, 0], n_slots=4)
    run_norm_rope_cache(torch.float16, device, slot_dtype=torch.int32, weight_dtype=torch.float64,
                        n_frames=1, slots=[0], n_slots=1, batch=1)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_norm_rope_cache_write_float64(device):
    run_norm_rope_cache(torch.float64, device, head_dim=32, n_frames=2, slots=[1, 0], n_slots=2)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_norm_rope_cache_write_float64_weights(device):
    """float64 inputs and norm weights: the RMSNorm runs in float64 (1e-12 from the float64 reference)."""
    run_norm_rope_cache(torch.float64, device, head_dim=32, n_frames=2, slots=[1, 0], n_slots=2,
                        weight_dtype=torch.float64)


@needs_extension
@CUDA
def test_norm_rope_cache_write_cuda_skips_out_of_range_slots():
    """On CUDA the slots are not read on the host: an out-of-range slot writes nothing."""
    tpf = GRID[0] * GRID[1]
    q, k, v = qkv_inputs(1, 2 * tpf, 2, 32, torch.float32, "cuda", False)
    tables = rope_tables(32, 2, device="cuda")
    kc, vc = poisoned((1, 3 * tpf, 2, 32), torch.float32, "cuda"), poisoned((1, 3 * tpf, 2, 32), torch.float32, "cuda")
    slots = torch.tensor([1, 7], device="cuda")
    q_out = torch.ops.flex.norm_rope_cache_write(q, k, v, None, None, 1e-6, *tables, *GRID, 0, kc, vc, slots, True)
    assert_close(q_out, reference.rope3d(q.double(), *tables, *GRID, 0), torch.float32, "q_out")
    written = ~torch.isnan(kc[0, :, 0, 0])
    assert written.sum().item() == tpf and written[tpf:2 * tpf].all()
    assert torch.isnan(vc[:, :tpf]).all() and torch.isnan(vc[:, 2 * tpf:]).all()


@needs_extension
@pytest.mark.parametrize("change,match", [
    (dict(frame_slots=torch.tensor([0, 3])), r"frame_slots\[1\] = 3 is out of range for a cache of 3 slots"),
    (dict(frame_slots=torch.tensor([-1, 0])), r"frame_slots\[0\] = -1 is out of range"),
    (dict(frame_slots=torch.tensor([0])), "frame_slots must be 1-D with one slot per chunk frame"),
    (dict(frame_slots=torch.tensor([0.0, 1.0])), "frame_slots must be int32 or int64"),
    (dict(k_cache=torch.zeros(1, 3 * 63, 2, 32, dtype=torch.float16)), r"k_cache dtype \(Half\) must match q \(Float\)"),
    (dict(v_cache=torch.zeros(1, 3 * 63, 2, 32, dtype=torch.bfloat16)), "v_cache dtype"),
    (dict(k_cache=torch.zeros(1, 3 * 63, 3, 32)), r"k_cache must be \[B, n_slots \* grid_h \* grid_w, H, D\]"),
    (dict(k_cache=torch.zeros(1, 3 * 63 + 1, 2, 32)), "k_cache must be"),
    (dict(v_cache=torch.zeros(1, 2 * 63, 2, 32)), "v_cache shape"),
    (dict(k_cache=torch.zeros(1, 2, 3 * 63, 32).transpose(1, 2)), "k_cache must be contiguous"),
    (dict(k=torch.randn(1, 126, 3, 32)), "k must have q's shape"),
    (dict(v=torch.randn(1, 126, 2, 32).half()), r"v dtype \(Half\) must match q"),
    (dict(norm_q_weight=torch.ones(63)), r"norm_q_weight must have H\*D = 64 elements"),
    (dict(norm_k_weight=torch.ones(64, dtype=torch.int32)), "norm_k_weight must be a float tensor"),
    (dict(eps=-1.0), "eps must be > 0 and finite"),
    (dict(q=torch.randn(1, 125, 2, 32)), "multiple of grid_h"),
    (dict(frame_offset=5), "frame rows out of range"),
])
def test_norm_rope_cache_write_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(**change))


@needs_extension
def test_norm_rope_cache_write_opcheck():
    args = _nrc_args()
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))
    args = _nrc_args(norm_q_weight=None, norm_k_weight=None, rotate_k_temporal=False,
                     frame_slots=torch.tensor([2, 1], dtype=torch.int32))
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))


@needs_extension
@CUDA
def test_norm_rope_cache_write_opcheck_cuda():
    args = {n: (a.cuda() if isinstance(a, torch.Tensor) else a) for n, a in _nrc_args().items()}
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))


@needs_extension
def test_norm_rope_cache_write_compiles():
    """torch.compile functionalises the in-place cache writes and keeps them (fullgraph)."""
    args = _nrc_args()

    def f(q, k_cache, v_cache):
        call = dict(args, q=q, k_cache=k_cache, v_cache=v_cache)
        return torch.ops.flex.norm_rope_cache_write(**call) * 2

    eager_caches = (args["k_cache"].clone(), args["v_cache"].clone())
    compiled_caches = (args["k_cache"].clone(), args["v_cache"].clone())
    expected = f(args["q"], *eager_caches)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(args["q"], *compiled_caches)
    assert torch.equal(got, expected)
    assert torch.equal(compiled_caches[0], eager_caches[0]) and torch.equal(compiled_caches[1], eager_caches[1])
    assert eager_caches[0].abs().sum() > 0


@needs_extension
@pytest.mark.parametrize("frame_offset", [I64_MAX, 2**63 - 2, 2**62])
def test_norm_rope_cache_write_frame_offset_overflow(frame_offset):
    cache = _nrc_args()["k_cache"]
    args = _nrc_args(frame_offset=frame_offset)
    with pytest.raises(ValueError, match=r"norm_rope_cache_write: frame_offset \+ frames = .*out of range"):
        torch.ops.flex.norm_rope_cache_write(**args)
    assert torch.equal(args["k_cache"], cache) and torch.equal(args["v_cache"], cache), "cache written"


@needs_extension
@pytest.mark.parametrize("grid,match", GRID_OVERFLOW)
def test_norm_rope_cache_write_grid_overflow(grid, match):
    with pytest.raises(ValueError, match=f"norm_rope_cache_write: .*{match}"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(grid_h=grid[0], grid_w=grid[1]))


@needs_extension
@pytest.mark.parametrize("eps", [0.0, -0.0, -1e-6, float("nan"), float("inf"), float("-inf")])
def test_norm_rope_cache_write_eps(eps):
    """eps must be > 0 and finite (with eps = 0 an all-zero token gives NaN)."""
    with pytest.raises(ValueError, match="norm_rope_cache_write: eps must be > 0 and finite"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(eps=eps))


@needs_extension
def test_norm_rope_cache_write_zero_input_is_finite():
    zeros = torch.zeros(1, 126, 2, 32)
    args = _nrc_args(q=zeros, k=zeros.clone(), v=zeros.clone())
    q_out = torch.ops.flex.norm_rope_cache_write(**args)
    assert torch.equal(q_out, zeros) and torch.isfinite(args["k_cache"]).all()


@needs_extension
def test_norm_rope_cache_write_weight_of_any_shape():
    """python/flex/ops.py takes a norm weight of H*D elements in any shape: so does C++."""
    w = torch.rand(2, 32) + 0.5
    a = _nrc_args(norm_q_weight=w, norm_k_weight=w)
    b = _nrc_args(q=a["q"], k=a["k"], v=a["v"], norm_q_weight=w.flatten(), norm_k_weight=w.flatten())
    assert torch.equal(torch.ops.flex.norm_rope_cache_write(**a), torch.ops.flex.norm_rope_cache_write(**b))
    assert torch.equal(a["k_cache"], b["k_cache"]) and torch.equal(a["v_cache"], b["v_cache"])
    with pytest.raises(ValueError, match="norm_k_weight must be a float tensor"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(norm_k_weight=torch.ones(64, dtype=torch.bool)))


@needs_extension
@pytest.mark.parametrize("change,match", [
    (dict(frame_slots=torch.tensor([0, 2**40])), r"frame_slots\[1\] = 1099511627776 is out of range"),
    (dict(frame_slots=torch.tensor([-2**63, 0])), r"frame_slots\[0\] = -9223372036854775808 is out of range"),
    (dict(frame_slots=torch.tensor([2, 2**31 - 1], dtype=torch.int32)), r"frame_slots\[1\] = 2147483647"),
    (dict(frame_slots=torch.tensor([0, 1], dtype=torch.int16)), "frame_slots must be int32 or int64, got Short"),
    (dict(frame_slots=torch.tensor([[0, 1]])), "frame_slots must be 1-D"),
    (dict(k_cache=torch.zeros(1, 0, 2, 32), v_cache=torch.zeros(1, 0, 2, 32)),
     r"frame_slots\[0\] = 0 is out of range for a cache of 0 slots"),
    (dict(k_cache=torch.zeros(189, 2, 32)), "k_cache must be 4-D"),
    (dict(v_cache=torch.zeros(1, 189, 2, 32, 1)), "v_cache must be 4-D"),
    (dict(k_cache=torch.zeros(2, 189, 2, 32)), r"k_cache must be \[B, n_slots"),
    (dict(k_cache=torch.zeros(1, 189, 2, 32, dtype=torch.float64)), r"k_cache dtype \(Double\) must match q"),
    (dict(k=torch.randn(1, 126, 2, 64)[..., ::2]), "last dim of k must be contiguous"),
    (dict(v=torch.randn(1, 126, 2, 32, dtype=torch.float64)), r"v dtype \(Double\) must match q"),
    (dict(q=torch.randn(1, 126, 2, 32, dtype=torch.float64)), r"k dtype \(Float\) must match q \(Double\)"),
    (dict(q=torch.randn(1, 126, 2, 0), k=torch.randn(1, 126, 2, 0), v=torch.randn(1, 126, 2, 0)),
     "head dim D of q must be even and positive"),
    (dict(freqs_t=rope_tables(32, 2)[0][:1]), "frame rows out of range"),
])
def test_norm_rope_cache_write_more_bad_input(change, match):
    args = _nrc_args(**change)
    with pytest.raises(ValueError, match=f"norm_rope_cache_write: .*{match}"):
        torch.ops.flex.norm_rope_cache_write(**args)


@needs_extension
def test_norm_rope_cache_write_overlapping_caches():
    """The kernel reads q, k, v while it writes the caches in parallel: they must not overlap."""
    buf = torch.zeros(2, 1, 3 * 63, 2, 32)
    args = _nrc_args(k_cache=buf[0], v_cache=buf[1])  # one buffer, disjoint halves: fine
    torch.ops.flex.norm_rope_cache_write(**args)
    assert buf.abs().sum() > 0
    with pytest.raises(ValueError, match="k_cache and v_cache must not share memory"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(k_cache=buf[0], v_cache=buf[0]))
    cache = torch.zeros(1, 2 * 63, 2, 32)
    with pytest.raises(ValueError, match="k_cache and k must not share memory"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(k=cache, k_cache=cache, v_cache=torch.zeros_like(cache),
                                                         frame_slots=torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="v_cache and q must not share memory"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(q=cache, v_cache=cache, k_cache=torch.zeros_like(cache),
                                                         frame_slots=torch.tensor([0, 1])))


@needs_extension
def test_norm_rope_cache_write_no_frames():
    """T = 0: empty q_out, caches untouched."""
    empty = torch.randn(1, 0, 2, 32)
    args = _nrc_args(q=empty, k=empty.clone(), v=empty.clone(), frame_slots=torch.tensor([], dtype=torch.int64))
    assert torch.ops.flex.norm_rope_cache_write(**args).shape == empty.shape
    assert (args["k_cache"] == 0).all() and (args["v_cache"] == 0).all()


@needs_extension
@CUDA
def test_norm_rope_cache_write_cuda_skips_negative_and_huge_slots():
    tpf = GRID[0] * GRID[1]
    q, k, v = qkv_inputs(1, 3 * tpf, 2, 32, torch.float32, "cuda", False)
    tables = rope_tables(32, 3, device="cuda")
    kc, vc = poisoned((1, 2 * tpf, 2, 32), torch.float32, "cuda"), poisoned((1, 2 * tpf, 2, 32), torch.float32, "cuda")
    slots = torch.tensor([-1, 2**40, 1], device="cuda")
    torch.ops.flex.norm_rope_cache_write(q, k, v, None, None, 1e-6, *tables, *GRID, 0, kc, vc, slots, True)
    torch.cuda.synchronize()
    assert torch.isnan(kc[:, :tpf]).all() and torch.isnan(vc[:, :tpf]).all()
    assert not torch.isnan(kc[:, tpf:]).any() and not torch.isnan(vc[:, tpf:]).any()


# --------------------------------------------------------------------------------------------
# The Triton kernel flex_kernels.norm_rope_cache_write (GPU, or the CPU interpreter)


# frames: frames per chunk; norms: which of q, k are RMS-normalised; first: first frame of the
# chunk (decides the ring slots); offset: int, or the dtype of a device tensor holding it.
WRITE_CASES = {
    "1frame-norms-int-offset": dict(frames=1, norms="qk", rot_k=True, table_start=100_000, offset=4,
                                    tensor_offset=None, first=7, slot_dtype=torch.int64),
    "3frames-nonorm-unrotated-k-dev-offset": dict(frames=3, norms="", rot_k=False, table_start=0, offset=7,
                                                  tensor_offset=torch.int64, first=7, slot_dtype=torch.int32),
    "3frames-qnorm-far-dev-offset": dict(frames=3, norms="q", rot_k=True, table_start=123_456, offset=2,
                                         tensor_offset=torch.int32, first=4, slot_dtype=torch.int64),
}


def run_write(case, head_dim, dtype, backend=None, batch=1, seed=0):
    frames = case["frames"]
    q, k, v = fused_qkv(batch, frames * TPF, head_dim, dtype, seed)
    wq = randn(HEADS * head_dim, dtype=dtype, seed=seed + 1).abs() + 0.5 if "q" in case["norms"] else None
    wk = randn(HEADS, head_dim, dtype=dtype, seed=seed + 2).abs() + 0.5 if "k" in case["norms"] else None
    ft, fh, fw = tables(head_dim, case["table_start"], case["offset"] + frames + 1)
    ring = RingKVCache(batch, HEADS, head_dim, TPF, sink_frames=1, window_frames=4, dtype=dtype, device=DEVICE)
    slots = ring.slots(case["first"], frames).to(case["slot_dtype"])
    # Poison: every cache element the kernel should not write stays NaN, every one it should
    # write must come out finite and right.
    k_cache = torch.full_like(ring.k, float("nan"))
    v_cache = torch.full_like(ring.v, float("nan"))
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    offset = case["offset"]
    if case["tensor_offset"] is not None:
        offset = torch.tensor([offset] if case["tensor_offset"] == torch.int32 else offset,
                              dtype=case["tensor_offset"], device=DEVICE)
    args = (wq, wk, 1e-6, ft, fh, fw, *GRID)
    if backend is None:
        q_out = fk.norm_rope_cache_write(q, k, v, *args, offset, k_cache, v_cache, slots, case["rot_k"])
    else:
        q_out = ops.norm_rope_cache_write(q, k, v, *args, case["offset"], k_cache, v_cache, slots,
                                          case["rot_k"], backend=backend)
    q_ref = reference.norm_rope_cache_write(q, k, v, *args, case["offset"], k_ref, v_ref, slots, case["rot_k"])
    assert q_out.is_contiguous() and q_out.dtype == dtype
    triton_assert_close(q_out, q_ref, dtype, "q")
    written = set(slots.tolist())
    kc, vc = (c.view(batch, ring.n_slots, TPF, HEADS, head_dim) for c in (k_cache, v_cache))
    kr, vr = (c.view(batch, ring.n_slots, TPF, HEADS, head_dim) for c in (k_ref, v_ref))
    for s in range(ring.n_slots):
        if s in written:
            triton_assert_close(kc[:, s], kr[:, s], dtype, f"k_cache slot {s}")
            triton_assert_close(vc[:, s], vr[:, s], dtype, f"v_cache slot {s}")
            assert torch.equal(vc[:, s], vr[:, s]), "v is copied, bit for bit"
        else:
            assert kc[:, s].isnan().all() and vc[:, s].isnan().all(), f"slot {s} is not in frame_slots but was written"


@needs_triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_norm_rope_cache_write_triton(case, head_dim, dtype):
    run_write(WRITE_CASES[case], head_dim, dtype, seed=head_dim)


@needs_triton
def test_norm_rope_cache_write_batch2_head_dim_20():
    """Two batch elements; a head dim whose planes (4/3/3) are no power of two."""
    run_write(WRITE_CASES["1frame-norms-int-offset"], 20, torch.float32, batch=2, seed=5)


@needs_triton
def test_unrotated_k_rotates_to_rotated_k():
    """k cached with rotate_k_temporal=False, rotated on load with its own frame, equals rotated k."""
    head_dim, dtype, frames, first = 32, torch.float32, 1, 7
    q, k, v = fused_qkv(1, frames * TPF, head_dim, dtype, seed=11)
    ft, fh, fw = tables(head_dim, first, frames)
    caches = []
    for rot in (True, False):
        kc = torch.zeros(1, 5 * TPF, HEADS, head_dim, dtype=dtype, device=DEVICE)
        fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *GRID, 0, kc, torch.zeros_like(kc),
                                 torch.tensor([2], device=DEVICE), rot)
        caches.append(kc)
    key_freqs = torch.ones(5, ft.shape[1], 2, dtype=torch.float32, device=DEVICE)
    key_freqs[..., 1] = 0
    key_freqs[2] = ft[0]
    triton_assert_close(reference.rotate_keys_on_load(caches[1], key_freqs, TPF), caches[0], dtype, "rotate-on-load")


# Device indices (ring slots, frame offsets, slot frames) are never range-checked on the host
# (that would need a sync), so the kernels mask them. The interpreter does not fault on a stray
# access like a GPU would: each test puts what a kernel must not overrun inside a larger guard
# tensor holding sentinels, and checks that no sentinel changed (stores) or reached an output
# (loads: NaN sentinels), for indices past every end.
SENTINEL = 1234.0  # exact in float16


def guarded(batch, tokens, head_dim, dtype, before=SMALL_TPF, after=SMALL_TPF):
    """(guard, view): a [B, tokens, H, D] view into a sentinel-filled guard with `before` /
    `after` extra tokens (for batch > 1 the view is batch-strided, sentinels between batches)."""
    guard = torch.full((batch, before + tokens + after, HEADS, head_dim), SENTINEL, dtype=dtype, device=DEVICE)
    return guard, guard[:, before:before + tokens]


def assert_guard_intact(guard, view, what):
    outside = torch.ones(guard.shape[:2], dtype=torch.bool, device=guard.device)
    start = view.storage_offset() // guard.stride(1)
    outside[:, start:start + view.shape[1]] = False
    assert (guard[outside] == SENTINEL).all(), f"{what}: written outside the cache"


def write_reference(q, k, v, ft, fh, fw, grid, offset, n_slots, slots, dtype):
    """Reference q and caches for possibly out-of-range slots: a frame with a slot outside
    [0, n_slots) goes to a scratch slot past the cache, i.e. it changes nothing in it."""
    b, t, h, d = q.shape
    tpf = grid[0] * grid[1]
    scratch = [s if 0 <= s < n_slots else n_slots + f for f, s in enumerate(slots)]
    k_ref = torch.full((b, (n_slots + len(slots)) * tpf, h, d), SENTINEL, dtype=dtype, device=DEVICE)
    v_ref = k_ref.clone()
    q_ref = reference.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *grid, offset, k_ref, v_ref,
                                            torch.tensor(scratch, device=DEVICE))
    return q_ref, k_ref[:, :n_slots * tpf], v_ref[:, :n_slots * tpf]


@needs_triton
@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("via", ["flex_kernels", "ops"])
def test_out_of_range_slots_write_nothing(via, slot_dtype):
    """Frames whose slot is outside [0, n_slots) get their rotated q and no cache write."""
    head_dim, dtype, n_slots = 32, torch.float16, 3
    far = 2**40 if slot_dtype == torch.int64 else 2**31 - 1
    slots = [1, -1, n_slots, 10**8, -(10**8), far, 0]
    batch = 1 if via == "ops" else 2  # flex.ops takes contiguous caches only
    frames = len(slots)
    q, k, v = (randn(batch, frames * SMALL_TPF, HEADS, head_dim, dtype=dtype, seed=60 + i) for i in range(3))
    ft, fh, fw = Rope3D.for_wan(head_dim, "flex", length=480).tables(0, frames, *SMALL_GRID, device=DEVICE)
    k_guard, k_cache = guarded(batch, n_slots * SMALL_TPF, head_dim, dtype)
    v_guard, v_cache = guarded(batch, n_slots * SMALL_TPF, head_dim, dtype)
    frame_slots = torch.tensor(slots, dtype=slot_dtype, device=DEVICE)
    args = (q, k, v, None, None, 1e-6, ft, fh, fw, *SMALL_GRID, 0, k_cache, v_cache, frame_slots)
    if via == "ops":  # the public op checks the slots (one host read) before any kernel runs
        with pytest.raises(ValueError, match="frame_slots must lie in"):
            ops.norm_rope_cache_write(*args, backend="triton")
        assert_guard_intact(k_guard, k_cache, "k_cache")
        assert (k_cache == SENTINEL).all() and (v_cache == SENTINEL).all()
        return
    q_out = fk.norm_rope_cache_write(*args)
    q_ref, k_ref, v_ref = write_reference(q, k, v, ft, fh, fw, SMALL_GRID, 0, n_slots, slots, dtype)
    triton_assert_close(q_out, q_ref, dtype, "q of every frame, in range or not")
    assert_guard_intact(k_guard, k_cache, "k_cache")
    assert_guard_intact(v_guard, v_cache, "v_cache")
    written = slice(0, 2 * SMALL_TPF)  # slots 0 and 1
    triton_assert_close(k_cache[:, written], k_ref[:, written], dtype, "k_cache slots 0, 1")
    assert torch.equal(v_cache, v_ref)
    assert (k_cache[:, 2 * SMALL_TPF:] == SENTINEL).all(), "slot 2 is in no frame_slots entry"


@needs_triton
def test_strided_frame_slots():
    """frame_slots may be a strided view: the kernel reads its entries, not the gaps."""
    head_dim, dtype, n_slots = 32, torch.float32, 3
    q, k, v = (randn(1, 2 * SMALL_TPF, HEADS, head_dim, dtype=dtype, seed=70 + i) for i in range(3))
    ft, fh, fw = Rope3D.for_wan(head_dim, "flex", length=480).tables(0, 2, *SMALL_GRID, device=DEVICE)
    backing = torch.tensor([2, 0, 1, 0], device=DEVICE)  # the gaps hold slot 0
    k_guard, k_cache = guarded(1, n_slots * SMALL_TPF, head_dim, dtype)
    v_guard, v_cache = guarded(1, n_slots * SMALL_TPF, head_dim, dtype)
    fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *SMALL_GRID, 0, k_cache, v_cache, backing[::2])
    _, k_ref, v_ref = write_reference(q, k, v, ft, fh, fw, SMALL_GRID, 0, n_slots, [2, 1], dtype)
    triton_assert_close(k_cache[:, SMALL_TPF:], k_ref[:, SMALL_TPF:], dtype, "k_cache slots 1, 2")
    assert torch.equal(v_cache, v_ref) and (k_cache[:, :SMALL_TPF] == SENTINEL).all(), "slot 0 was written"


@needs_triton
def test_ops_norm_rope_cache_write_triton_backend():
    run_write(WRITE_CASES["3frames-nonorm-unrotated-k-dev-offset"], 64, torch.float16, backend="triton", seed=21)
