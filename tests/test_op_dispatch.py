"""What is common to every op: backend names and the auto choice, backend availability and build
flags, argument devices, bad input through flex.ops and the kernels, memory safety of large
offsets, torch.library / torch.compile registration, and GPU-only paths through several ops.
"""
import os
import subprocess
import sys

import pytest
import torch

from flex import _extension, ops, reference
from flex.cache import RingKVCache
from flex.rope import Rope3D

from op_inputs import (
    CUDA, DEVICE, GRID, HEADS, I64_MAX, ON_GPU, SMALL_GRID, SMALL_TPF, TPF, _attn_args, _nrc_args,
    _rope_args, fk, fused_qkv, needs_extension, needs_gpu, needs_triton, randn, ring_with_frames,
    rope_inputs, tables, triton_assert_close, triton_check_attention,
)


# --------------------------------------------------------------------------------------------
# Backend choice


def test_auto_prefers_compiled_kernels_on_cpu():
    if "cpp" in ops.available_backends():
        assert ops.resolve_backend("rope3d", "auto", torch.device("cpu")).__name__.endswith(".cpp")
        # Unmasked ring attention goes to SDPA; anything with a mask to the C++ kernel.
        unmasked = dict(chunk_frames=0, key_freqs_t=None, resident_tokens=12, return_lse=False)
        assert ops.resolve_backend("ring_attention", "auto", torch.device("cpu"), **unmasked).__name__.endswith(".sdpa")
        for masked in (dict(unmasked, chunk_frames=3), dict(unmasked, key_freqs_t=True), dict(unmasked, return_lse=True)):
            assert ops.resolve_backend("ring_attention", "auto", torch.device("cpu"), **masked).__name__.endswith(".cpp")


# --------------------------------------------------------------------------------------------
# Backend names


def test_unknown_backend_is_named():
    x, ft, fh, fw, gh, gw = rope_inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.rope3d(x, ft, fh, fw, gh, gw, backend="cudnn")


# --------------------------------------------------------------------------------------------
# The C++ operators torch.ops.flex.*: build flags, argument devices, bad input


@needs_extension
def test_build_flags():
    assert isinstance(_extension.has_cuda_kernels(), bool)
    if torch.cuda.is_available() and torch.version.cuda is not None:
        assert _extension.has_cuda_kernels(), "CUDA torch with a GPU but flex._C lacks CUDA kernels"


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


@needs_extension
@pytest.mark.parametrize("op,ref,name", list(_device_cases()))
def test_argument_on_meta_device(op, ref, name):
    """One argument on the meta device routes the call to the fake kernel: it must refuse it
    (it used to return an uninitialised result and leave the cache unwritten)."""
    args = ARGS[op]()
    args[name] = args[name].to("meta")
    with pytest.raises(ValueError, match=rf"{op}: {name} is on meta but {ref} is on cpu"):
        getattr(torch.ops.flex, op)(**args)


@needs_extension
@pytest.mark.parametrize("op", sorted(TENSOR_ARGS))
def test_all_arguments_on_meta_device(op):
    """All tensors on meta (shape inference) is consistent and still works."""
    args = {n: a.to("meta") if isinstance(a, torch.Tensor) else a for n, a in ARGS[op]().items()}
    out = getattr(torch.ops.flex, op)(**args)
    out = out[0] if isinstance(out, tuple) else out
    assert out.device.type == "meta" and out.shape == args[TENSOR_ARGS[op][0]].shape


@needs_extension
@CUDA
@pytest.mark.parametrize("op,ref,name", [c for c in _device_cases() if c[0] != "ring_attention"])
def test_argument_on_other_device_cuda(op, ref, name):
    """The C++ checks: one CPU argument of a CUDA call is refused by name."""
    args = {n: (a.cuda() if isinstance(a, torch.Tensor) and n != name else a) for n, a in ARGS[op]().items()}
    with pytest.raises(ValueError, match=rf"{op}: {name} is on cpu but {ref} is on cuda"):
        getattr(torch.ops.flex, op)(**args)


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


@needs_extension
@pytest.mark.parametrize("case", sorted(BAD_PUBLIC_CALLS))
def test_public_ops_and_cpp_agree_on_bad_input(case):
    """The same bad call is a ValueError through flex.ops (backend="cpp") and through torch.ops.flex."""
    from flex import ops
    op, change = BAD_PUBLIC_CALLS[case]
    with pytest.raises(ValueError):
        getattr(torch.ops.flex, op)(**ARGS[op](**change))
    with pytest.raises(ValueError):
        getattr(ops, op)(**ARGS[op](**change), backend="cpp")


# --------------------------------------------------------------------------------------------
# The Triton kernels flex_kernels.*: input checks, large offsets, compile, GPU-only paths


