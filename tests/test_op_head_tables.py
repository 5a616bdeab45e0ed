"""Per-head temporal RoPE tables (LoL's multi-head jitter) on every kernel backend.

A temporal table may hold one (cos, sin) row per (frame, head): freqs_t [N, H, C_t, 2] for
rope3d and norm_rope_cache_write, key_freqs_t [n_slots, H, C_t, 2] for rotate-on-load
ring_attention. Each backend (C++, Triton under the interpreter, CUDA where a GPU is present)
is compared with the float64 reference on random per-head tables, odd sizes (a 3 x 5 grid,
3 heads) and strided inputs; and, independently of the reference, head h of a per-head call
must equal a call on head h alone with a shared table made of its rows.
"""
import pytest
import torch

from flex import ops
from op_inputs import CUDA, TOL, assert_close, qkv_inputs, random_x, wan_planes

GH, GW, H, D = 3, 5, 3, 32
TPF = GH * GW
CT, CH, CW = wan_planes(D)


def kernel_backends(device: str) -> list[str]:
    """The backends with RoPE kernels and masked attention on ``device`` (not reference, sdpa, flash)."""
    return [b for b in ("cpp", "cuda", "triton") if b in ops.available_backends("ring_attention", device)
            or b in ops.available_backends("rope3d", device)]


CASES = [pytest.param("cpu", b, id=f"cpu-{b}") for b in kernel_backends("cpu")] + \
    [pytest.param("cuda", b, id=f"cuda-{b}", marks=CUDA) for b in ("cuda", "triton")]


def table(rows: int, heads: int | None, planes: int, seed: int, device) -> torch.Tensor:
    """Random unit (cos, sin) pairs [rows, heads, planes, 2] (or [rows, planes, 2]), float32."""
    shape = (rows, planes) if heads is None else (rows, heads, planes)
    angle = torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 6.283
    return torch.stack((angle.cos(), angle.sin()), -1).float().to(device)


def spatial(device):
    return table(GH + 1, None, CH, 11, device), table(GW, None, CW, 12, device)


def supported(backend: str, op: str, device: str, **call) -> bool:
    try:
        ops.resolve_backend(op, backend, device, **call)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "qkv_slice"])
def test_rope3d_per_head_table_matches_reference(device, backend, dtype, layout):
    if not supported(backend, "rope3d", device, dtype=dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    x = random_x((2, 2 * TPF, H, D), dtype, device, layout)
    ft, (fh, fw) = table(7, H, CT, 10, device), spatial(device)
    out = ops.rope3d(x, ft, fh, fw, GH, GW, frame_offset=4, backend=backend)
    ref = ops.rope3d(x, ft, fh, fw, GH, GW, frame_offset=4, backend="reference")
    assert_close(out, ref.to(dtype), dtype, f"{backend} rope3d")
    for h in range(H):  # head h alone, its rows as a shared table: the same values
        alone = ops.rope3d(x[:, :, h:h + 1], ft[:, h], fh, fw, GH, GW, frame_offset=4, backend=backend)
        assert torch.allclose(out[:, :, h:h + 1].float(), alone.float(), atol=TOL[dtype], rtol=0), h


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("rotate_k_temporal", [True, False])
@pytest.mark.parametrize("strided", [False, True])
def test_norm_rope_cache_write_per_head_table_matches_reference(device, backend, rotate_k_temporal, strided):
    dtype = torch.float32
    if not supported(backend, "norm_rope_cache_write", device, dtype=dtype):
        pytest.skip(f"{backend} has no norm_rope_cache_write on {device}")
    q, k, v = qkv_inputs(1, 2 * TPF, H, D, dtype, device, strided, seed=3)
    wq, wk = (torch.rand(H * D, generator=torch.Generator().manual_seed(s)).to(device) + 0.5 for s in (4, 5))
    ft, (fh, fw) = table(9, H, CT, 6, device), spatial(device)
    slots = torch.tensor([3, 0], device=device)
    results = {}
    for name in (backend, "reference"):
        kc = torch.full((1, 4 * TPF, H, D), float("nan"), dtype=dtype, device=device)
        vc = kc.clone()
        q_out = ops.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, ft, fh, fw, GH, GW, 7, kc, vc, slots,
                                          rotate_k_temporal=rotate_k_temporal, backend=name)
        results[name] = (q_out, kc, vc)
    for what, out, ref in zip(("q_out", "k_cache", "v_cache"), results[backend], results["reference"]):
        written = ref if what == "q_out" else torch.cat((ref[:, :TPF], ref[:, 3 * TPF:]), 1)
        got = out if what == "q_out" else torch.cat((out[:, :TPF], out[:, 3 * TPF:]), 1)
        assert_close(got, written.to(dtype), dtype, f"{backend} {what}")
        if what != "q_out":  # slots 1 and 2 were not written
            assert torch.isnan(out[:, TPF:3 * TPF]).all(), what


