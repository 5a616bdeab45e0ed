"""Property-based tests: random shapes, strides, offsets (up to 2**63) and slot indices thrown
at every op, through flex.ops on every available backend and at the direct entry points
(torch.ops.flex.*, flex_kernels.*).

The oracle is flex.ops itself on the float64 reference backend: when it rejects a call (a
ValueError naming an argument), every backend must reject it the same way, and a direct entry
point must either raise an error naming an argument or return without touching memory outside
its tensors; when it accepts, every path must give the reference answer. Outputs and caches
live inside guard regions filled with NaN, which must be untouched afterwards.
"""
from __future__ import annotations

import inspect
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flex import _extension, ops
from flex.rope import Rope3D, axis_planes

GUARD = 37  # elements of NaN before and after every written tensor
ERRORS = (ValueError, RuntimeError, IndexError, TypeError, OverflowError)
TOL = {torch.float32: 2e-4, torch.float16: 3e-2, torch.float64: 1e-9}
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

EXTREME = [-2**63, -2**31, -1, 2**31 - 1, 2**31, 2**32, 2**62, 2**63 - 1]
small_or_extreme = st.one_of(st.integers(0, 4), st.sampled_from(EXTREME))


def direct_modules(op):
    """(name, callable) of the direct entry points of ``op`` that run on this machine's CPU."""
    out = []
    if _extension.AVAILABLE and op in ("rope3d", "norm_rope_cache_write", "ring_attention"):
        out.append(("torch.ops.flex", getattr(torch.ops.flex, op)))
    if "triton" in ops.available_backends(op, "cpu"):
        import flex_kernels
        out.append(("flex_kernels", getattr(flex_kernels, op)))
    return out


def backends(op):
    return ops.available_backends(op, "cpu")


def guarded(shape, dtype):
    """A contiguous tensor of ``shape`` inside a NaN-filled buffer; (buffer, view)."""
    n = math.prod(shape)
    buf = torch.full((n + 2 * GUARD,), float("nan"), dtype=dtype)
    view = buf[GUARD:GUARD + n].view(shape)
    view.zero_()
    return buf, view


def guards_intact(buf) -> bool:
    return bool(torch.isnan(buf[:GUARD]).all() and torch.isnan(buf[-GUARD:]).all())


def strided(shape, dtype, gen, mode):
    """Random input of ``shape``: contiguous, a slice of a wider tensor, or a bad last stride."""
    *lead, d = shape
    if mode == "wide":
        return torch.randn(*lead, d + 3, generator=gen).to(dtype)[..., 1:d + 1]
    if mode == "bad_last_stride":
        return torch.randn(*lead, 2 * d, generator=gen).to(dtype)[..., ::2]
    return torch.randn(*shape, generator=gen).to(dtype)


def names_an_argument(err, fn) -> bool:
    params = [p for p in inspect.signature(ops.__dict__[fn]).parameters if p != "backend"]
    text = str(err)
    return any(p in text for p in params) or "cache overflow" in text


def close(a, b, dtype):
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=TOL[dtype], rtol=TOL[dtype],
                                                 equal_nan=False)


# ---------------------------------------------------------------- case generation


@st.composite
def rope_case(draw, with_cache: bool):
    d = draw(st.sampled_from([6, 8, 12, 16]))
    ct, ch, cw = axis_planes(d)
    gh, gw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    n_frames = draw(st.integers(1, 3))
    b, h = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    rows_t = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.float16]))
    case = dict(d=d, b=b, h=h, gh=gh, gw=gw, n_frames=n_frames, rows_t=rows_t, dtype=dtype,
                rows_h=gh + draw(st.sampled_from([0, 0, 1, -1])), rows_w=gw + draw(st.sampled_from([0, 0, 2, -1])),
                frame_offset=draw(st.one_of(st.integers(0, rows_t), st.sampled_from(EXTREME))),
                call_gh=draw(st.one_of(st.just(gh), st.sampled_from([0, -1, 2**32, 2**62]))),
                call_gw=draw(st.one_of(st.just(gw), st.sampled_from([0, -1, 2**32, 2**62]))),
                planes_t=ct + draw(st.sampled_from([0, 0, 0, 1, -1])),
                stride=draw(st.sampled_from(["contiguous", "wide", "wide", "bad_last_stride"])),
                seed=draw(st.integers(0, 2**16)))
    if with_cache:
        n_slots = draw(st.integers(1, 5))
        case.update(n_slots=n_slots, eps=draw(st.sampled_from([1e-6, 1e-6, 0.0, -1.0, float("nan"), float("inf")])),
                    norm=draw(st.booleans()), rotate=draw(st.booleans()),
                    slot_dtype=draw(st.sampled_from([torch.int64, torch.int32])),
                    slots=draw(st.lists(st.one_of(st.integers(0, n_slots - 1), st.sampled_from(
                        [-1, n_slots, n_slots + 7, 10**8, 2**31 - 1, -2**31, 2**40])), min_size=n_frames,
                        max_size=n_frames)))
    return case


