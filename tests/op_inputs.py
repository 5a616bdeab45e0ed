"""Inputs, error bounds and checks shared by the op tests (tests/test_op_*.py).

The C++ operator tests (torch.ops.flex.*) compare every kernel with the float64 references of
flex.reference on random inputs of odd sizes (a 7 x 9 frame grid, 1 or 3 frames, 2-3 heads),
strided inputs and large frame offsets, with the error bounds fp32 1e-5, fp16 2e-3, bf16 1e-2
relative to the reference's max |value|. CUDA variants run when a GPU is present.

The Triton kernel tests (flex_kernels) run on the CPU through Triton's interpreter when there
is no GPU (tests/conftest.py sets TRITON_INTERPRET before triton is first imported). Sizes are
kept small for the interpreter: 7x9 = 63 tokens per frame (a multiple of no block size), 2 heads.
bfloat16 cases need a GPU (the interpreter cannot compute in bf16). Where the two sets of tests
use different helpers of one name, the Triton one has the prefix triton_.
"""
import importlib.util

import pytest
import torch

from flex import _extension, ops
from flex.cache import RingKVCache
from flex.rope import Rope3D

HAS_TRITON = importlib.util.find_spec("triton") is not None
if HAS_TRITON:
    import flex_kernels as fk
    from flex_kernels import attention as fk_attention
else:
    fk = fk_attention = None

# What a test runs on: the compiled extension flex._C, or the Triton kernels.
needs_extension = pytest.mark.skipif(not _extension.AVAILABLE, reason=_extension.unavailable_reason())
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")


# --------------------------------------------------------------------------------------------
# Every backend through flex.ops: a 3 x 5 grid, 2 heads x 64


GH, GW, H, D = 3, 5, 2, 64

TPF_3X5 = GH * GW


def backends(op):
    return [b for b in ops.available_backends(op, "cpu") if b != "reference"]


def tables_3x5(first, n):
    return Rope3D.for_wan(D, "flex", length=400).tables(first, n, GH, GW)


# --------------------------------------------------------------------------------------------
# Checks of flex.ops


def rope_inputs(d=32, gh=3, gw=4, nf=2):
    ft, fh, fw = Rope3D.for_wan(d).tables(0, nf, gh, gw)
    return torch.randn(1, nf * gh * gw, 2, d), ft, fh, fw, gh, gw


# --------------------------------------------------------------------------------------------
# The C++ operator tests (torch.ops.flex.*)


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


def _rope_args(**change):
    x = torch.randn(1, 2 * 63, 2, 32)
    ft, fh, fw = rope_tables(32, 2)
    args = dict(x=x, freqs_t=ft, freqs_h=fh, freqs_w=fw, grid_h=GRID[0], grid_w=GRID[1], frame_offset=0)
    args.update(change)
    return args


def poisoned(shape, dtype, device):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def qkv_inputs(b, t, h, d, dtype, device, strided, seed=0):
    if strided:  # slices of one fused [B, T, 3, H, D] projection
        g = torch.Generator().manual_seed(seed)
        qkv = torch.randn(b, t, 3, h, d, generator=g).to(device=device, dtype=dtype)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    return tuple(random_x((b, t, h, d), dtype, device, seed=seed + i) for i in range(3))


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


def _attn_args(**change):
    tpf = 63
    args = dict(q=torch.randn(1, tpf, 2, 32), k_cache=torch.randn(1, 3 * tpf, 2, 32),
                v_cache=torch.randn(1, 3 * tpf, 2, 32), slot_frame=torch.tensor([0, 1, -1]),
                tokens_per_frame=tpf, q_first_frame=1, chunk_frames=1, scale=0.2,
                key_freqs_t=torch.randn(3, 6, 2), return_lse=True)
    args.update(change)
    return args


# Direct calls of torch.ops.flex.* are memory-safe on any input: sizes, offsets and indices are
# checked without int64 overflow, and every bad argument is a ValueError that names it.
I64_MAX = 2**63 - 1

