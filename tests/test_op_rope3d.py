"""rope3d (Wan's interleaved 3D RoPE from per-axis cos/sin tables): every backend against the
float64 reference, the public op's input checks, the C++ operator torch.ops.flex.rope3d and the
Triton kernel flex_kernels.rope3d.
"""
import pytest
import torch

from flex import ops, reference
from flex.rope import Rope3D

from op_inputs import (
    CUDA, D, DEVICE, DEVICES, DTYPES, GH, GRID, GRID_OVERFLOW, GW, H, HEADS, HEAD_DIMS, I64_MAX,
    SMALL_GRID, SMALL_TPF, TPF, TPF_3X5, TRITON_DTYPES, _rope_args, assert_close, axis_table,
    backends, fk, fused_qkv, nan_guarded_table, needs_extension, needs_triton, randn, random_x,
    rope_inputs, rope_tables, tables, tables_3x5, triton_assert_close,
)


# --------------------------------------------------------------------------------------------
# Every backend available here, through flex.ops, against the float64 reference


@pytest.mark.parametrize("backend", backends("rope3d"))
def test_rope3d(backend):
    x = torch.randn(2, 2 * TPF_3X5, H, D)
    ft, fh, fw = tables_3x5(0, 5)
    want = reference.rope3d(x, ft, fh, fw, GH, GW, 3)
    got = ops.rope3d(x, ft, fh, fw, GH, GW, 3, backend=backend)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max())


# --------------------------------------------------------------------------------------------
# flex.ops.rope3d: input checks


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(1, 25, 2, 32)), "multiple of grid_h"),
    (dict(x=torch.randn(1, 24, 2, 30)), "planes"),
    (dict(frame_offset=5), "freqs_t has 2 frames"),
    (dict(frame_offset=-1), "frame_offset"),
    (dict(grid_h=0), "grid_h"),
    (dict(x=torch.randn(1, 24, 2, 64)[..., ::2]), "contiguous"),
    (dict(x=torch.randn(1, 24, 32)), "x must be 4-D"),
])
def test_rope3d_bad_input_reference(change, match):
    x, ft, fh, fw, gh, gw = rope_inputs()
    args = dict(x=x, freqs_t=ft, freqs_h=fh, freqs_w=fw, grid_h=gh, grid_w=gw, frame_offset=0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        ops.rope3d(**args, backend="reference")


# --------------------------------------------------------------------------------------------
# The C++ operator torch.ops.flex.rope3d (CPU; CUDA when a GPU is present)


def run_rope3d(x, tables, frame_offset, grid=GRID):
    return torch.ops.flex.rope3d(x, *tables, grid[0], grid[1], frame_offset)


@needs_extension
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


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["qkv_slice", "heads_major", "padded"])
def test_rope3d_strided_input(device, dtype, layout):
    x = random_x((2, 3 * 63, 3, 64), dtype, device, layout=layout, seed=7)
    tables = rope_tables(64, 3, 5, device=device)
    out = run_rope3d(x, tables, 5)
    assert out.is_contiguous()
    assert_close(out, reference.rope3d(x.double(), *tables, *GRID, 5), dtype, f"rope3d {layout}")


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frame_offset,head_dim", [(100_003, 64), (1_000_000, 128)])
def test_rope3d_far_frames(device, frame_offset, head_dim):
    """Frame indices far past any training length stay exact (tables built in float64)."""
    x = random_x((1, 2 * 63, 2, head_dim), torch.float32, device, seed=3)
    tables = rope_tables(head_dim, 2, frame_offset, device=device)
    out = run_rope3d(x, tables, frame_offset)
    assert_close(out, reference.rope3d(x.double(), *tables, *GRID, frame_offset), torch.float32, "far")


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
def test_rope3d_float64_and_empty(device):
    x = random_x((1, 63, 2, 32), torch.float64, device)
    tables = rope_tables(32, 1, 2, device=device)
    assert_close(run_rope3d(x, tables, 2), reference.rope3d(x, *tables, *GRID, 2), torch.float64, "f64")
    empty = torch.empty(0, 63, 2, 32, device=device)
    assert run_rope3d(empty, tables, 0).shape == empty.shape


