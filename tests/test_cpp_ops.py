"""Tests of the compiled operators torch.ops.flex.* (flex._C, C++ CPU and CUDA kernels).

Every kernel is compared with the float64 references of flex.reference on random inputs of odd
sizes (a 7 x 9 frame grid, 1 or 3 frames, 2-3 heads), strided inputs and large frame offsets,
with the error bounds fp32 1e-5, fp16 2e-3, bf16 1e-2 relative to the reference's max |value|.
CUDA variants run when a GPU is present.
"""
from __future__ import annotations

import os

import pytest
import torch

from flex import _extension, reference

pytestmark = pytest.mark.skipif(not _extension.AVAILABLE, reason=_extension.unavailable_reason())

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GRID = (7, 9)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def wan_planes(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of head_dim / 2 rotation planes into temporal / height / width."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def axis_table(n_planes: int, rows, base: float = 10000.0) -> torch.Tensor:
    """(cos, sin) of position * theta_m for the given positions, computed in float64, as float32."""
    m = torch.arange(n_planes, dtype=torch.float64)
    theta = base ** (-2.0 * m / (2 * n_planes))
    angle = torch.as_tensor(rows, dtype=torch.float64)[:, None] * theta[None, :]
    return torch.stack((angle.cos(), angle.sin()), dim=-1).to(torch.float32)


def rope_tables(head_dim, n_frames, frame_offset=0, grid=GRID, device="cpu", sparse_from=10_000):
    """freqs_t, freqs_h, freqs_w for frames [0, frame_offset + n_frames) and the grid.

    Past `sparse_from` temporal rows only the rows the call uses are filled (the rest is zero,
    so reading a wrong row shows up as a mismatch).
    """
    ct, ch, cw = wan_planes(head_dim)
    n_rows = frame_offset + n_frames
    if n_rows <= sparse_from:
        ft = axis_table(ct, range(n_rows))
    else:
        ft = torch.zeros(n_rows, ct, 2)
        ft[frame_offset:] = axis_table(ct, range(frame_offset, n_rows))
    fh = axis_table(ch, range(grid[0] + 2))  # a few spare rows: tables may be taller than the grid
    fw = axis_table(cw, range(grid[1] + 1))
    return ft.to(device), fh.to(device), fw.to(device)


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    assert out.dtype == dtype, (out.dtype, dtype)
    assert out.shape == ref.shape, (out.shape, ref.shape)
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert torch.isfinite(out64).all(), f"{what}: non-finite output"
    scale = ref64.abs().max().clamp_min(1e-30)
    err = ((out64 - ref64).abs().max() / scale).item()
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g} > {TOL[dtype]:g} ({dtype})"


def random_x(shape, dtype, device, layout="contiguous", seed=0):
    """x of the given [B, T, H, D] shape, contiguous or as a strided view of a bigger tensor."""
    g = torch.Generator().manual_seed(seed)
    b, t, h, d = shape

    def randn(*size):
        return torch.randn(*size, generator=g).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randn(*shape)
    if layout == "qkv_slice":  # x = fused qkv[:, :, 1]: strides (T*3*H*D, 3*H*D, D, 1)
        x = randn(b, t, 3, h, d)[:, :, 1]
    elif layout == "heads_major":  # storage [B, H, T, D] viewed as [B, T, H, D]
        x = randn(b, h, t, d).transpose(1, 2)
    elif layout == "padded":  # rows padded in the last dim: x = y[..., :D]
        x = randn(b, t, h, d + 8)[..., :d]
    else:
        raise AssertionError(layout)
    assert not x.is_contiguous() and x.stride(-1) == 1
    return x


# --------------------------------------------------------------------------------------------
# rope3d


def run_rope3d(x, tables, frame_offset, grid=GRID):
    return torch.ops.flex.rope3d(x, *tables, grid[0], grid[1], frame_offset)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("n_frames", [1, 3])