@needs_triton
def test_invalid_inputs_raise_value_error():
    x = torch.zeros(1, TPF, HEADS, 32, device=DEVICE)
    ft, fh, fw = tables(32, 0, 2)
    slot_frame = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        fk.rope3d(x.double(), ft, fh, fw, *GRID, 0)
    with pytest.raises(ValueError, match="frame_offset"):
        fk.rope3d(x, ft, fh, fw, *GRID, torch.tensor([1.0], device=DEVICE))
    with pytest.raises(ValueError, match="frame_offset"):
        fk.rope3d(x, ft, fh, fw, *GRID, torch.tensor([1, 2], device=DEVICE))
    with pytest.raises(ValueError, match="head dim"):
        big = torch.zeros(1, TPF, 1, 512, device=DEVICE)
        fk.ring_attention(big, big, big, slot_frame, TPF)
    with pytest.raises(ValueError, match="slot_frame"):
        fk.ring_attention(x, x, x, slot_frame.int(), TPF)
    with pytest.raises(ValueError, match="q_first_frame"):
        fk.ring_attention(x, x, x, slot_frame, TPF, q_first_frame=-1)
    with pytest.raises(ValueError, match="frame_slots"):
        kc = torch.zeros(1, 2 * TPF, HEADS, 32, device=DEVICE)
        fk.norm_rope_cache_write(x, x, x, None, None, 1e-6, ft, fh, fw, *GRID, 0, kc, kc.clone(),
                                 torch.tensor([0, 1], device=DEVICE))


@needs_triton
def test_element_offsets_past_int32():
    """Views whose element offsets pass 2**31 (a token stride, then a head stride, of ~2**26
    and ~2**30 elements) into one large buffer: offsets are computed in int64. The buffer is
    never filled, so only the pages of the few touched elements are backed by memory."""
    d, tpf, dtype = 16, 17, torch.float16
    token_stride, tokens = 2**26, 2 * tpf  # (tokens - 1) * token_stride > 2**31
    head_stride, heads = 2**30 + 3 * d, 3  # (heads - 1) * head_stride > 2**31
    big = torch.empty(max((tokens - 1) * token_stride, (heads - 1) * head_stride + 5 * d * tpf) + 8 * d,
                      dtype=dtype, device=DEVICE)

    def views(sizes, strides, n):
        out = [big.as_strided(sizes, strides, storage_offset=i * d) for i in range(n)]
        for i, x in enumerate(out):
            x.copy_(randn(*sizes, dtype=dtype, seed=100 + i))
        return out

    # Token-strided q, k, v (one head): ring attention, plain and with rotate-on-load.
    q, k, v = views((1, tokens, 1, d), (0, token_stride, d, 1), 3)
    slot_frame = torch.tensor([0, 1], device=DEVICE)
    key_freqs = Rope3D.for_wan(d, "flex", length=480).temporal_table(torch.tensor([5, 9], device=DEVICE))
    for kf in (None, key_freqs):
        out = fk.ring_attention(q, k, v, slot_frame, tpf, 0, 1, key_freqs_t=kf)
        ref = reference.ring_attention(q.contiguous(), k.contiguous(), v.contiguous(), slot_frame, tpf, 0, 1,
                                       key_freqs_t=kf)
        triton_assert_close(out, ref, dtype, f"ring attention, token stride 2**26, rotate={kf is not None}")

    # Head-strided q, k, v and caches (three heads): RoPE + cache write, then ring attention.
    grid = (1, tpf)
    sizes, strides = (1, tpf, heads, d), (0, 5 * d, head_stride, 1)
    q, k, v, k_cache, v_cache = views(sizes, strides, 5)
    ft, fh, fw = Rope3D.for_wan(d, "flex", length=480).tables(0, 1, *grid, device=DEVICE)
    slots = torch.tensor([0], device=DEVICE)
    k_ref, v_ref = torch.zeros(sizes, dtype=dtype, device=DEVICE), torch.zeros(sizes, dtype=dtype, device=DEVICE)
    q_ref = reference.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *grid, 0, k_ref, v_ref, slots)
    q_out = fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *grid, 0, k_cache, v_cache, slots)
    triton_assert_close(q_out, q_ref, dtype, "q, head stride 2**30")
    triton_assert_close(k_cache, k_ref, dtype, "k_cache, head stride 2**30")
    assert torch.equal(v_cache, v_ref)
    triton_assert_close(fk.rope3d(q, ft, fh, fw, *grid, 0), reference.rope3d(q, ft, fh, fw, *grid, 0), dtype, "rope3d")
    out = fk.ring_attention(q, k_cache, v_cache, slots, tpf, 0, 1)
    ref = reference.ring_attention(q.contiguous(), k_ref, v_ref, slots, tpf, 0, 1)
    triton_assert_close(out, ref, dtype, "ring attention, head stride 2**30")


