"""First-use canaries (flex.canary): forced on on the CPU, a wrong kernel injected by monkeypatch
is caught on its first call, reported, disabled for the process, and the call is redone on the
next backend; a right kernel is checked once and then called directly."""
import warnings

import pytest
import torch

from flex import canary, ops, reference
from flex.backends import sdpa
from flex.cache import RingKVCache
from flex.models import CausalWanModel
from flex.tolerance import relative_error, tolerance

from op_inputs import needs_extension

CPU = torch.device("cpu")


@pytest.fixture
def forced_on(monkeypatch):
    monkeypatch.setenv(canary.ENV, "1")
    canary.reset()
    yield
    canary.reset()


def wrong(kernel, factor=1.01):
    """A kernel whose result is off by 1 % (what a miscompiled kernel might return)."""
    calls = []

    def bad(*args):
        calls.append(1)
        out = kernel(*args)
        return out * factor
    bad.calls = calls
    return bad


def full_ring(seed=0, tpf=6, heads=2, d=32, chunk=1):
    g = torch.Generator().manual_seed(seed)
    ring = RingKVCache(1, heads, d, tpf, 1, 2)
    for f in range(0, 5, chunk):
        ring.write(torch.randn(1, chunk * tpf, heads, d, generator=g), torch.randn(1, chunk * tpf, heads, d, generator=g), f)
    q = torch.randn(1, tpf, heads, d, generator=g)
    return q, ring


def attend(q, ring, backend="auto"):
    return ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, ring.tokens_per_frame, 4,
                              resident_tokens=ring.resident_prefix_tokens(), backend=backend)


def test_default_is_gpu_only_and_env_overrides(monkeypatch):
    monkeypatch.delenv(canary.ENV, raising=False)
    assert not canary.enabled(CPU) and canary.enabled(torch.device("cuda"))
    monkeypatch.setenv(canary.ENV, "0")
    assert not canary.enabled(torch.device("cuda"))
    monkeypatch.setenv(canary.ENV, "1")
    assert canary.enabled(CPU)
    with canary.off():
        assert not canary.enabled(CPU)
    assert canary.enabled(CPU)


def test_wrong_kernel_warns_falls_back_and_is_skipped_after(forced_on, monkeypatch, caplog):
    bad = wrong(sdpa.ring_attention)
    monkeypatch.setattr(sdpa, "ring_attention", bad)
    q, ring = full_ring()
    ref = reference.ring_attention(q, ring.k, ring.v, ring.slot_frame, 6, 4)
    with pytest.warns(canary.CanaryMismatch, match=r"backend 'sdpa' gave a wrong ring_attention .* disabled"):
        out = attend(q, ring)
    assert "flex canary" in caplog.text
    assert len(bad.calls) == 1 and relative_error(out, ref) <= tolerance(torch.float32)
    call = ops.Call("ring_attention", torch.float32, 32, resident_prefix=True)
    assert canary.is_bad(call, "sdpa", CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("error", canary.CanaryMismatch)  # warned once, not again
        out2 = attend(q, ring)
        out3 = attend(q, ring, backend="sdpa")  # named: falls back too
    assert len(bad.calls) == 1, "a variant that failed is never called again"
    assert relative_error(out2, ref) <= tolerance(torch.float32) and torch.equal(out2, out3)
    assert ops.select(call, "auto", CPU).__name__ != "flex.backends.sdpa"


def test_right_kernel_is_checked_once_then_called_directly(forced_on, monkeypatch):
    checks = []
    real = reference.ring_attention
    monkeypatch.setattr(reference, "ring_attention", lambda *a: checks.append(1) or real(*a))
    q, ring = full_ring()
    call = ops.Call("ring_attention", torch.float32, 32, resident_prefix=True)
    assert ops.select(call, "sdpa", CPU) is not sdpa  # a guarded stand-in before the first call
    first, second = attend(q, ring, "sdpa"), attend(q, ring, "sdpa")
    assert len(checks) == 1 and torch.equal(first, second)
    assert ops.select(call, "sdpa", CPU) is sdpa


def test_off_returns_the_kernel_result_unchecked(monkeypatch):
    monkeypatch.setenv(canary.ENV, "0")
    canary.reset()
    monkeypatch.setattr(sdpa, "ring_attention", wrong(sdpa.ring_attention))
    q, ring = full_ring()
    ref = reference.ring_attention(q, ring.k, ring.v, ring.slot_frame, 6, 4)
    assert relative_error(attend(q, ring), ref) > 5e-3


@needs_extension
def test_block_causal_rows_and_lse_checked(forced_on, monkeypatch):
    """The attention check slices the chunk's last frame; with block-causal order and lse it must
    still agree with the whole call (a right kernel passes), and a wrong lse is caught."""
    from flex.backends import cpp

    q, ring = full_ring(tpf=5, chunk=2)
    q = torch.randn(1, 2 * 5, 2, 32)
    args = (q, ring.k, ring.v, ring.slot_frame, 5, 3, 2)
    out, lse = ops.ring_attention(*args, return_lse=True, backend="cpp")  # verified: no warning
    ref = reference.ring_attention(*args, return_lse=True)
    assert relative_error(out, ref[0]) <= 1e-5
    canary.reset()
    real = cpp.ring_attention
    monkeypatch.setattr(cpp, "ring_attention", lambda *a: (real(*a)[0], real(*a)[1] + 0.1))
    with pytest.warns(canary.CanaryMismatch):
        out, lse = ops.ring_attention(*args, return_lse=True, backend="cpp")
    assert relative_error(lse, ref[1]) <= 1e-5  # redone on the reference


@needs_extension
def test_wrong_cache_write_is_rewritten_by_the_fallback(forced_on, monkeypatch):
    from flex.backends import cpp
    from op_inputs import rope_tables

    real = cpp.norm_rope_cache_write

    def bad(q, k, v, *rest):  # writes v off by 1 %
        return real(q, k, v * 1.01, *rest)
    monkeypatch.setattr(cpp, "norm_rope_cache_write", bad)
    tpf, g = 63, torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2 * tpf, 2, 32, generator=g) for _ in range(3))
    ft, fh, fw = rope_tables(32, 2)
    w = torch.rand(64, generator=g) + 0.5
    kc, vc = torch.zeros(1, 3 * tpf, 2, 32), torch.zeros(1, 3 * tpf, 2, 32)
    kr, vr = kc.clone(), vc.clone()
    slots = torch.tensor([2, 0])
    with pytest.warns(canary.CanaryMismatch, match="norm_rope_cache_write"):
        out = ops.norm_rope_cache_write(q, k, v, w, w, 1e-6, ft, fh, fw, 7, 9, 0, kc, vc, slots, backend="cpp")
    ref = reference.norm_rope_cache_write(q, k, v, w, w, 1e-6, ft, fh, fw, 7, 9, 0, kr, vr, slots)
    for got, want in ((out, ref), (kc, kr), (vc, vr)):
        assert relative_error(got, want) <= 1e-5