def test_rope3d_matches_reference(device, dtype, head_dim, n_frames):
    tpf = GRID[0] * GRID[1]
    x = random_x((2, n_frames * tpf, 3, head_dim), dtype, device, seed=head_dim + n_frames)
    for frame_offset in (0, 20, 1023):
        tables = rope_tables(head_dim, n_frames, frame_offset, device=device)
        out = run_rope3d(x, tables, frame_offset)
        assert out.is_contiguous() and out.device == x.device
        ref = reference.rope3d(x.double(), *tables, *GRID, frame_offset)
        assert_close(out, ref, dtype, f"rope3d D={head_dim} F={n_frames} offset={frame_offset}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["qkv_slice", "heads_major", "padded"])
def test_rope3d_strided_input(device, dtype, layout):
    x = random_x((2, 3 * 63, 3, 64), dtype, device, layout=layout, seed=7)
    tables = rope_tables(64, 3, 5, device=device)
    out = run_rope3d(x, tables, 5)
    assert out.is_contiguous()
    assert_close(out, reference.rope3d(x.double(), *tables, *GRID, 5), dtype, f"rope3d {layout}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frame_offset,head_dim", [(100_003, 64), (1_000_000, 128)])
def test_rope3d_far_frames(device, frame_offset, head_dim):
    """Frame indices far past any training length stay exact (tables built in float64)."""
    x = random_x((1, 2 * 63, 2, head_dim), torch.float32, device, seed=3)
    tables = rope_tables(head_dim, 2, frame_offset, device=device)
    out = run_rope3d(x, tables, frame_offset)
    assert_close(out, reference.rope3d(x.double(), *tables, *GRID, frame_offset), torch.float32, "far")


@pytest.mark.parametrize("device", DEVICES)
def test_rope3d_float64_and_empty(device):
    x = random_x((1, 63, 2, 32), torch.float64, device)
    tables = rope_tables(32, 1, 2, device=device)
    assert_close(run_rope3d(x, tables, 2), reference.rope3d(x, *tables, *GRID, 2), torch.float64, "f64")
    empty = torch.empty(0, 63, 2, 32, device=device)
    assert run_rope3d(empty, tables, 0).shape == empty.shape


def test_rope3d_other_split_and_grid():
    """Plane counts other than Wan's and a 1 x 5 grid: only C_t + C_h + C_w = D/2 matters."""
    grid = (1, 5)
    x = random_x((1, 4 * 5, 2, 16), torch.float32, "cpu")
    tables = (axis_table(2, range(6)), axis_table(5, range(1)), axis_table(1, range(5)))
    out = run_rope3d(x, tables, 2, grid)
    assert_close(out, reference.rope3d(x.double(), *tables, *grid, 2), torch.float32, "split 2/5/1")


def _rope_args(**change):
    x = torch.randn(1, 2 * 63, 2, 32)
    ft, fh, fw = rope_tables(32, 2)
    args = dict(x=x, freqs_t=ft, freqs_h=fh, freqs_w=fw, grid_h=GRID[0], grid_w=GRID[1], frame_offset=0)
    args.update(change)
    return args


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(1, 126, 64)), r"rope3d: x must be 4-D \[B, T, H, D\]"),
    (dict(x=torch.randn(1, 125, 2, 32)), "must be a multiple of grid_h \\* grid_w = 63"),
    (dict(x=torch.randn(1, 126, 2, 64)[..., ::2]), "last dim of x must be contiguous"),
    (dict(x=torch.randn(1, 126, 2, 32).int()), "x must be float32, float16, bfloat16 or float64"),
    (dict(x=torch.randn(1, 126, 2, 31)), "must be even"),
    (dict(x=torch.randn(1, 126, 2, 34)), "must sum to D/2 = 17"),
    (dict(frame_offset=1), "frame rows out of range"),
    (dict(frame_offset=-1), "frame_offset must be >= 0"),
    (dict(grid_h=0), r"rope3d: grid_h must be >= 1, got 0"),
    (dict(freqs_t=rope_tables(32, 2)[0].double()), "freqs_t must be float32"),
    (dict(freqs_h=rope_tables(32, 2)[1][:6]), "grid_h = 7 exceeds the 6 rows of freqs_h"),
    (dict(freqs_w=rope_tables(32, 2)[2][:, :, 0]), r"freqs_w must be \[N, C, 2\]"),
])
def test_rope3d_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.flex.rope3d(**_rope_args(**change))