@needs_triton
def test_kernel_preconditions_raise_value_error():
    """What the kernels need themselves (direct callers skip flex.ops)."""
    x = torch.zeros(1, SMALL_TPF, HEADS, 32, device=DEVICE)
    ft, fh, fw = Rope3D.for_wan(32, "flex", length=480).tables(0, 1, *SMALL_GRID, device=DEVICE)
    kc = torch.zeros(1, 2 * SMALL_TPF, HEADS, 32, device=DEVICE)
    slots = torch.tensor([0], device=DEVICE)
    write = (x, x, x, None, None, 1e-6, ft, fh, fw, *SMALL_GRID, 0)
    with pytest.raises(ValueError, match="v_cache"):
        fk.norm_rope_cache_write(*write, kc, kc[:, :SMALL_TPF], slots)
    with pytest.raises(ValueError, match="frame_offset"):
        fk.rope3d(x, ft, fh, fw, *SMALL_GRID, 2**63)
    with pytest.raises(ValueError, match="eps"):
        fk.norm_rope_cache_write(x, x, x, None, None, 0.0, ft, fh, fw, *SMALL_GRID, 0, kc, kc.clone(), slots)
    with pytest.raises(ValueError, match="freqs_t"):
        fk.rope3d(x, ft.to(torch.int32), fh, fw, *SMALL_GRID, 0)
    slot_frame = torch.zeros(1, dtype=torch.int64, device=DEVICE)
    with pytest.raises(ValueError, match="q_first_frame"):
        fk.ring_attention(x, x, x, slot_frame, SMALL_TPF, q_first_frame=2**63)
    with pytest.raises(ValueError, match="chunk_frames"):
        fk.ring_attention(x, x, x, slot_frame, SMALL_TPF, chunk_frames=2**63)
    with pytest.raises(ValueError, match="slot_frame"):
        fk.ring_attention(x, x, x, slot_frame, 4)  # 6 keys are no whole number of 4-token frames


@needs_triton
def test_backend_module():
    from flex.backends import triton as backend

    assert backend.available()[0]
    assert DEVICE.type in backend.DEVICES
    assert "triton" in ops.available_backends("ring_attention", DEVICE.type)
    assert backend.supports(ops.Call("ring_attention", dtype=torch.float16, head_dim=128))
    assert not backend.supports(ops.Call("ring_attention", dtype=torch.float64))


def _small_step_inputs(dtype=torch.float16):
    head_dim, frames = 32, 1
    q, k, v = fused_qkv(1, frames * TPF, head_dim, dtype, seed=31)
    ft, fh, fw = tables(head_dim, 0, 8)
    ring = ring_with_frames(head_dim, dtype, 1, 4, 3, 1, seed=32)
    return q, k, v, (ft, fh, fw), ring


def _step(q, k, v, freqs, k_cache, v_cache, slots, slot_frame, first):
    """One attention layer's cache path: norm + RoPE + write, then ring attention."""
    q = fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, *freqs, *GRID, first, k_cache, v_cache, slots)
    return fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, first, 1, return_lse=True)


@needs_triton
def test_opcheck():
    """Schema, fake-tensor and AOT-dispatch checks of the registered flex_triton ops."""
    q, k, v, freqs, ring = _small_step_inputs(torch.float32)
    slots = ring.slots(3, 1)
    opcheck = torch.library.opcheck
    opcheck(torch.ops.flex_triton.rope3d.default, (q, *freqs, *GRID, 1, None))
    opcheck(torch.ops.flex_triton.rope3d.default, (q, *freqs, *GRID, 0, torch.tensor([2], device=DEVICE)))
    opcheck(torch.ops.flex_triton.norm_rope_cache_write.default,
            (q, k, v, None, None, 1e-6, *freqs, *GRID, 3, None, ring.k, ring.v, slots, True))
    opcheck(torch.ops.flex_triton.ring_attention.default,
            (q, ring.k, ring.v, ring.slot_frame, TPF, 3, None, 1, 0.2, None, True))


@needs_triton
def test_torch_compile_fullgraph():
    """torch.compile(fullgraph=True) of a step calling both ops (interpreter: opaque custom ops
    under aot_eager; GPU: triton_op traced by inductor), against eager, device frame index."""
    q, k, v, freqs, ring = _small_step_inputs()
    first = torch.tensor(3, device=DEVICE)
    slots = ring.slots(first, 1)
    ring.mark_written(first, 1, slots)
    caches = [(ring.k.clone(), ring.v.clone()) for _ in range(2)]
    eager = _step(q, k, v, freqs, *caches[0], slots, ring.slot_frame, first)
    compiled = torch.compile(_step, fullgraph=True, backend="inductor" if ON_GPU else "aot_eager")
    got = compiled(q, k, v, freqs, *caches[1], slots, ring.slot_frame, first)
    # Inductor may autotune other tiles than eager: compare within the fp16 bound.
    for a, b in zip(got, eager):
        assert torch.equal(a, b) if not ON_GPU else torch.allclose(a.float(), b.float(), atol=2e-3, rtol=0)
    assert torch.equal(caches[0][0], caches[1][0]) and torch.equal(caches[0][1], caches[1][1]), "cache writes"


