"""First-use canaries: each kernel variant is checked once per process against the reference.

A variant is one backend running one kind of call on one device (``flex.ops.Call``: op, dtype,
head size, mask and rotate-on-load flags). The first time a process runs a variant, the call's
result is compared with the float64 reference (flex.reference) on that call's data, sliced to
a few heads, frames or queries so that the check stays cheap at any size. A mismatch beyond
the dtype's bound (flex.tolerance) logs a warning naming the variant, marks it bad for the rest
of the process (ops.select skips it from then on) and the call is redone on the next backend.

On by default for the GPU backends (kernels that CPU tests could only interpret); the
environment variable FLEX_CANARY=0 turns it off, FLEX_CANARY=1 turns it on everywhere (CPU
backends too). Never inside torch.compile tracing or CUDA-graph capture: a pass compiled from
its first call (ChunkStep with compile and masked kernels) is left to `flex selftest`; a CUDA
graph is captured after an eager warm-up pass, which is checked. Benchmarks measure its cost
(benchmarks/canary_cost.py) and keep it out of their timed loops.
"""
from __future__ import annotations

import contextlib
import logging
import os
import warnings

import torch

from . import reference
from .rope import head_rows
from .tolerance import relative_error, tolerance

ENV = "FLEX_CANARY"
LOG = logging.getLogger("flex.canary")
CHECK_HEADS = 4  # heads compared (from the first); attention also compares CHECK_QUERIES queries
CHECK_QUERIES = 64

_verified: set = set()  # variants that passed
_bad: dict = {}  # variant -> the failure message


class CanaryMismatch(RuntimeWarning):
    """A kernel variant disagreed with the float64 reference on its first call."""


def enabled(device: torch.device) -> bool:
    """Whether first calls on ``device`` are checked: FLEX_CANARY=0/1, else on for CUDA."""
    value = os.environ.get(ENV, "").strip()
    if value in ("0", "1"):
        return value == "1"
    return device.type == "cuda"


@contextlib.contextmanager
def off():
    """No canary inside the block (the self-test checks the kernels themselves; timed loops)."""
    old = os.environ.get(ENV)
    os.environ[ENV] = "0"
    try:
        yield
    finally:
        if old is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = old


def variant(call, backend: str, device: torch.device) -> tuple:
    return backend, device.type, call


def is_bad(call, backend: str, device: torch.device) -> bool:
    """Whether this variant failed its canary in this process (select skips it)."""
    return variant(call, backend, device) in _bad


def reset() -> None:
    """Forget every verdict (tests; a new process starts empty)."""
    _verified.clear()
    _bad.clear()


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class _Guarded:
    """The backend module with its op replaced by the checked call (other names pass through)."""

    def __init__(self, mod, op: str, fn):
        self._mod, self._op, self._fn = mod, op, fn

    def __getattr__(self, name):
        return self._fn if name == self._op else getattr(self._mod, name)


def guard(call, backend: str, mod, device: torch.device, fallback):
    """``mod``, or a stand-in whose ``call.op`` checks its first call (see the module docstring).

    ``fallback()`` returns the backend module to redo a failed call on (ops.select with this
    variant marked bad).
    """
    key = variant(call, backend, device)
    if backend == "reference" or key in _verified or not enabled(device):
        return mod
    kernel = getattr(mod, call.op)

    def checked(*args):
        # First, so that torch.compile traces only the kernel call (no guard on the verdicts).
        if torch.compiler.is_compiling():
            return kernel(*args)
        if key in _verified or _capturing():
            return kernel(*args)
        if key in _bad:
            return getattr(fallback(), call.op)(*args)
        out, err = _CHECKS[call.op](kernel, args)
        bound = tolerance(args[0].dtype)
        if err <= bound:
            _verified.add(key)
            return out
        message = (f"flex canary: backend {backend!r} gave a wrong {call.op} on {device.type} "
                   f"({call.dtype}, head_dim {call.head_dim}): relative error {err:.3g} > {bound:g} "
                   f"against the float64 reference; this variant is disabled for the process and the "
                   f"call is redone on the next backend (set {ENV}=0 to skip these checks)")
        _bad[key] = message
        LOG.warning(message)
        warnings.warn(message, CanaryMismatch, stacklevel=3)
        return getattr(fallback(), call.op)(*args)

    return _Guarded(mod, call.op, checked)


# ------------------------------------------------------------------- one check per op
# Each runs the kernel on the call's full data (its result is what the caller gets) and the
# reference on a slice that computes the same numbers: heads are independent in rope3d and
# attention, frames are independent in norm_rope_cache_write (its norm spans all heads).


def _check_rope3d(kernel, args):
    x, ft, fh, fw, gh, gw, off = args
    out = kernel(*args)
    h = slice(0, CHECK_HEADS)
    return out, relative_error(out[:, :, h], reference.rope3d(x[:, :, h], head_rows(ft, h), fh, fw, gh, gw, off))


def _check_norm_rope_cache_write(kernel, args):
    q, k, v, wq, wk, eps, ft, fh, fw, gh, gw, off, k_cache, v_cache, slots, rotate = args
    out = kernel(*args)
    tpf = gh * gw
    b, t, h, d = q.shape
    last = slice(t - tpf, t)  # the chunk's last frame
    kc, vc = k_cache.new_zeros(b, tpf, h, d), v_cache.new_zeros(b, tpf, h, d)
    ref = reference.norm_rope_cache_write(q[:, last], k[:, last], v[:, last], wq, wk, eps, ft, fh, fw, gh, gw,
                                          off + t // tpf - 1, kc, vc, slots.new_zeros(1), rotate)
    slot = slots[-1:].to(torch.int64)
    got_k = k_cache.view(b, -1, tpf, h, d).index_select(1, slot)[:, 0]
    got_v = v_cache.view(b, -1, tpf, h, d).index_select(1, slot)[:, 0]
    err = max(relative_error(out[:, last], ref), relative_error(got_k, kc), relative_error(got_v, vc))
    return out, err


def _check_ring_attention(kernel, args):
    q, k_cache, v_cache, slot_frame, tpf, q_first, chunk_frames, scale, key_freqs_t, return_lse, _ = args
    res = kernel(*args)
    out, lse = res if return_lse else (res, None)
    # The last queries of the chunk's last frame: with block-causal order, a chunk of the call's
    # chunk_frames starts where that frame's chunk starts.
    t = q.shape[1]
    last_frame = t // tpf - 1
    rows = slice(t - min(CHECK_QUERIES, tpf), t)
    first = q_first + (last_frame // chunk_frames) * chunk_frames if chunk_frames else q_first
    h = slice(0, CHECK_HEADS)
    ref_out, ref_lse = reference.ring_attention(q[:, rows, h], k_cache[:, :, h], v_cache[:, :, h], slot_frame, tpf,
                                                first, chunk_frames, scale, head_rows(key_freqs_t, h), True)
    err = relative_error(out[:, rows, h], ref_out)
    if lse is not None:
        err = max(err, relative_error(lse[:, h, rows], ref_lse))
    return res, err


_CHECKS = {"rope3d": _check_rope3d, "norm_rope_cache_write": _check_norm_rope_cache_write,
           "ring_attention": _check_ring_attention}
