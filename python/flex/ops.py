"""The public FLEX ops and the one place where a backend is chosen.

Every op validates its inputs here (so all backends fail the same way, with a ValueError that
names the parameter) and then calls the backend module ``flex.backends.<name>``:

    reference  float64 PyTorch (flex.reference), any device, slow, the ground truth
    cpp        C++ kernels of flex._C on CPU tensors
    cuda       CUDA kernels of flex._C on CUDA tensors
    triton     Triton kernels (flex_kernels), CUDA tensors, or CPU under TRITON_INTERPRET=1
    sdpa       torch scaled_dot_product_attention over the resident ring prefix (no mask)
    flash      flash-attn over the resident ring prefix, when flash_attn is importable

``backend="auto"`` takes the first available backend of AUTO_ORDER for the tensors' device
that supports the call. On a CPU, SDPA comes first: it only takes the unmasked ring attention
(where it measured as fast as or faster than the C++ kernel, up to 1.3x in bf16: see
benchmarks/results), and every other call falls through to the C++ kernels.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from . import canary
from .checks import INT64_MAX, check_bool, check_float, check_int
from .errors import SettingsError

BACKENDS = ("reference", "cpp", "cuda", "triton", "sdpa", "flash")
AUTO_ORDER = {
    "cuda": ("cuda", "triton", "sdpa", "flash", "reference"),
    "cpu": ("sdpa", "cpp", "reference"),
}
OPS = ("rope3d", "norm_rope_cache_write", "ring_attention")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _module(name: str):
    return importlib.import_module(f"flex.backends.{name}")


@dataclass(frozen=True)
class Call:
    """What a backend needs to know to accept a call: a description, no tensors.

    block_causal    ring_attention with chunk_frames > 0 (a mask beyond empty slots)
    rotate_on_load  ring_attention with key_freqs_t (keys rotated while loading)
    resident_prefix ring_attention with resident_tokens: the filled slots are exactly a prefix

    Temporal RoPE tables may hold one row per head (freqs_t [N, H, C_t, 2], key_freqs_t
    [n_slots, H, C_t, 2]); every backend that takes tables takes those too.
    """

    op: str
    dtype: torch.dtype | None = None
    head_dim: int | None = None
    block_causal: bool = False
    rotate_on_load: bool = False
    resident_prefix: bool = False
    return_lse: bool = False

    @classmethod
    def of(cls, op: str, *, chunk_frames=0, key_freqs_t=None, resident_tokens=None, return_lse=False,
           dtype=None, head_dim=None) -> "Call":
        """The description of a call from its arguments (ring_attention's keyword names)."""
        return cls(op, dtype, head_dim, bool(chunk_frames), key_freqs_t is not None,
                   resident_tokens is not None, bool(return_lse))


def backend_status(name: str) -> tuple[bool, str]:
    """(available, reason) of a backend on this machine."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {name!r}")
    try:
        return _module(name).available()
    except ImportError as err:  # a backend's dependency is missing
        return False, str(err)


def available_backends(op: str | None = None, device: str | None = None) -> list[str]:
    """Backends usable here, optionally only those implementing ``op`` on ``device``."""
    names = []
    for name in BACKENDS:
        if not backend_status(name)[0]:
            continue
        mod = _module(name)
        if op is not None and not hasattr(mod, op):
            continue
        if device is not None and device not in mod.DEVICES:
            continue
        names.append(name)
    return names


def auto_order(device: torch.device) -> tuple[str, ...]:
    """The backends ``"auto"`` tries on ``device``, in order."""
    return AUTO_ORDER.get(device.type, ("reference",))


def _supports(mod, call: Call) -> bool:
    return getattr(mod, "supports", lambda call: True)(call)


_warned_slow_fallback = False


def _warn_slow_fallback(call: Call) -> None:
    """Once per process: "auto" fell back to the float64 reference because flex._C is missing."""
    global _warned_slow_fallback
    from . import _extension

    if _warned_slow_fallback or _extension.AVAILABLE:
        return
    _warned_slow_fallback = True
    warnings.warn(f"flex: {call.op} runs on the slow float64 reference backend because "
                  f"{_extension.unavailable_reason()}", RuntimeWarning, stacklevel=3)


def select(call: Call, backend: str, device: torch.device):
    """The backend module that runs ``call`` on ``device`` (``backend`` a name or "auto").

    Its first call of each variant is checked against the reference where canaries are on
    (flex.canary); a variant that failed is skipped, the named backend included.
    """
    name, mod = _choose(call, backend, device)
    return canary.guard(call, name, mod, device, lambda: select(call, "auto", device))


def _choose(call: Call, backend: str, device: torch.device):
    op = call.op
    if backend == "auto":
        for name in auto_order(device):
            if not backend_status(name)[0] or canary.is_bad(call, name, device):
                continue
            mod = _module(name)
            if hasattr(mod, op) and device.type in mod.DEVICES and _supports(mod, call):
                if name == "reference":
                    _warn_slow_fallback(call)
                return name, mod
        raise ValueError(f"no backend available for {op} on {device.type}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS}, got {backend!r}")
    if canary.is_bad(call, backend, device):  # warned once when it failed its canary
        return _choose(call, "auto", device)
    ok, reason = backend_status(backend)
    if not ok:
        raise ValueError(f"backend {backend!r} is not available: {reason}")
    mod = _module(backend)
    if not hasattr(mod, op):
        raise ValueError(f"backend {backend!r} does not implement {op}")
    if device.type not in mod.DEVICES:
        raise ValueError(f"backend {backend!r} runs on {sorted(mod.DEVICES)}, got tensors on {device.type}")
    if not _supports(mod, call):
        raise ValueError(f"backend {backend!r} does not support this {op} call: {mod.supports.__doc__}")
    return backend, mod


def resolve_backend(op: str, backend: str, device: torch.device, **call) -> object:
    """The backend module that runs ``op`` for a call with these arguments (see :meth:`Call.of`)."""
    return select(Call.of(op, **call), backend, torch.device(device))


PASS_OPS = ("norm_rope_cache_write", "ring_attention")  # the two ops of a model pass


def backend_per_op(backend) -> dict[str, str]:
    """{op: backend name} for the ops of a model pass, from one name or a mapping {op: name}."""
    allowed = ("auto",) + BACKENDS
    if isinstance(backend, str):
        if backend not in allowed:
            raise SettingsError("backend", f"must be one of {allowed} or a dict {{op: backend}}, got {backend!r}")
        usable = available_backends() if backend != "auto" else []
        out = {}
        for op in PASS_OPS:
            # An available backend that lacks an op (sdpa, flash: attention only) leaves that op
            # to "auto"; an unavailable one is passed on so that select() names the reason.
            lacks = backend in usable and backend not in available_backends(op)
            out[op] = "auto" if lacks else backend
        return out
    if isinstance(backend, Mapping):
        unknown = set(backend) - set(PASS_OPS)
        if unknown:
            raise SettingsError("backend", f"keys must be among {PASS_OPS}, got {sorted(unknown)}")
        for op, name in backend.items():
            if name not in allowed:
                raise SettingsError("backend", f"[{op!r}] must be one of {allowed}, got {name!r}")
        return {op: backend.get(op, "auto") for op in PASS_OPS}
    raise SettingsError("backend", f"must be a str or a dict {{op: backend}}, got {type(backend).__name__}")


@dataclass(frozen=True)
class PassKernels:
    """The two self-attention ops of a model pass, resolved to backend functions once.

    The public ops check arguments and pick a backend on every call; a pass plans once and
    calls the backend functions directly, so torch.compile can trace it whole.
    """

    norm_rope_cache_write: Callable
    ring_attention: Callable
    # Whether ring_attention slices the resident prefix (sdpa, flash), so that its work depends
    # on resident_tokens; the masked kernels read the slot frames on the device instead.
    slices_resident_prefix: bool = False


def plan(backend, device, dtype: torch.dtype, head_dim: int, rotate_on_load: bool = False,
         resident_prefix: bool = True) -> PassKernels:
    """The kernels of a model pass: qk-norm + RoPE + cache write, then ring attention over
    the whole ring (no block-causal mask, no lse). ``resident_prefix``: whether the filled
    slots form a prefix (else only masked attention kernels qualify)."""
    names = backend_per_op(backend)
    device = torch.device(device)
    nrc = select(Call("norm_rope_cache_write", dtype, head_dim), names["norm_rope_cache_write"], device)
    ra = select(Call("ring_attention", dtype, head_dim, rotate_on_load=rotate_on_load, resident_prefix=resident_prefix),
                names["ring_attention"], device)
    return PassKernels(nrc.norm_rope_cache_write, ra.ring_attention, getattr(ra, "SLICES_RESIDENT_PREFIX", False))


# ---------------------------------------------------------------- validation helpers


def _check_tensor(name, x, ndim, device=None, dtype=None, float_=True, shape=None):
    """x is a tensor of ``ndim`` dimensions (an int, or a tuple of those allowed; ``shape`` says
    which in words) on ``device``, of ``dtype`` or any float type."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name} must be {shape or f'{ndim}-D'}, got shape {tuple(x.shape)}")
    if float_ and x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{name} must be a floating tensor ({_FLOAT_DTYPES}), got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on {device}, got {x.device}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {x.dtype}")


