"""Triton kernels (flex_kernels) against the float64 references of flex.reference.

Without a GPU the kernels run on the CPU through Triton's interpreter; TRITON_INTERPRET must
be set before triton is first imported, hence the assignment below (tests/conftest.py does
the same). Sizes are kept small for the interpreter: 7x9 = 63 tokens per frame (a multiple of
no block size), 2 heads. bfloat16 cases need a GPU (the interpreter cannot compute in bf16).
"""
import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import flex_kernels as fk  # noqa: E402
from flex import ops, reference  # noqa: E402
from flex.cache import RingKVCache  # noqa: E402
from flex.rope import Rope3D  # noqa: E402
from flex_kernels import attention as fk_attention  # noqa: E402

ON_GPU = torch.cuda.is_available() and not fk.INTERPRET
DEVICE = torch.device("cuda" if ON_GPU else "cpu")
needs_gpu = pytest.mark.skipif(not ON_GPU, reason="needs a CUDA device (Triton runs compiled, not interpreted)")
interpreter_only = pytest.mark.skipif(not fk.INTERPRET, reason="interpreter launch configuration")

BF16 = pytest.param(torch.bfloat16, marks=[pytest.mark.cuda, needs_gpu], id="bfloat16")
DTYPES = [pytest.param(torch.float32, id="float32"), pytest.param(torch.float16, id="float16"), BF16]
HEAD_DIMS = [32, 64, 128]
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

GRID = (7, 9)
TPF = GRID[0] * GRID[1]
HEADS = 2


def assert_close(out, ref, dtype, what):
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


# --------------------------------------------------------------------------- rope3d


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [20] + HEAD_DIMS)
def test_rope3d(head_dim, dtype):
    frames = 2
    x, _, _ = fused_qkv(1, frames * TPF, head_dim, dtype, seed=head_dim)
    start, offset = 100_000 - 1, 3  # table starting past 10^5, offset into it
    ft, fh, fw = tables(head_dim, start, frames + offset + 2)
    ref = reference.rope3d(x, ft, fh, fw, *GRID, offset)
    assert_close(fk.rope3d(x, ft, fh, fw, *GRID, offset), ref, dtype, "rope3d (int offset)")
    dev_offset = torch.tensor(offset, device=DEVICE, dtype=torch.int32)  # read by the kernel, no sync
    out = fk.rope3d(x, ft, fh, fw, *GRID, dev_offset)
    assert out.is_contiguous() and out.dtype == dtype
    assert_close(out, ref, dtype, "rope3d (device offset)")


# --------------------------------------------------------------------------- norm + rope + cache write

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
    assert_close(q_out, q_ref, dtype, "q")
    written = set(slots.tolist())
    kc, vc = (c.view(batch, ring.n_slots, TPF, HEADS, head_dim) for c in (k_cache, v_cache))
    kr, vr = (c.view(batch, ring.n_slots, TPF, HEADS, head_dim) for c in (k_ref, v_ref))
    for s in range(ring.n_slots):
        if s in written:
            assert_close(kc[:, s], kr[:, s], dtype, f"k_cache slot {s}")
            assert_close(vc[:, s], vr[:, s], dtype, f"v_cache slot {s}")
            assert torch.equal(vc[:, s], vr[:, s]), "v is copied, bit for bit"
        else:
            assert kc[:, s].isnan().all() and vc[:, s].isnan().all(), f"slot {s} is not in frame_slots but was written"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", HEAD_DIMS)
@pytest.mark.parametrize("case", list(WRITE_CASES))
def test_norm_rope_cache_write(case, head_dim, dtype):
    run_write(WRITE_CASES[case], head_dim, dtype, seed=head_dim)


def test_norm_rope_cache_write_batch2_head_dim_20():
    """Two batch elements; a head dim whose planes (4/3/3) are no power of two."""
    run_write(WRITE_CASES["1frame-norms-int-offset"], 20, torch.float32, batch=2, seed=5)


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
    assert_close(reference.rotate_keys_on_load(caches[1], key_freqs, TPF), caches[0], dtype, "rotate-on-load")