GRID_OVERFLOW = [
    ((2**32, 2**32), r"grid_h \* grid_w = 4294967296 \* 4294967296 does not fit in int64"),
    ((2**31, 2**32), "does not fit in int64"),
    ((I64_MAX, 2), "does not fit in int64"),
    ((0, 7), "grid_h must be >= 1, got 0"),
    ((7, 0), "grid_w must be >= 1, got 0"),
    ((-1, -1), "grid_h must be >= 1, got -1"),
    ((7, -2**63), "grid_w must be >= 1"),
]


# --------------------------------------------------------------------------------------------
# The Triton kernel tests (flex_kernels.*)


ON_GPU = HAS_TRITON and torch.cuda.is_available() and not fk.INTERPRET

DEVICE = torch.device("cuda" if ON_GPU else "cpu")

needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (Triton runs compiled, not interpreted)")

interpreter_only = pytest.mark.skipif(not (HAS_TRITON and fk.INTERPRET), reason="interpreter launch configuration")

BF16 = pytest.param(torch.bfloat16, marks=[pytest.mark.cuda, needs_gpu], id="bfloat16")

TRITON_DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"), BF16]

HEAD_DIMS = [32, 64, 128]

TPF = GRID[0] * GRID[1]

HEADS = 2


def triton_assert_close(out, ref, dtype, what):
    """max |out - ref| <= tol * max |ref| (the project's error bound), and nothing non-finite."""
    out64, ref64 = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out64.shape == ref64.shape, f"{what}: shape {tuple(out64.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(out64).all(), f"{what}: non-finite values (unwritten or poisoned elements)"
    bound = TOL[dtype] * max(ref64.abs().max().item(), 1e-6)
    err = (out64 - ref64).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3g} > {bound:.3g}"


def randn(*shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, dtype)


def fused_qkv(batch, tokens, head_dim, dtype, seed):
    """q, k, v as token-strided slices of one [B, T, 3, H, D] projection output."""
    qkv = randn(batch, tokens, 3, HEADS, head_dim, dtype=dtype, seed=seed)
    q, k, v = qkv.unbind(2)
    assert q.stride(1) == 3 * HEADS * head_dim
    return q, k, v


def tables(head_dim, start, n_frames):
    rope = Rope3D.for_wan(head_dim, "flex", length=480)
    return rope.tables(start, n_frames, GRID[0], GRID[1], device=DEVICE)


def ring_with_frames(head_dim, dtype, sink, window, written, chunk, seed):
    """A RingKVCache that went through the real write schedule of frames [0, written)."""
    ring = RingKVCache(1, HEADS, head_dim, TPF, sink, window, dtype=dtype, device=DEVICE)
    for i, f in enumerate(range(0, written, chunk)):
        n = min(chunk, written - f)
        ring.write(randn(1, n * TPF, HEADS, head_dim, dtype=dtype, seed=seed + 2 * i),
                   randn(1, n * TPF, HEADS, head_dim, dtype=dtype, seed=seed + 2 * i + 1), f)
    return ring


def triton_check_attention(out, lse, ref_out, ref_lse, dtype):
    assert out.dtype == dtype and out.is_contiguous() and lse.dtype == torch.float32
    triton_assert_close(out, ref_out, dtype, "out")
    no_key = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse).cpu(), no_key.cpu()) and (lse[no_key] < 0).all(), "lse -inf where no key"
    assert (out.cpu()[no_key.permute(0, 2, 1).cpu()] == 0).all(), "queries without keys give 0"
    if (~no_key).any():
        triton_assert_close(lse[~no_key], ref_lse[~no_key], torch.float32 if dtype == torch.float32 else dtype, "lse")


SMALL_GRID = (2, 3)  # 6 tokens per frame: the write kernel runs one program per token

SMALL_TPF = SMALL_GRID[0] * SMALL_GRID[1]


def nan_guarded_table(table, rows=2):
    """A contiguous view of `table` with `rows` NaN rows on each side (the kernels use it as is)."""
    guard = torch.full((table.shape[0] + 2 * rows, *table.shape[1:]), float("nan"), dtype=table.dtype,
                       device=table.device)
    view = guard[rows:rows + table.shape[0]]
    view.copy_(table)
    assert view.is_contiguous()
    return view