def _check_freqs(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset):
    for name, f in (("freqs_t", freqs_t), ("freqs_h", freqs_h), ("freqs_w", freqs_w)):
        # The temporal table may hold a row per head of x.
        shape = "[N, C, 2] (cos, sin)" + (f" or one table per head [N, H={x.shape[2]}, C, 2]" if name == "freqs_t" else "")
        _check_tensor(name, f, (3, 4) if name == "freqs_t" else 3, device=x.device, shape=shape)
        if f.shape[-1] != 2 or (f.dim() == 4 and f.shape[1] != x.shape[2]):
            raise ValueError(f"{name} must be {shape}, got shape {tuple(f.shape)}")
    d = x.shape[-1]
    planes = freqs_t.shape[-2] + freqs_h.shape[1] + freqs_w.shape[1]
    if 2 * planes != d:
        raise ValueError(f"freqs_t/h/w have {planes} planes in all but head dim {d} needs {d // 2}")
    for name, g in (("grid_h", grid_h), ("grid_w", grid_w)):
        check_int(name, g, 1, INT64_MAX)
    t = x.shape[1]
    if t % (grid_h * grid_w):
        raise ValueError(f"token count {t} is not a multiple of grid_h * grid_w = {grid_h * grid_w}")
    check_int("frame_offset", frame_offset, 0, INT64_MAX)
    if frame_offset + t // (grid_h * grid_w) > freqs_t.shape[0]:
        raise ValueError(
            f"freqs_t has {freqs_t.shape[0]} frames but frames up to {frame_offset + t // (grid_h * grid_w)} are needed"
        )
    if grid_h > freqs_h.shape[0] or grid_w > freqs_w.shape[0]:
        raise ValueError(f"freqs_h/freqs_w ({freqs_h.shape[0]}, {freqs_w.shape[0]} rows) are smaller than the grid ({grid_h}, {grid_w})")
    if x.stride(-1) != 1:
        raise ValueError("the last dimension (head dim) must be contiguous")