def test_rope3d_opcheck():
    tables = rope_tables(32, 2)
    for x in (torch.randn(1, 126, 2, 32), random_x((1, 126, 2, 32), torch.float32, "cpu", "qkv_slice")):
        torch.library.opcheck(torch.ops.flex.rope3d.default, (x, *tables, *GRID, 0))


@CUDA
def test_rope3d_device_mismatch():
    with pytest.raises(ValueError, match="freqs_t is on cpu but x is on cuda"):
        torch.ops.flex.rope3d(**_rope_args(x=torch.randn(1, 126, 2, 32, device="cuda")))


@CUDA
def test_rope3d_opcheck_cuda():
    tables = rope_tables(32, 2, device="cuda")
    torch.library.opcheck(torch.ops.flex.rope3d.default, (torch.randn(1, 126, 2, 32, device="cuda"), *tables, *GRID, 0))


def test_rope3d_compiles():
    """The fake kernel lets torch.compile trace the op (fullgraph, no graph break)."""
    tables = rope_tables(32, 2)
    x = torch.randn(1, 126, 2, 32)

    def f(x):
        return torch.ops.flex.rope3d(x * 2, *tables, *GRID, 0) + 1

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


def test_build_flags():
    assert isinstance(_extension.has_cuda_kernels(), bool)
    if torch.cuda.is_available() and torch.version.cuda is not None:
        assert _extension.has_cuda_kernels(), "CUDA torch with a GPU but flex._C lacks CUDA kernels"


# --------------------------------------------------------------------------------------------
# norm_rope_cache_write

def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def qkv_inputs(b, t, h, d, dtype, device, strided, seed=0):
    if strided:  # slices of one fused [B, T, 3, H, D] projection
        g = torch.Generator().manual_seed(seed)
        qkv = torch.randn(b, t, 3, h, d, generator=g).to(device=device, dtype=dtype)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    return tuple(random_x((b, t, h, d), dtype, device, seed=seed + i) for i in range(3))


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
    wq = (torch.rand(heads * head_dim, generator=g) + 0.5).to(device, weight_dtype) if norms[0] else None
    wk = (torch.rand(heads * head_dim, generator=g) + 0.5).to(device, weight_dtype) if norms[1] else None
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim,heads", [(32, 3), (64, 2), (128, 3)])
@pytest.mark.parametrize("n_frames", [1, 3])
def test_norm_rope_cache_write_matches_reference(device, dtype, head_dim, heads, n_frames):
    for frame_offset, rotate_k_temporal in ((0, True), (20, False), (100_003, True)):
        run_norm_rope_cache(dtype, device, head_dim, heads, n_frames, frame_offset,
                            rotate_k_temporal=rotate_k_temporal, seed=head_dim + n_frames)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norms", [(False, False), (True, False), (False, True)])
