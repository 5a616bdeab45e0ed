"""Tests of the compiled operators torch.ops.flex.* (flex._C, C++ CPU and CUDA kernels).

Every kernel is compared with the float64 references of flex.reference on random inputs of odd
sizes (a 7 x 9 frame grid, 1 or 3 frames, 2-3 heads), strided inputs and large frame offsets,
with the error bounds fp32 1e-5, fp16 2e-3, bf16 1e-2 relative to the reference's max |value|.
CUDA variants run when a GPU is present.
"""
from __future__ import annotations

import math

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
    (dict(grid_h=0), "grid_h and grid_w must be positive"),
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