def rope_tables(case):
    rope = Rope3D.for_wan(case["d"], "flex", 40, 21)
    ft = rope.tables(0, case["rows_t"], case["rows_h"] if case["rows_h"] > 0 else 1,
                     case["rows_w"] if case["rows_w"] > 0 else 1)
    freqs_t, freqs_h, freqs_w = ft
    pt = case["planes_t"]
    if pt != freqs_t.shape[1]:  # a table with the wrong plane count
        freqs_t = torch.zeros(freqs_t.shape[0], max(pt, 1), 2)
    if case["rows_h"] <= 0:
        freqs_h = freqs_h[:0]
    if case["rows_w"] <= 0:
        freqs_w = freqs_w[:0]
    return freqs_t, freqs_h, freqs_w


# ---------------------------------------------------------------- rope3d


@SETTINGS
@given(rope_case(with_cache=False))
def test_rope3d_fuzz(case):
    gen = torch.Generator().manual_seed(case["seed"])
    shape = (case["b"], case["n_frames"] * case["gh"] * case["gw"], case["h"], case["d"])
    x = strided(shape, case["dtype"], gen, case["stride"])
    ft, fh, fw = rope_tables(case)
    args = (x, ft, fh, fw, case["call_gh"], case["call_gw"], case["frame_offset"])
    try:
        expected = ops.rope3d(*args, backend="reference")
    except ValueError as err:
        expected = err
        assert names_an_argument(err, "rope3d"), err
    x_before = x.clone()
    for name in backends("rope3d"):
        if isinstance(expected, ValueError):
            with pytest.raises(ValueError):
                ops.rope3d(*args, backend=name)
        else:
            try:
                out = ops.rope3d(*args, backend=name)
            except ValueError as err:  # a backend that declines the call says so by name
                assert "does not support" in str(err) or "not available" in str(err), (name, err)
                continue
            assert close(out, expected, case["dtype"]), name
    for name, fn in direct_modules("rope3d"):
        try:
            out = fn(*args)
        except ERRORS as err:
            assert names_an_argument(err, "rope3d") or isinstance(expected, ValueError), (name, err)
            continue
        assert not isinstance(expected, ValueError), f"{name} accepted a call the rules reject: {expected}"
        assert close(out, expected, case["dtype"]), name
    assert torch.equal(x, x_before)  # inputs are read only


# ---------------------------------------------------------------- norm_rope_cache_write


def write_inputs(case):
    gen = torch.Generator().manual_seed(case["seed"])
    dtype = case["dtype"]
    shape = (case["b"], case["n_frames"] * case["gh"] * case["gw"], case["h"], case["d"])
    q, k, v = (strided(shape, dtype, gen, case["stride"]) for _ in range(3))
    width = case["h"] * case["d"]
    wq = torch.rand(width, generator=gen).to(dtype) + 0.5 if case["norm"] else None
    wk = torch.rand(width, generator=gen).to(dtype) + 0.5 if case["norm"] else None
    tpf = case["gh"] * case["gw"]
    cache_shape = (case["b"], case["n_slots"] * tpf, case["h"], case["d"])
    slots = torch.tensor(case["slots"], dtype=torch.int64)
    if case["slot_dtype"] == torch.int32:
        if ((slots > 2**31 - 1) | (slots < -2**31)).any():
            slots = slots.clamp(-2**31, 2**31 - 1)
        slots = slots.to(torch.int32)
    return q, k, v, wq, wk, cache_shape, slots


def run_write(fn, case, q, k, v, wq, wk, cache_shape, slots, tables):
    kbuf, kc = guarded(cache_shape, case["dtype"])
    vbuf, vc = guarded(cache_shape, case["dtype"])
    out = fn(q, k, v, wq, wk, case["eps"], *tables, case["call_gh"], case["call_gw"], case["frame_offset"],
             kc, vc, slots, case["rotate"])
    return out, kbuf, kc, vbuf, vc


@SETTINGS
@given(rope_case(with_cache=True))
def test_norm_rope_cache_write_fuzz(case):
    q, k, v, wq, wk, cache_shape, slots = write_inputs(case)
    tables = rope_tables(case)
    try:
        expected = run_write(lambda *a: ops.norm_rope_cache_write(*a, backend="reference"), case, q, k, v, wq, wk,
                             cache_shape, slots, tables)
    except ValueError as err:
        expected = err
        assert names_an_argument(err, "norm_rope_cache_write"), err
    rejected = isinstance(expected, ValueError)
    for name in backends("norm_rope_cache_write"):
        call = lambda *a, name=name: ops.norm_rope_cache_write(*a, backend=name)  # noqa: E731
        if rejected:
            with pytest.raises(ValueError):
                run_write(call, case, q, k, v, wq, wk, cache_shape, slots, tables)
            continue
        try:
            got = run_write(call, case, q, k, v, wq, wk, cache_shape, slots, tables)
        except ValueError as err:
            assert "does not support" in str(err) or "not available" in str(err), (name, err)
            continue
        check_write(name, got, expected, case)
    for name, fn in direct_modules("norm_rope_cache_write"):
        try:
            got = run_write(fn, case, q, k, v, wq, wk, cache_shape, slots, tables)
        except ERRORS as err:
            assert names_an_argument(err, "norm_rope_cache_write") or rejected, (name, err)
            continue
        _, kbuf, _, vbuf, _ = got
        assert guards_intact(kbuf) and guards_intact(vbuf), f"{name} wrote outside the cache"
        # Slot values live on the device: a kernel may skip out-of-range slots instead of
        # reading them back; every other rule is checked on the host and must raise.
        assert not rejected or str(expected).startswith("frame_slots must lie in"), \
            f"{name} accepted a call the rules reject: {expected}"
        if not rejected:
            check_write(name, got, expected, case)