def test_norm_rope_cache_write_optional_norms(device, dtype, norms):
    run_norm_rope_cache(dtype, device, norms=norms, rotate_k_temporal=False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm_rope_cache_write_strided_qkv(device, dtype):
    run_norm_rope_cache(dtype, device, head_dim=128, heads=2, strided=True, slots=[2, 0, 4])


@pytest.mark.parametrize("device", DEVICES)
def test_norm_rope_cache_write_slot_and_weight_dtypes(device):
    run_norm_rope_cache(torch.bfloat16, device, slot_dtype=torch.int32, weight_dtype=torch.bfloat16,
                        slots=[1, 3, 0], n_slots=4)
    run_norm_rope_cache(torch.float16, device, slot_dtype=torch.int32, weight_dtype=torch.float64,
                        n_frames=1, slots=[0], n_slots=1, batch=1)


@pytest.mark.parametrize("device", DEVICES)
def test_norm_rope_cache_write_float64(device):
    run_norm_rope_cache(torch.float64, device, head_dim=32, n_frames=2, slots=[1, 0], n_slots=2)


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


def _nrc_args(**change):
    tpf = GRID[0] * GRID[1]
    q, k, v = (torch.randn(1, 2 * tpf, 2, 32) for _ in range(3))
    ft, fh, fw = rope_tables(32, 2)
    args = dict(q=q, k=k, v=v, norm_q_weight=torch.ones(64), norm_k_weight=torch.ones(64), eps=1e-6,
                freqs_t=ft, freqs_h=fh, freqs_w=fw, grid_h=GRID[0], grid_w=GRID[1], frame_offset=0,
                k_cache=torch.zeros(1, 3 * tpf, 2, 32), v_cache=torch.zeros(1, 3 * tpf, 2, 32),
                frame_slots=torch.tensor([0, 2]), rotate_k_temporal=True)
    args.update(change)
    return args


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


def test_norm_rope_cache_write_opcheck():
    args = _nrc_args()
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))
    args = _nrc_args(norm_q_weight=None, norm_k_weight=None, rotate_k_temporal=False,
                     frame_slots=torch.tensor([2, 1], dtype=torch.int32))
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))


@CUDA
def test_norm_rope_cache_write_opcheck_cuda():
    args = {n: (a.cuda() if isinstance(a, torch.Tensor) else a) for n, a in _nrc_args().items()}
    torch.library.opcheck(torch.ops.flex.norm_rope_cache_write.default, tuple(args.values()))


# --------------------------------------------------------------------------------------------
# ring_attention

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


@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_queries_without_keys(dtype):
    """Keys all later than the queries' chunk: output 0, lse -inf (block-causal)."""
    q, k, v, frames = ring_inputs(dtype, [7, 8, -1], n_q_frames=2, heads=2, head_dim=32)
    out, lse = check_attention(q, k, v, frames, 63, 0, 1, what="no visible key")
    assert (out == 0).all() and torch.isinf(lse).all()
    # Chunk 0 (frame 0) sees nothing, chunk 1 of a later start sees frame 7 only.
    out, lse = check_attention(q, k, v, frames, 63, 6, 1, what="first chunk blind")
    assert torch.isinf(lse[:, :, :63]).all() and torch.isfinite(lse[:, :, 63:]).all()


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_strided(dtype):
    q, k, v, frames = ring_inputs(dtype, [0, 1, 2, 5, -1, 4], n_q_frames=2, heads=3, head_dim=64,
                                  q_layout="qkv_slice", cache_layout="padded")
    check_attention(q, k, v, frames, 63, 4, 1, key_tables(64, [0, 1, 2, 5, -1, 4], 7), what="strided")
    q2, k2, v2, _ = ring_inputs(dtype, [0, 1, 2, 5, -1, 4], n_q_frames=1, heads=3, head_dim=64,
                                q_layout="heads_major", cache_layout="heads_major")
    check_attention(q2, k2, v2, frames, 63, 6, 0, what="heads-major")


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


def _attn_args(**change):
    tpf = 63
    args = dict(q=torch.randn(1, tpf, 2, 32), k_cache=torch.randn(1, 3 * tpf, 2, 32),
                v_cache=torch.randn(1, 3 * tpf, 2, 32), slot_frame=torch.tensor([0, 1, -1]),
                tokens_per_frame=tpf, q_first_frame=1, chunk_frames=1, scale=0.2,
                key_freqs_t=torch.randn(3, 6, 2), return_lse=True)
    args.update(change)
    return args


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


def test_ring_attention_opcheck():
    for args in (_attn_args(), _attn_args(key_freqs_t=None, return_lse=False, chunk_frames=0)):
        torch.library.opcheck(torch.ops.flex.ring_attention.default, tuple(args.values()))