@pytest.mark.parametrize("device, backend", CASES)
@pytest.mark.parametrize("chunk_frames", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_rotate_on_load_per_head_key_table_matches_reference(device, backend, chunk_frames, dtype):
    call = dict(key_freqs_t=True, chunk_frames=chunk_frames, dtype=dtype, head_dim=D)
    if not supported(backend, "ring_attention", device, **call):
        pytest.skip(f"{backend} has no masked {dtype} ring_attention on {device}")
    g = torch.Generator().manual_seed(8)
    q = torch.randn(1, 2 * TPF, H, D, generator=g).to(device=device, dtype=dtype)
    kc, vc = (torch.randn(1, 5 * TPF, H, D, generator=g).to(device=device, dtype=dtype) for _ in range(2))
    slot_frame = torch.tensor([0, 6, -1, 5, 1], device=device)
    key_ft = table(5, H, CT, 9, device)
    args = (q, kc, vc, slot_frame, TPF, 5, chunk_frames, 0.3, key_ft, True)
    out, lse = ops.ring_attention(*args, backend=backend)
    ref, ref_lse = ops.ring_attention(*args, backend="reference")
    assert_close(out, ref.to(dtype), dtype, f"{backend} ring_attention")
    assert torch.allclose(lse, ref_lse.float(), atol=1e-4, rtol=1e-4)
    for h in range(H):  # head h alone with a shared key table of its rows
        alone = ops.ring_attention(q[:, :, h:h + 1], kc[:, :, h:h + 1], vc[:, :, h:h + 1], slot_frame, TPF, 5,
                                   chunk_frames, 0.3, key_ft[:, h], backend=backend)
        assert torch.allclose(out[:, :, h:h + 1].float(), alone.float(), atol=TOL[dtype], rtol=0), h


@pytest.mark.parametrize("device, backend", CASES)
def test_per_head_tables_with_equal_heads_equal_the_shared_table(device, backend):
    """A per-head table whose heads are all the same rows is the shared table: bit for bit."""
    x = random_x((1, 2 * TPF, H, D), torch.float32, device, seed=2)
    ft, (fh, fw) = table(2, None, CT, 1, device), spatial(device)
    per_head = ft[:, None].expand(-1, H, -1, -1)
    assert torch.equal(ops.rope3d(x, per_head, fh, fw, GH, GW, backend=backend),
                       ops.rope3d(x, ft, fh, fw, GH, GW, backend=backend))
    if supported(backend, "ring_attention", device, key_freqs_t=True, dtype=torch.float32, head_dim=D):
        kc = torch.randn(1, 2 * TPF, H, D).to(device)
        frames = torch.tensor([0, 1], device=device)
        a = ops.ring_attention(x, kc, kc, frames, TPF, 0, 0, None, ft, backend=backend)
        b = ops.ring_attention(x, kc, kc, frames, TPF, 0, 0, None, per_head, backend=backend)
        assert torch.equal(a, b)


@pytest.mark.parametrize("device, backend", CASES)
def test_per_head_table_for_the_wrong_head_count_names_the_table(device, backend):
    x = random_x((1, TPF, H, D), torch.float32, device)
    (fh, fw) = spatial(device)
    with pytest.raises(ValueError, match="freqs_t"):
        ops.rope3d(x, table(1, H + 1, CT, 0, device), fh, fw, GH, GW, backend=backend)
    kc = torch.randn(1, 2 * TPF, H, D).to(device)
    with pytest.raises(ValueError, match="key_freqs_t"):
        ops.ring_attention(x, kc, kc, torch.tensor([0, 1], device=device), TPF, 0, 0, None,
                           table(2, H - 1, CT, 0, device), backend=backend)


def test_table_errors_say_which_shapes_are_allowed():
    x = random_x((1, TPF, H, D), torch.float32, "cpu")
    fh, fw = spatial("cpu")
    five_d = table(1, H, CT, 0, "cpu")[:, :, None]
    with pytest.raises(ValueError, match=rf"freqs_t must be \[N, C, 2\] \(cos, sin\) or one table per head \[N, H={H}"):
        ops.rope3d(x, five_d, fh, fw, GH, GW, backend="reference")
    kc = torch.randn(1, 2 * TPF, H, D)
    with pytest.raises(ValueError, match=rf"key_freqs_t must be .* \[n_slots, H={H}, C_t, 2\], got shape \(2, 1"):
        ops.ring_attention(x, kc, kc, torch.tensor([0, 1]), TPF, 0, 0, None, table(2, 1, CT, 0, "cpu"),
                           backend="reference")


@pytest.mark.parametrize("device, backend", CASES)
def test_per_head_tables_of_zero_heads_give_empty_outputs(device, backend):
    x = torch.randn(1, TPF, 0, D, device=device)
    fh, fw = spatial(device)
    out = ops.rope3d(x, table(1, H, CT, 0, device)[:, :0], fh, fw, GH, GW, backend=backend)
    assert out.shape == x.shape


@pytest.mark.skipif("cpp" not in kernel_backends("cpu"), reason="flex._C is not built")
def test_cpp_ops_check_per_head_tables_themselves():
    """torch.ops.flex.* called directly (no flex.ops checks) refuse a per-head table of the wrong
    head count with a ValueError naming it, rather than reading past the table."""
    x = torch.randn(1, TPF, H, D)
    fh, fw = spatial("cpu")
    with pytest.raises(ValueError, match="freqs_t"):
        torch.ops.flex.rope3d(x, table(1, H + 1, CT, 0, "cpu"), fh, fw, GH, GW, 0)
    kc = torch.randn(1, 2 * TPF, H, D)
    with pytest.raises(ValueError, match="key_freqs_t"):
        torch.ops.flex.ring_attention(x, kc, kc, torch.tensor([0, 1]), TPF, 0, 0, 0.1,
                                      table(2, H + 2, CT, 0, "cpu"), False)