def _check_slots_in_range(frame_slots, n_slots):
    """Every frame slot must address the cache (one host read; planned passes skip it)."""
    if frame_slots.numel() and not bool(((frame_slots >= 0) & (frame_slots < n_slots)).all()):
        raise ValueError(f"frame_slots must lie in [0, {n_slots}) (the cache's slots), got {frame_slots.tolist()}")


def _check_resident_prefix(resident_tokens, slot_frame, tokens_per_frame):
    """resident_tokens claims that the filled slots are exactly the first n: check it (one host read)."""
    n_keys = slot_frame.numel() * tokens_per_frame
    if not isinstance(resident_tokens, int) or isinstance(resident_tokens, bool) \
            or not 0 <= resident_tokens <= n_keys or resident_tokens % tokens_per_frame:
        raise ValueError(f"resident_tokens must be a multiple of tokens_per_frame ({tokens_per_frame}) in "
                         f"[0, {n_keys}], got {resident_tokens!r}")
    filled = (slot_frame >= 0).tolist()
    n = resident_tokens // tokens_per_frame
    if not all(filled[:n]) or any(filled[n:]):
        raise ValueError(f"resident_tokens = {resident_tokens} ({n} slots) says the filled slots are exactly "
                         f"the first {n}, but slot_frame is {slot_frame.tolist()}: pass resident_tokens=None")