# --------------------------------------------------------------------------- ring attention


def ring_with_frames(head_dim, dtype, sink, window, written, chunk, seed):
    """A RingKVCache that went through the real write schedule of frames [0, written)."""
    ring = RingKVCache(1, HEADS, head_dim, TPF, sink, window, dtype=dtype, device=DEVICE)
    for i, f in enumerate(range(0, written, chunk)):
        n = min(chunk, written - f)
        ring.write(randn(1, n * TPF, HEADS, head_dim, dtype=dtype, seed=seed + 2 * i),
                   randn(1, n * TPF, HEADS, head_dim, dtype=dtype, seed=seed + 2 * i + 1), f)
    return ring


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


def check_attention(out, lse, ref_out, ref_lse, dtype):
    assert out.dtype == dtype and out.is_contiguous() and lse.dtype == torch.float32
    assert_close(out, ref_out, dtype, "out")
    no_key = torch.isinf(ref_lse)
    assert torch.equal(torch.isinf(lse).cpu(), no_key.cpu()) and (lse[no_key] < 0).all(), "lse -inf where no key"
    assert (out.cpu()[no_key.permute(0, 2, 1).cpu()] == 0).all(), "queries without keys give 0"
    if (~no_key).any():
        assert_close(lse[~no_key], ref_lse[~no_key], torch.float32 if dtype == torch.float32 else dtype, "lse")


@pytest.mark.parametrize("rotate", [False, True], ids=["plain", "rotate-on-load"])
@pytest.mark.parametrize("dtype", DTYPES)
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
    check_attention(out, lse, ref_out, ref_lse, dtype)


def test_ring_attention_scale_and_no_lse():
    c = ATTN_CASES["sink-window-wrapped"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, _ = attention_inputs(c, 64, torch.float32, False, seed=3)
    out = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"], scale=0.3)
    assert isinstance(out, torch.Tensor)
    ref = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"], scale=0.3)
    assert_close(out, ref, torch.float32, "out (scale 0.3)")


def test_ring_attention_odd_head_dim():
    """A head dim that is no power of two (48: padded to 64 inside, 8 temporal planes)."""
    c = ATTN_CASES["2-chunks-of-3-wrapped"]
    for rotate in (False, True):
        q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 48, torch.float32, rotate, seed=9)
        out, lse = fk.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                     key_freqs_t=key_freqs, return_lse=True)
        ref_out, ref_lse = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                                    key_freqs_t=key_freqs, return_lse=True)
        check_attention(out, lse, ref_out, ref_lse, torch.float32)


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
    check_attention(out, lse, ref_out, ref_lse, torch.float16)


# --------------------------------------------------------------------------- validation


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


# --------------------------------------------------------------------------- memory safety
#
# Device indices (ring slots, frame offsets, slot frames) are never range-checked on the host
# (that would need a sync), so the kernels mask them. The interpreter does not fault on a stray
# access like a GPU would: each test puts what a kernel must not overrun inside a larger guard
# tensor holding sentinels, and checks that no sentinel changed (stores) or reached an output
# (loads: NaN sentinels), for indices past every end.

SENTINEL = 1234.0  # exact in float16
SMALL_GRID = (2, 3)  # 6 tokens per frame: the write kernel runs one program per token
SMALL_TPF = SMALL_GRID[0] * SMALL_GRID[1]


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
    assert_close(q_out, q_ref, dtype, "q of every frame, in range or not")
    assert_guard_intact(k_guard, k_cache, "k_cache")
    assert_guard_intact(v_guard, v_cache, "v_cache")
    written = slice(0, 2 * SMALL_TPF)  # slots 0 and 1
    assert_close(k_cache[:, written], k_ref[:, written], dtype, "k_cache slots 0, 1")
    assert torch.equal(v_cache, v_ref)
    assert (k_cache[:, 2 * SMALL_TPF:] == SENTINEL).all(), "slot 2 is in no frame_slots entry"


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
    assert_close(k_cache[:, SMALL_TPF:], k_ref[:, SMALL_TPF:], dtype, "k_cache slots 1, 2")
    assert torch.equal(v_cache, v_ref) and (k_cache[:, :SMALL_TPF] == SENTINEL).all(), "slot 0 was written"