def test_planned_model_pass_falls_back(forced_on, monkeypatch):
    """ops.plan (the model's path) goes through the same check: a wrong attention kernel does
    not change the model's output."""
    torch.manual_seed(0)
    model = CausalWanModel("tiny").float()
    text = model.encode_text(torch.randn(1, 4, 32))
    x = torch.randn(1, 3, 16, 4, 6)

    def chunk():
        return model(x, 937.5, text, model.new_cache(1, 2, 3, 0, 3), 0, backend="auto")

    with canary.off():
        want = chunk()
    canary.reset()
    monkeypatch.setattr(sdpa, "ring_attention", wrong(sdpa.ring_attention, 1.5))
    with pytest.warns(canary.CanaryMismatch):
        got = chunk()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_compiled_call_is_traced_through_unchecked(forced_on):
    """Under torch.compile the stand-in calls the kernel (no check, no graph break)."""
    import torch._dynamo

    q, ring = full_ring()
    call = ops.Call("ring_attention", torch.float32, 32, resident_prefix=True)
    fn = ops.select(call, "sdpa", CPU).ring_attention
    args = (q, ring.k, ring.v, ring.slot_frame, 6, 4, 0, 32 ** -0.5, None, False, ring.resident_prefix_tokens())
    explained = torch._dynamo.explain(fn)(*args)
    assert explained.graph_break_count == 0
    assert not canary.is_bad(call, "sdpa", CPU) and ops.select(call, "sdpa", CPU) is not sdpa  # not verified


@needs_extension
def test_per_head_tables_on_more_heads_than_the_check_reads(forced_on):
    """The checks read the first CHECK_HEADS heads: a per-head table (LoL jitter) is cut to those
    heads' rows too, so a right kernel passes without a warning and a wrong one is caught."""
    from flex.backends import cpp
    from flex.methods.position_methods import jitter_factors, jittered
    from flex.rope import Rope3D

    heads, d, tpf = canary.CHECK_HEADS + 2, 32, 6
    rope = jittered(Rope3D.for_wan(d), jitter_factors(heads, d, 0.8, 0))
    x = torch.randn(1, 2 * tpf, heads, d)
    ft, fh, fw = rope.tables(0, 2, 2, 3)
    q, ring = full_ring(heads=heads, d=d, tpf=tpf)
    key_table = rope.temporal_table(torch.arange(ring.n_slots, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error", canary.CanaryMismatch)
        out = ops.rope3d(x, ft, fh, fw, 2, 3, backend="cpp")
        att = ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, tpf, 4, key_freqs_t=key_table, backend="cpp")
    assert relative_error(out, reference.rope3d(x, ft, fh, fw, 2, 3)) <= 1e-5
    assert relative_error(att, reference.ring_attention(q, ring.k, ring.v, ring.slot_frame, tpf, 4,
                                                        key_freqs_t=key_table)) <= 1e-5
    canary.reset()
    bad = wrong(cpp.rope3d)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpp, "rope3d", bad)
        with pytest.warns(canary.CanaryMismatch):
            ops.rope3d(x, ft, fh, fw, 2, 3, backend="cpp")