@needs_extension
def test_rope3d_other_split_and_grid():
    """Plane counts other than Wan's and a 1 x 5 grid: only C_t + C_h + C_w = D/2 matters."""
    grid = (1, 5)
    x = random_x((1, 4 * 5, 2, 16), torch.float32, "cpu")
    tables = (axis_table(2, range(6)), axis_table(5, range(1)), axis_table(1, range(5)))
    out = run_rope3d(x, tables, 2, grid)
    assert_close(out, reference.rope3d(x.double(), *tables, *grid, 2), torch.float32, "split 2/5/1")


@needs_extension
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


@needs_extension
def test_rope3d_opcheck():
    tables = rope_tables(32, 2)
    for x in (torch.randn(1, 126, 2, 32), random_x((1, 126, 2, 32), torch.float32, "cpu", "qkv_slice")):
        torch.library.opcheck(torch.ops.flex.rope3d.default, (x, *tables, *GRID, 0))


@needs_extension
@CUDA
def test_rope3d_device_mismatch():
    with pytest.raises(ValueError, match="freqs_t is on cpu but x is on cuda"):
        torch.ops.flex.rope3d(**_rope_args(x=torch.randn(1, 126, 2, 32, device="cuda")))


@needs_extension
@CUDA
def test_rope3d_opcheck_cuda():
    tables = rope_tables(32, 2, device="cuda")
    torch.library.opcheck(torch.ops.flex.rope3d.default, (torch.randn(1, 126, 2, 32, device="cuda"), *tables, *GRID, 0))


@needs_extension
def test_rope3d_compiles():
    """The fake kernel lets torch.compile trace the op (fullgraph, no graph break)."""
    tables = rope_tables(32, 2)
    x = torch.randn(1, 126, 2, 32)

    def f(x):
        return torch.ops.flex.rope3d(x * 2, *tables, *GRID, 0) + 1

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), f(x))


@needs_extension
@pytest.mark.parametrize("n_frames,frame_offset", [
    (1, I64_MAX), (2, I64_MAX - 1), (3, 2**63 - 2), (1000, 2**63 - 1000), (1, 2**62 + 1),
])
def test_rope3d_frame_offset_overflow(n_frames, frame_offset):
    """frame_offset + frames overflowing int64 used to pass the bound check (crash / heap values)."""
    ft, fh, fw = axis_table(64, range(4)), torch.zeros(1, 0, 2), torch.zeros(1, 0, 2)
    x = torch.ones(1, n_frames, 1, 128)
    with pytest.raises(ValueError, match=r"rope3d: frame_offset \+ frames = .* \(frame rows out of range\)"):
        torch.ops.flex.rope3d(x, ft, fh, fw, 1, 1, frame_offset)


@needs_extension
@pytest.mark.parametrize("grid,match", GRID_OVERFLOW)
def test_rope3d_grid_overflow(grid, match):
    """grid_h * grid_w wrapping to 0 used to divide by zero (SIGFPE)."""
    with pytest.raises(ValueError, match=f"rope3d: .*{match}"):
        torch.ops.flex.rope3d(**_rope_args(grid_h=grid[0], grid_w=grid[1]))


@needs_extension
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


@needs_extension
def test_rope3d_no_frames():
    """T = 0: an empty result; frame_offset must still lie within freqs_t (as python/flex/ops.py asks)."""
    ft, fh, fw = rope_tables(32, 2)
    x = torch.randn(2, 0, 2, 32)
    assert torch.ops.flex.rope3d(x, ft, fh, fw, *GRID, 2).shape == x.shape
    with pytest.raises(ValueError, match="frame rows out of range"):
        torch.ops.flex.rope3d(x, ft, fh, fw, *GRID, 3)


# --------------------------------------------------------------------------------------------
# The Triton kernel flex_kernels.rope3d (GPU, or the CPU interpreter)