def nan_guarded_table(table, rows=2):
    """A contiguous view of `table` with `rows` NaN rows on each side (the kernels use it as is)."""
    guard = torch.full((table.shape[0] + 2 * rows, *table.shape[1:]), float("nan"), dtype=table.dtype,
                       device=table.device)
    view = guard[rows:rows + table.shape[0]]
    view.copy_(table)
    assert view.is_contiguous()
    return view


def unrotated_past_table(ft, offset, frames):
    """freqs_t rows offset .. offset + frames - 1, with (cos 1, sin 0) for rows outside ft."""
    rows = [ft[r] if 0 <= r < ft.shape[0] else torch.stack((torch.ones_like(ft[0, :, 0]), torch.zeros_like(ft[0, :, 0])), -1)
            for r in range(offset, offset + frames)]
    return torch.stack(rows)


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
    assert_close(out, reference.rope3d(x, expected_t, fh, fw, *SMALL_GRID, 0), dtype, "rope3d")
    k_cache = torch.zeros(1, frames * SMALL_TPF, HEADS, head_dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.arange(frames, device=DEVICE)
    q_out = fk.norm_rope_cache_write(x, k, v, None, None, 1e-6, ft_guarded, fh, fw, *SMALL_GRID, off,
                                     k_cache, v_cache, slots)
    k_ref, v_ref = torch.zeros_like(k_cache), torch.zeros_like(v_cache)
    q_ref = reference.norm_rope_cache_write(x, k, v, None, None, 1e-6, expected_t, fh, fw, *SMALL_GRID, 0,
                                            k_ref, v_ref, slots)
    assert_close(q_out, q_ref, dtype, "q")
    assert_close(k_cache, k_ref, dtype, "k_cache")


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
    check_attention(out, lse, ref_out, ref_lse, torch.float32)


I64_MAX = 2**63 - 1
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
    check_attention(out, lse, ref_out, ref_lse, dtype)


def test_strided_slot_frame():
    """slot_frame may be a strided view: the gaps (frame 0, visible) are never read."""
    c = ATTN_CASES["partly-filled-3-chunks-of-1"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, _ = attention_inputs(c, 32, torch.float32, False, seed=13)
    backing = torch.zeros(2 * slot_frame.numel(), dtype=torch.int64, device=DEVICE)
    backing[::2] = slot_frame
    out = fk.ring_attention(q, k_cache, v_cache, backing[::2], TPF, c["q_first"], c["chunk_frames"])
    ref = reference.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"])
    assert_close(out, ref, torch.float32, "out")


def test_ring_attention_without_slots():
    """A cache of zero slots: every query gets 0 and lse -inf, nothing is read."""
    q = randn(1, TPF, HEADS, 32, dtype=torch.float32, seed=14)
    empty = torch.zeros(1, 0, HEADS, 32, device=DEVICE)
    out, lse = fk.ring_attention(q, empty, empty, torch.zeros(0, dtype=torch.int64, device=DEVICE), TPF, 0, 1,
                                 return_lse=True)
    assert (out == 0).all() and torch.isneginf(lse).all()


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
        assert_close(out, ref, dtype, f"ring attention, token stride 2**26, rotate={kf is not None}")

    # Head-strided q, k, v and caches (three heads): RoPE + cache write, then ring attention.
    grid = (1, tpf)
    sizes, strides = (1, tpf, heads, d), (0, 5 * d, head_stride, 1)
    q, k, v, k_cache, v_cache = views(sizes, strides, 5)
    ft, fh, fw = Rope3D.for_wan(d, "flex", length=480).tables(0, 1, *grid, device=DEVICE)
    slots = torch.tensor([0], device=DEVICE)
    k_ref, v_ref = torch.zeros(sizes, dtype=dtype, device=DEVICE), torch.zeros(sizes, dtype=dtype, device=DEVICE)
    q_ref = reference.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *grid, 0, k_ref, v_ref, slots)
    q_out = fk.norm_rope_cache_write(q, k, v, None, None, 1e-6, ft, fh, fw, *grid, 0, k_cache, v_cache, slots)
    assert_close(q_out, q_ref, dtype, "q, head stride 2**30")
    assert_close(k_cache, k_ref, dtype, "k_cache, head stride 2**30")
    assert torch.equal(v_cache, v_ref)
    assert_close(fk.rope3d(q, ft, fh, fw, *grid, 0), reference.rope3d(q, ft, fh, fw, *grid, 0), dtype, "rope3d")
    out = fk.ring_attention(q, k_cache, v_cache, slots, tpf, 0, 1)
    ref = reference.ring_attention(q.contiguous(), k_ref, v_ref, slots, tpf, 0, 1)
    assert_close(out, ref, dtype, "ring attention, head stride 2**30")


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


# --------------------------------------------------------------------------- through flex.ops


def test_backend_module():
    from flex.backends import triton as backend

    assert backend.available()[0]
    assert DEVICE.type in backend.DEVICES
    assert "triton" in ops.available_backends("ring_attention", DEVICE.type)
    assert backend.supports(ops.Call("ring_attention", dtype=torch.float16, head_dim=128))
    assert not backend.supports(ops.Call("ring_attention", dtype=torch.float64))


def test_ops_norm_rope_cache_write_triton_backend():
    run_write(WRITE_CASES["3frames-nonorm-unrotated-k-dev-offset"], 64, torch.float16, backend="triton", seed=21)


def test_ops_rope3d_triton_backend():
    x, _, _ = fused_qkv(1, 2 * TPF, 64, torch.float32, seed=22)
    ft, fh, fw = tables(64, 100_000, 4)
    out = ops.rope3d(x, ft, fh, fw, *GRID, 1, backend="triton")
    assert_close(out, ops.rope3d(x, ft, fh, fw, *GRID, 1, backend="reference"), torch.float32, "ops.rope3d")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ops_ring_attention_triton_backend(dtype):
    c = ATTN_CASES["sink-window-wrapped"]
    q, k_cache, v_cache, k_ref, v_ref, slot_frame, key_freqs = attention_inputs(c, 64, dtype, True, seed=23)
    out, lse = ops.ring_attention(q, k_cache, v_cache, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                  key_freqs_t=key_freqs, return_lse=True, backend="triton")
    ref_out, ref_lse = ops.ring_attention(q, k_ref, v_ref, slot_frame, TPF, c["q_first"], c["chunk_frames"],
                                          key_freqs_t=key_freqs, return_lse=True, backend="reference")
    check_attention(out, lse, ref_out, ref_lse, dtype)


# --------------------------------------------------------------------------- torch.library / torch.compile


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


# --------------------------------------------------------------------------- GPU only


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
        assert_close(out, ref, dtype, f"graph replay at frame {f}")


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
    assert_close(q_out, q_ref, dtype, "q")
    assert_close(ring.k, k_ref, dtype, "k_cache")
    assert torch.equal(ring.v, v_ref)
    for f in list(range(3)) + list(range(first + frames - 9, first + frames)):  # sink + full window
        ring.mark_written(f, 1, ring.slots(f, 1))
    key_freqs = rope.temporal_table(torch.arange(ring.n_slots, device="cuda"))
    for kf in (None, key_freqs):
        out, lse = fk.ring_attention(q_out, ring.k, ring.v, ring.slot_frame, tpf, first, 3, key_freqs_t=kf, return_lse=True)
        ref_out, ref_lse = reference.ring_attention(q_out, ring.k, ring.v, ring.slot_frame, tpf, first, 3,
                                                    key_freqs_t=kf, return_lse=True)
        check_attention(out, lse, ref_out, ref_lse, dtype)