def check_write(name, got, expected, case):
    out, kbuf, kc, vbuf, vc = got
    e_out, _, e_kc, _, e_vc = expected
    assert guards_intact(kbuf) and guards_intact(vbuf), f"{name} wrote outside the cache"
    assert close(out, e_out, case["dtype"]), name
    assert close(kc, e_kc, case["dtype"]) and close(vc, e_vc, case["dtype"]), name


# ---------------------------------------------------------------- ring_attention


@st.composite
def attention_case(draw):
    d = draw(st.sampled_from([8, 16, 32]))
    tpf = draw(st.integers(1, 3))
    n_slots = draw(st.integers(1, 5))
    return dict(
        d=d, tpf=tpf, n_slots=n_slots, b=draw(st.integers(1, 2)), h=draw(st.integers(1, 2)),
        tq=draw(st.integers(1, 3)) * tpf, dtype=draw(st.sampled_from([torch.float32, torch.float16])),
        call_tpf=draw(st.one_of(st.just(tpf), st.sampled_from([0, -1, 2**31, 2**63 - 1]))),
        slot_frame=draw(st.lists(st.one_of(st.integers(-1, 8), st.sampled_from([-2**63, 2**62, 2**63 - 1])),
                                 min_size=n_slots, max_size=n_slots)),
        slot_len=n_slots + draw(st.sampled_from([0, 0, 0, 1, -1])),
        q_first=draw(st.one_of(st.integers(0, 9), st.sampled_from(EXTREME))),
        chunk=draw(st.one_of(st.integers(0, 3), st.sampled_from(EXTREME))),
        scale=draw(st.sampled_from([None, None, 0.3, 0.0, float("nan"), float("inf")])),
        rotate=draw(st.booleans()), key_rows=n_slots + draw(st.sampled_from([0, 0, 0, 2, -1])),
        stride=draw(st.sampled_from(["contiguous", "wide", "bad_last_stride"])),
        seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(attention_case())
def test_ring_attention_fuzz(case):
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, d = case["dtype"], case["d"]
    q = strided((case["b"], case["tq"], case["h"], d), dtype, gen, case["stride"])
    kc = torch.randn(case["b"], case["n_slots"] * case["tpf"], case["h"], d, generator=gen).to(dtype)
    vc = torch.randn(case["b"], case["n_slots"] * case["tpf"], case["h"], d, generator=gen).to(dtype)
    sf = case["slot_frame"][:max(case["slot_len"], 0)] + [-1] * max(case["slot_len"] - case["n_slots"], 0)
    slot_frame = torch.tensor(sf, dtype=torch.int64)
    key_ft = None
    if case["rotate"]:
        ct = axis_planes(d)[0]
        key_ft = Rope3D.for_wan(d).temporal_table(torch.arange(max(case["key_rows"], 0)))[:, :ct]
    args = (q, kc, vc, slot_frame, case["call_tpf"], case["q_first"], case["chunk"], case["scale"], key_ft)
    scale = case["scale"]
    try:
        expected = ops.ring_attention(*args, backend="reference")
    except ValueError as err:
        expected = err
        assert names_an_argument(err, "ring_attention"), err
    rejected = isinstance(expected, ValueError)
    # Fully masked query rows are 0 in every backend; compare where the reference is finite.
    for name in backends("ring_attention"):
        if rejected:
            with pytest.raises(ValueError):
                ops.ring_attention(*args, backend=name)
            continue
        try:
            out = ops.ring_attention(*args, backend=name)
        except ValueError as err:
            assert "does not support" in str(err) or "not available" in str(err), (name, err)
            continue
        assert close(out, expected, dtype), name
    for name, fn in direct_modules("ring_attention"):
        direct_scale = d ** -0.5 if scale is None else scale
        try:
            out = fn(q, kc, vc, slot_frame, case["call_tpf"], case["q_first"], case["chunk"], direct_scale, key_ft,
                     False)
        except ERRORS as err:
            assert names_an_argument(err, "ring_attention") or rejected, (name, err)
            continue
        out = out[0] if isinstance(out, tuple) else out
        assert not rejected, f"{name} accepted a call the rules reject: {expected}"
        assert close(out, expected, dtype), name