def test_ring_attention_compiles():
    args = _attn_args()

    def f(q):
        out, lse = torch.ops.flex.ring_attention(q * 1.0, *list(args.values())[1:])
        return out.sum() + lse.clamp_min(-1e30).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(args["q"]), f(args["q"]))


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


@pytest.fixture
def one_thread():
    """Run with a single intra-op thread (tasks then cover several query blocks)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


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


@pytest.mark.parametrize("dtype", DTYPES)
def test_ring_attention_negative_scale(dtype):
    """A non-positive scale takes the unfused softmax of the 16-bit path."""
    q, k, v, frames = ring_inputs(dtype, [0, 1, -1, 2], n_q_frames=2, heads=2, head_dim=64)
    k64, v64 = k.double().nan_to_num(0.0), v.double().nan_to_num(0.0)
    out, lse = torch.ops.flex.ring_attention(q, k, v, frames, 63, 3, 1, -0.07, None, True)
    ref, ref_lse = reference.ring_attention(q.double(), k64, v64, frames, 63, 3, 1, -0.07, None, True)
    assert_close(out, ref, dtype, "negative scale")
    assert (lse.double() - ref_lse).abs().max() <= LSE_TOL[dtype] * max(1.0, ref_lse.abs().max().item())


# --------------------------------------------------------------------------------------------
# Direct calls of torch.ops.flex.* are memory-safe on any input: sizes, offsets and indices are
# checked without int64 overflow, and every bad argument is a ValueError that names it.

I64_MAX = 2**63 - 1


@pytest.mark.parametrize("n_frames,frame_offset", [
    (1, I64_MAX), (2, I64_MAX - 1), (3, 2**63 - 2), (1000, 2**63 - 1000), (1, 2**62 + 1),
])
def test_rope3d_frame_offset_overflow(n_frames, frame_offset):
    """frame_offset + frames overflowing int64 used to pass the bound check (crash / heap values)."""
    ft, fh, fw = axis_table(64, range(4)), torch.zeros(1, 0, 2), torch.zeros(1, 0, 2)
    x = torch.ones(1, n_frames, 1, 128)
    with pytest.raises(ValueError, match=r"rope3d: frame_offset \+ frames = .* \(frame rows out of range\)"):
        torch.ops.flex.rope3d(x, ft, fh, fw, 1, 1, frame_offset)


@pytest.mark.parametrize("frame_offset", [I64_MAX, 2**63 - 2, 2**62])
def test_norm_rope_cache_write_frame_offset_overflow(frame_offset):
    cache = _nrc_args()["k_cache"]
    args = _nrc_args(frame_offset=frame_offset)
    with pytest.raises(ValueError, match=r"norm_rope_cache_write: frame_offset \+ frames = .*out of range"):
        torch.ops.flex.norm_rope_cache_write(**args)
    assert torch.equal(args["k_cache"], cache) and torch.equal(args["v_cache"], cache), "cache written"


GRID_OVERFLOW = [
    ((2**32, 2**32), r"grid_h \* grid_w = 4294967296 \* 4294967296 does not fit in int64"),
    ((2**31, 2**32), "does not fit in int64"),
    ((I64_MAX, 2), "does not fit in int64"),
    ((0, 7), "grid_h must be >= 1, got 0"),
    ((7, 0), "grid_w must be >= 1, got 0"),
    ((-1, -1), "grid_h must be >= 1, got -1"),
    ((7, -2**63), "grid_w must be >= 1"),
]


@pytest.mark.parametrize("grid,match", GRID_OVERFLOW)
def test_rope3d_grid_overflow(grid, match):
    """grid_h * grid_w wrapping to 0 used to divide by zero (SIGFPE)."""
    with pytest.raises(ValueError, match=f"rope3d: .*{match}"):
        torch.ops.flex.rope3d(**_rope_args(grid_h=grid[0], grid_w=grid[1]))


@pytest.mark.parametrize("grid,match", GRID_OVERFLOW)
def test_norm_rope_cache_write_grid_overflow(grid, match):
    with pytest.raises(ValueError, match=f"norm_rope_cache_write: .*{match}"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(grid_h=grid[0], grid_w=grid[1]))


def test_rope3d_more_bad_input():
    """Head dim 0, too many planes in one table, a frame grid larger than the tables."""
    with pytest.raises(ValueError, match="head dim D of x must be even and positive"):
        torch.ops.flex.rope3d(**_rope_args(x=torch.randn(1, 126, 2, 0)))
    with pytest.raises(ValueError, match="freqs_t has 17 planes, more than D/2 = 16"):
        torch.ops.flex.rope3d(**_rope_args(freqs_t=torch.zeros(2, 17, 2)))
    with pytest.raises(ValueError, match="freqs_h has 2305843009213693952 planes"):  # empty table, huge dim
        torch.ops.flex.rope3d(**_rope_args(freqs_h=torch.empty(0, 2**61, 2)))
    with pytest.raises(ValueError, match=r"head dim D of x must have D/2 < 2\^31 planes"):  # int32 plane index
        torch.ops.flex.rope3d(**_rope_args(x=torch.empty(0, 126, 1, 2**32)))
    with pytest.raises(ValueError, match="grid_w = 9 exceeds the 3 rows of freqs_w"):
        torch.ops.flex.rope3d(**_rope_args(freqs_w=rope_tables(32, 2)[2][:3]))


def test_rope3d_no_frames():
    """T = 0: an empty result; frame_offset must still lie within freqs_t (as python/flex/ops.py asks)."""
    ft, fh, fw = rope_tables(32, 2)
    x = torch.randn(2, 0, 2, 32)
    assert torch.ops.flex.rope3d(x, ft, fh, fw, *GRID, 2).shape == x.shape
    with pytest.raises(ValueError, match="frame rows out of range"):
        torch.ops.flex.rope3d(x, ft, fh, fw, *GRID, 3)


TENSOR_ARGS = {
    "rope3d": ("x", ["freqs_t", "freqs_h", "freqs_w"]),
    "norm_rope_cache_write": ("q", ["k", "v", "norm_q_weight", "norm_k_weight", "freqs_t", "freqs_h",
                                    "freqs_w", "k_cache", "v_cache", "frame_slots"]),
    "ring_attention": ("q", ["k_cache", "v_cache", "slot_frame", "key_freqs_t"]),
}
ARGS = {"rope3d": _rope_args, "norm_rope_cache_write": _nrc_args, "ring_attention": _attn_args}


def _device_cases():
    for op, (ref, names) in TENSOR_ARGS.items():
        for name in names:
            yield op, ref, name


@pytest.mark.parametrize("op,ref,name", list(_device_cases()))
def test_argument_on_meta_device(op, ref, name):
    """One argument on the meta device routes the call to the fake kernel: it must refuse it
    (it used to return an uninitialised result and leave the cache unwritten)."""
    args = ARGS[op]()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"{op}: {name} is on meta but {ref} is on cpu"):
        getattr(torch.ops.flex, op)(**args)


@pytest.mark.parametrize("op", sorted(TENSOR_ARGS))
def test_all_arguments_on_meta_device(op):
    """All tensors on meta (shape inference) is consistent and still works."""
    args = {n: a.to("meta") if isinstance(a, torch.Tensor) else a for n, a in ARGS[op]().items()}
    out = getattr(torch.ops.flex, op)(**args)
    out = out[0] if isinstance(out, tuple) else out
    assert out.device.type == "meta" and out.shape == args[TENSOR_ARGS[op][0]].shape


@CUDA
@pytest.mark.parametrize("op,ref,name", [c for c in _device_cases() if c[0] != "ring_attention"])
def test_argument_on_other_device_cuda(op, ref, name):
    """The C++ checks: one CPU argument of a CUDA call is refused by name."""
    args = {n: (a.cuda() if isinstance(a, torch.Tensor) and n != name else a) for n, a in ARGS[op]().items()}
    with pytest.raises(ValueError, match=rf"{op}: {name} is on cpu but {ref} is on cuda"):
        getattr(torch.ops.flex, op)(**args)


@pytest.mark.parametrize("eps", [0.0, -0.0, -1e-6, float("nan"), float("inf"), float("-inf")])
def test_norm_rope_cache_write_eps(eps):
    """eps must be > 0 and finite (with eps = 0 an all-zero token gives NaN)."""
    with pytest.raises(ValueError, match="norm_rope_cache_write: eps must be > 0 and finite"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(eps=eps))


def test_norm_rope_cache_write_zero_input_is_finite():
    zeros = torch.zeros(1, 126, 2, 32)
    args = _nrc_args(q=zeros, k=zeros.clone(), v=zeros.clone())
    q_out = torch.ops.flex.norm_rope_cache_write(**args)
    assert torch.equal(q_out, zeros) and torch.isfinite(args["k_cache"]).all()


def test_norm_rope_cache_write_weight_of_any_shape():
    """python/flex/ops.py takes a norm weight of H*D elements in any shape: so does C++."""
    w = torch.rand(2, 32) + 0.5
    a = _nrc_args(norm_q_weight=w, norm_k_weight=w)
    b = _nrc_args(q=a["q"], k=a["k"], v=a["v"], norm_q_weight=w.flatten(), norm_k_weight=w.flatten())
    assert torch.equal(torch.ops.flex.norm_rope_cache_write(**a), torch.ops.flex.norm_rope_cache_write(**b))
    assert torch.equal(a["k_cache"], b["k_cache"]) and torch.equal(a["v_cache"], b["v_cache"])
    with pytest.raises(ValueError, match="norm_k_weight must be a float tensor"):
        torch.ops.flex.norm_rope_cache_write(**_nrc_args(norm_k_weight=torch.ones(64, dtype=torch.bool)))


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


def test_norm_rope_cache_write_no_frames():
    """T = 0: empty q_out, caches untouched."""
    empty = torch.randn(1, 0, 2, 32)
    args = _nrc_args(q=empty, k=empty.clone(), v=empty.clone(), frame_slots=torch.tensor([], dtype=torch.int64))
    assert torch.ops.flex.norm_rope_cache_write(**args).shape == empty.shape
    assert (args["k_cache"] == 0).all() and (args["v_cache"] == 0).all()


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


BAD_PUBLIC_CALLS = {
    "rope3d frame_offset overflow": ("rope3d", dict(frame_offset=I64_MAX)),
    "rope3d grid overflow": ("rope3d", dict(grid_h=2**32, grid_w=2**32)),
    "norm eps 0": ("norm_rope_cache_write", dict(eps=0.0)),
    "norm frame_offset overflow": ("norm_rope_cache_write", dict(frame_offset=I64_MAX)),
    "norm slot out of range": ("norm_rope_cache_write", dict(frame_slots=torch.tensor([0, 3]))),
    "attention int32 slot_frame": ("ring_attention", dict(slot_frame=torch.tensor([0, 1, -1], dtype=torch.int32))),
    "attention negative q_first_frame": ("ring_attention", dict(q_first_frame=-1)),
    "attention nan scale": ("ring_attention", dict(scale=float("nan"))),
    "attention q_first_frame overflow": ("ring_attention", dict(q_first_frame=I64_MAX)),
}


@pytest.mark.parametrize("case", sorted(BAD_PUBLIC_CALLS))
def test_public_ops_and_cpp_agree_on_bad_input(case):
    """The same bad call is a ValueError through flex.ops (backend="cpp") and through torch.ops.flex."""
    from flex import ops
    op, change = BAD_PUBLIC_CALLS[case]
    with pytest.raises(ValueError):
        getattr(torch.ops.flex, op)(**ARGS[op](**change))
    with pytest.raises(ValueError):
        getattr(ops, op)(**ARGS[op](**change), backend="cpp")