# ---------------------------------------------------------------- public ops


def rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset=0, backend="auto"):
    """Wan 3D RoPE of x [B, T, H, D], tokens in (f, h, w) order, interleaved pairs.

    freqs_* are [N, C, 2] (cos, sin) float32 tables from :meth:`flex.rope.Rope3D.tables`;
    a token in chunk frame f uses temporal row frame_offset + f. freqs_t may hold a row per head,
    [N, H, C_t, 2] (per-head frequencies). Returns a new tensor.
    """
    _check_tensor("x", x, 4)
    _check_freqs(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)
    mod = select(Call("rope3d", x.dtype, x.shape[-1]), backend, x.device)
    return mod.rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)


def norm_rope_cache_write(
    q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
    frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal=True, backend="auto",
):
    """qk-RMSNorm (over H*D, where a weight is given) + 3D RoPE, k/v written into cache slots.

    Returns the rotated q. ``frame_slots`` [F] (int32/int64, on the cache's device) gives the
    ring slot of each of the chunk's frames (see :meth:`flex.cache.RingKVCache.slots`).
    """
    _check_tensor("q", q, 4)
    for name, t in (("k", k), ("v", v)):
        _check_tensor(name, t, 4, device=q.device, dtype=q.dtype)
        if t.shape != q.shape:
            raise ValueError(f"{name} must have q's shape {tuple(q.shape)}, got {tuple(t.shape)}")
    _check_freqs(q, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)
    b, t, h, d = q.shape
    width = h * d
    for name, w in (("norm_q_weight", norm_q_weight), ("norm_k_weight", norm_k_weight)):
        if w is not None:
            _check_tensor(name, w, w.dim(), device=q.device)
            if w.numel() != width:
                raise ValueError(f"{name} must have H*D = {width} elements, got {w.numel()}")
    check_float("eps", eps, 0.0, low_open=True)
    tpf = grid_h * grid_w
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_tensor(name, c, 4, device=q.device, dtype=q.dtype)
        if c.shape != k_cache.shape:
            raise ValueError(f"v_cache must have k_cache's shape {tuple(k_cache.shape)}, got {tuple(c.shape)}")
        if c.shape[0] != b or c.shape[2:] != q.shape[2:] or c.shape[1] % tpf or not c.is_contiguous():
            raise ValueError(
                f"{name} must be contiguous [B={b}, n_slots*{tpf}, H={h}, D={d}], got {tuple(c.shape)}"
            )
    _check_tensor("frame_slots", frame_slots, 1, device=q.device, float_=False)
    if frame_slots.dtype not in (torch.int32, torch.int64) or frame_slots.numel() != t // tpf:
        raise ValueError(f"frame_slots must be int32/int64 with one slot per frame ({t // tpf}), got {frame_slots.dtype} {tuple(frame_slots.shape)}")
    _check_slots_in_range(frame_slots, k_cache.shape[1] // tpf)
    mod = select(Call("norm_rope_cache_write", q.dtype, d), backend, q.device)
    return mod.norm_rope_cache_write(
        q, k, v, norm_q_weight, norm_k_weight, float(eps), freqs_t, freqs_h, freqs_w, grid_h, grid_w,
        frame_offset, k_cache, v_cache, frame_slots, check_bool("rotate_k_temporal", rotate_k_temporal),
    )


def ring_attention(
    q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame=0, chunk_frames=0,
    scale=None, key_freqs_t=None, return_lse=False, resident_tokens=None, backend="auto",
):
    """Attention of q [B, Tq, H, D] over the ring cache, masked by per-slot frame indices.

    Empty slots (frame -1) are never visible; ``chunk_frames > 0`` adds block-causal order over
    chunks aligned at ``q_first_frame``; ``key_freqs_t`` [n_slots, C_t, 2] rotates each slot's
    keys by its temporal (cos, sin) while loading (rotate-on-load), [n_slots, H, C_t, 2] each
    head's keys by its own; C_t must be the temporal plane count of the keys' RoPE (the planes
    norm_rope_cache_write left unrotated), which this op cannot see. ``resident_tokens`` (a host int, from
    :meth:`RingKVCache.resident_prefix_tokens`) lets backends that need no mask (sdpa, flash)
    attend over k_cache[:, :resident_tokens]. Returns out, or (out, lse).
    """
    _check_tensor("q", q, 4)
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        _check_tensor(name, c, 4, device=q.device, dtype=q.dtype)
        if c.shape[0] != q.shape[0] or c.shape[2:] != q.shape[2:]:
            raise ValueError(f"{name} must be [B, n_keys, H, D] matching q {tuple(q.shape)}, got {tuple(c.shape)}")
        if c.stride(-1) != 1:
            raise ValueError(f"the last dimension of {name} must be contiguous")
    if q.stride(-1) != 1:
        raise ValueError("the last dimension of q must be contiguous")
    check_int("tokens_per_frame", tokens_per_frame, 1, INT64_MAX)
    _check_tensor("slot_frame", slot_frame, 1, device=q.device, float_=False)
    if slot_frame.dtype != torch.int64 or slot_frame.numel() * tokens_per_frame != k_cache.shape[1]:
        raise ValueError(
            f"slot_frame must be int64 with k_cache.shape[1] / tokens_per_frame = "
            f"{k_cache.shape[1] / tokens_per_frame:g} entries, got {slot_frame.dtype} {tuple(slot_frame.shape)}"
        )
    check_int("chunk_frames", chunk_frames, 0, INT64_MAX)  # 0: no block-causal mask
    check_int("q_first_frame", q_first_frame, 0, INT64_MAX)
    if key_freqs_t is not None:
        # C_t must be the temporal plane count the keys were written with (not checkable here).
        shape = f"[n_slots={slot_frame.numel()}, C_t <= D/2, 2] or one table per head [n_slots, H={q.shape[2]}, C_t, 2]"
        _check_tensor("key_freqs_t", key_freqs_t, (3, 4), device=q.device, shape=shape)
        if key_freqs_t.shape[0] != slot_frame.numel() or key_freqs_t.shape[-1] != 2 \
                or 2 * key_freqs_t.shape[-2] > q.shape[-1] or (key_freqs_t.dim() == 4 and key_freqs_t.shape[1] != q.shape[2]):
            raise ValueError(f"key_freqs_t must be {shape}, got shape {tuple(key_freqs_t.shape)}")
    if resident_tokens is not None:
        _check_resident_prefix(resident_tokens, slot_frame, tokens_per_frame)
    scale = q.shape[-1] ** -0.5 if scale is None else check_float("scale", scale)
    check_bool("return_lse", return_lse)
    call = Call.of("ring_attention", chunk_frames=chunk_frames, key_freqs_t=key_freqs_t,
                   resident_tokens=resident_tokens, return_lse=return_lse, dtype=q.dtype, head_dim=q.shape[-1])
    mod = select(call, backend, q.device)
    return mod.ring_attention(
        q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames, scale,
        key_freqs_t, return_lse, resident_tokens,
    )