@needs_triton
@pytest.mark.parametrize("dtype", TRITON_DTYPES)
@pytest.mark.parametrize("head_dim", [20] + HEAD_DIMS)
def test_rope3d_triton(head_dim, dtype):
    frames = 2
    x, _, _ = fused_qkv(1, frames * TPF, head_dim, dtype, seed=head_dim)
    start, offset = 100_000 - 1, 3  # table starting past 10^5, offset into it
    ft, fh, fw = tables(head_dim, start, frames + offset + 2)
    ref = reference.rope3d(x, ft, fh, fw, *GRID, offset)
    triton_assert_close(fk.rope3d(x, ft, fh, fw, *GRID, offset), ref, dtype, "rope3d (int offset)")
    dev_offset = torch.tensor(offset, device=DEVICE, dtype=torch.int32)  # read by the kernel, no sync
    out = fk.rope3d(x, ft, fh, fw, *GRID, dev_offset)
    assert out.is_contiguous() and out.dtype == dtype
    triton_assert_close(out, ref, dtype, "rope3d (device offset)")


def unrotated_past_table(ft, offset, frames):
    """freqs_t rows offset .. offset + frames - 1, with (cos 1, sin 0) for rows outside ft."""
    rows = [ft[r] if 0 <= r < ft.shape[0] else torch.stack((torch.ones_like(ft[0, :, 0]), torch.zeros_like(ft[0, :, 0])), -1)
            for r in range(offset, offset + frames)]
    return torch.stack(rows)


@needs_triton
@pytest.mark.parametrize("offset", [-2, 3, 10**12, -(2**62)], ids=["before", "straddles-end", "far", "far-negative"])
@pytest.mark.parametrize("on_device", [False, True], ids=["int", "device"])
def test_frame_offset_outside_table_reads_no_row(offset, on_device):
    """A host frame offset outside freqs_t is an error; with a device offset (which cannot be
    checked on the host) rows outside freqs_t are not read: those frames keep their temporal
    planes unrotated."""
    head_dim, dtype, frames, rows = 32, torch.float32, 3, 4
    x, k, v = (randn(1, frames * SMALL_TPF, HEADS, head_dim, dtype=dtype, seed=80 + i) for i in range(3))
    ft, fh, fw = Rope3D.for_wan(head_dim, "flex", length=480).tables(50, rows, *SMALL_GRID, device=DEVICE)
    ft_guarded = nan_guarded_table(ft)
    expected_t = unrotated_past_table(ft, offset, frames)
    off = torch.tensor(offset, dtype=torch.int64, device=DEVICE) if on_device else offset
    if not on_device:  # a host offset is checked on the host: an error naming it, nothing is read
        with pytest.raises(ValueError, match="frame_offset"):
            fk.rope3d(x, ft_guarded, fh, fw, *SMALL_GRID, off)
        with pytest.raises(ValueError, match="frame_offset"):
            fk.norm_rope_cache_write(x, k, v, None, None, 1e-6, ft_guarded, fh, fw, *SMALL_GRID, off,
                                     torch.zeros_like(x), torch.zeros_like(x), torch.arange(frames, device=DEVICE))
        return
    out = fk.rope3d(x, ft_guarded, fh, fw, *SMALL_GRID, off)
    triton_assert_close(out, reference.rope3d(x, expected_t, fh, fw, *SMALL_GRID, 0), dtype, "rope3d")
    k_cache = torch.zeros(1, frames * SMALL_TPF, HEADS, head_dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(frames, device=DEVICE)
    q_out = fk.norm_rope_cache_write(x, k, v, None, None, 1e-6, ft_guarded, fh, fw, *SMALL_GRID, off,
                                     k_cache, v_cache, slots)
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    q_ref = reference.norm_rope_cache_write(x, k, v, None, None, 1e-6, expected_t, fh, fw, *SMALL_GRID, 0,
                                            k_ref, v_ref, slots)
    triton_assert_close(q_out, q_ref, dtype, "q")
    triton_assert_close(k_cache, k_ref, dtype, "k_cache")


@needs_triton
def test_ops_rope3d_triton_backend():
    x, _, _ = fused_qkv(1, 2 * TPF, 64, torch.float32, seed=22)
    ft, fh, fw = tables(64, 100_000, 4)
    out = ops.rope3d(x, ft, fh, fw, *GRID, 1, backend="triton")
    triton_assert_close(out, ops.rope3d(x, ft, fh, fw, *GRID, 1, backend="reference"), torch.float32, "ops.rope3d")