@needs_triton
def test_kernels_compile_for_gpu_target():
    """The GPU build of every kernel family (Triton front end + ptxas to an sm_90 cubin, no
    launch): what the interpreter cannot check (static types, constexpr branches, tl.dot
    shapes, shared memory of the autotune configs). Runs in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(fk.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    run = subprocess.run([sys.executable, "-m", "flex_kernels._compile_check", "--quick", "--arch", "90"],
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


@needs_triton
@needs_gpu
@pytest.mark.cuda
def test_cuda_graph_replay_with_device_frame_indices():
    """The cache path captures into a CUDA graph; frame indices are read on the device."""
    dtype, head_dim = torch.bfloat16, 64
    q, k, v = fused_qkv(1, 3 * TPF, head_dim, dtype, seed=41)
    ft, fh, fw = tables(head_dim, 0, 64)
    ring = RingKVCache(1, HEADS, head_dim, TPF, 1, 6, dtype=dtype, device=DEVICE)
    first = torch.zeros((), dtype=torch.int64, device=DEVICE)
    slots = torch.zeros(3, dtype=torch.int64, device=DEVICE)

    def step():
        qr = fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *GRID, first, ring.k, ring.v, slots)
        return fk.ring_attention(qr, ring.k, ring.v, ring.slot_frame, TPF, first, 3)

    def set_chunk(f):
        first.fill_(f)
        slots.copy_(ring.slots(first, 3))
        ring.mark_written(first, 3, slots)

    set_chunk(0)
    torch.cuda.synchronize()
    step()  # autotune outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    for f in (3, 6, 9):
        set_chunk(f)
        graph.replay()
        k_ref, v_ref = ring.k.clone(), ring.v.clone()
        q_ref = reference.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *GRID, f, k_ref, v_ref, slots)
        ref = reference.ring_attention(q_ref, k_ref, v_ref, ring.slot_frame, TPF, f, 3)
        torch.cuda.synchronize()
        triton_assert_close(out, ref, dtype, f"graph replay at frame {f}")


@needs_triton
@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_wan_like_shapes_gpu(dtype):
    """12 heads x 128, 15x26 tokens per frame, 3-frame chunk over a full sink 3 + window 9 ring:
    the autotuned (large) tiles, head masks (12 -> 16) and both attention paths."""
    grid, heads, head_dim, frames = (15, 26), 12, 128, 3
    tpf = grid[0] * grid[1]
    g = torch.Generator(device="cuda").manual_seed(0)
    qkv = torch.randn(1, frames * tpf, 3, heads, head_dim, device="cuda", generator=g).to(dtype)
    q, k, v = qkv.unbind(2)
    wq, wk = (torch.rand(heads * head_dim, device="cuda", generator=g).to(dtype) + 0.5 for _ in range(2))
    rope = Rope3D.for_wan(head_dim, "flex", length=480)
    ring = RingKVCache(1, heads, head_dim, tpf, 3, 9, dtype=dtype, device="cuda")
    ring.k.normal_(generator=g)
    ring.v.normal_(generator=g)
    first = 60
    ft, fh, fw = rope.tables(first, frames, *grid, device="cuda")
    slots = ring.slots(first, frames)
    k_ref, v_ref = ring.k.clone(), ring.v.clone()
    q_out = fk.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, ft, fh, fw, *grid, 0, ring.k, ring.v, slots, False)
    q_ref = reference.norm_rope_cache_write(q, k, v, wq, wk, 1e-6, ft, fh, fw, *grid, 0, k_ref, v_ref, slots, False)
    triton_assert_close(q_out, q_ref, dtype, "q")
    triton_assert_close(ring.k, k_ref, dtype, "k_cache")
    assert torch.equal(ring.v, v_ref)
    for f in list(range(3)) + list(range(first + frames - 9, first + frames)):  # sink + full window
        ring.mark_written(f, 1, ring.slots(f, 1))
    key_freqs = rope.temporal_table(torch.arange(ring.n_slots, device="cuda"))
    for kf in (None, key_freqs):
        out, lse = fk.ring_attention(q_out, ring.k, ring.v, ring.slot_frame, tpf, first, 3, key_freqs_t=kf, return_lse=True)
        ref_out, ref_lse = reference.ring_attention(q_out, ring.k, ring.v, ring.slot_frame, tpf, first, 3,
                                                    key_freqs_t=kf, return_lse=True)
        triton_check_attention(out, lse, ref_out, ref_lse, dtype)
