"""Op benchmarks: the upstream-style path against every FLEX backend present, on Wan shapes.

The one case list of the op benchmarks. benchmarks/test_ops.py times every case with
pytest-benchmark (``pytest benchmarks --benchmark-only``); benchmarks/run.py runs that file and
reads its ``--benchmark-json`` into its tables (:func:`rows_from_benchmark_json`), so there is
one timing implementation and ``--benchmark-compare`` works between commits.
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Callable

import torch

from flex import ops
from flex.cache import RingKVCache
from flex.methods.position_methods import jitter_factors, jittered
from flex.rope import Rope3D

from . import upstream

PER_HEAD = ", per-head tables"  # impl suffix: LoL jitter's temporal table per head (strength 0.8, all heads)


# Largest float64 score matrix the reference backend may build (elements).
REFERENCE_SCORE_LIMIT = 6e7
LAYOUTS = {"1.3B": 12, "14B": 40}  # heads of 128


@dataclass(frozen=True)
class OpCase:
    """One timed call: ``make()`` builds the inputs (once per shape group) and returns the call."""

    op: str
    impl: str
    layout: str
    shape: str
    dtype: str
    work: float  # bytes moved (GB/s) or floating point operations (TFLOP/s)
    unit: str
    baseline: str  # the impl of the same op and layout the speedup is measured against
    make: Callable[[], Callable]

    @property
    def id(self) -> str:
        return f"{self.op}[{self.layout}]-{self.impl}"

    def info(self) -> dict:
        """What a pytest-benchmark row keeps (extra_info) to rebuild the run.py row."""
        return dict(op=self.op, impl=self.impl, layout=self.layout, shape=self.shape, dtype=self.dtype,
                    work=self.work, unit=self.unit, baseline=self.baseline)


def backends(op: str, device: torch.device) -> list[str]:
    """Backends to time. The Triton interpreter on a CPU is a correctness path, not a speed."""
    return [b for b in ops.available_backends(op, device.type) if not (b == "triton" and device.type == "cpu")]


def layouts(device: torch.device, quick: bool) -> list[str]:
    """Both head layouts on a GPU; the 1.3B one on a CPU and in quick runs."""
    return list(LAYOUTS) if device.type == "cuda" and not quick else ["1.3B"]


def shapes(device: torch.device, quick: bool, heads: int = 12) -> dict:
    """Wan 480x832 chunk: 3 frames x 30x52 tokens, heads x 128. CPU attention is reduced."""
    if quick:
        return dict(frames=3, grid=(6, 10), heads=4, head_dim=128, resident=12, attn_grid=(6, 10))
    attn_grid = (30, 52) if device.type == "cuda" else (15, 26)
    return dict(frames=3, grid=(30, 52), heads=heads, head_dim=128, resident=12, attn_grid=attn_grid)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


@functools.lru_cache(maxsize=4)
def _rope_inputs(device, dtype, quick, layout):
    s = shapes(device, quick, LAYOUTS[layout])
    (gh, gw), nf, h, d = s["grid"], s["frames"], s["heads"], s["head_dim"]
    t, tpf = nf * gh * gw, gh * gw
    first = 60  # a chunk in the middle of a long video: the ring is full and wrapping
    qkv = torch.randn(1, t, 3, h, d, device=device, dtype=dtype)  # one projection: strided q, k, v
    sink, window = 3, 9
    ring = RingKVCache(1, h, d, tpf, sink, window, dtype=dtype, device=device)
    shifting = upstream.ShiftingCache(1, h, d, tpf, sink, window, dtype, device)
    q, k, v = qkv.unbind(2)
    for f in range(0, sink + window, nf):
        shifting.write(k[:, : nf * tpf], v[:, : nf * tpf], f)
    rope = Rope3D.for_wan(d, "flex", length=480)
    return dict(
        x=torch.randn(1, t, h, d, device=device, dtype=dtype), q=q, k=k, v=v, gh=gh, gw=gw, nf=nf, first=first,
        tables=rope.tables(first, nf, gh, gw, device=device),
        head_tables=jittered(rope, jitter_factors(h, d, 0.8, 0)).tables(first, nf, gh, gw, device=device),
        table=upstream.rope_table(d, device), ring=ring, slots=ring.slots(first, nf), shifting=shifting,
        wq=torch.rand(h * d, device=device, dtype=dtype) + 0.5, wk=torch.rand(h * d, device=device, dtype=dtype) + 0.5,
        shape=f"[1, {t}, {h}, {d}]", sink=sink, window=window,
    )


def rope_cases(device, dtype, quick, layout="1.3B") -> list[OpCase]:
    """rope3d alone, then the fused norm + RoPE + cache write of q, k, v."""
    s = shapes(device, quick, LAYOUTS[layout])
    t = s["frames"] * s["grid"][0] * s["grid"][1]
    elem = torch.empty((), dtype=dtype).element_size()
    x_bytes = t * s["heads"] * s["head_dim"] * elem
    inputs = functools.partial(_rope_inputs, device, dtype, quick, layout)
    shape = f"[1, {t}, {s['heads']}, {s['head_dim']}]"
    case = functools.partial(OpCase, layout=layout, shape=shape, dtype=_dtype_name(dtype))
    base = "upstream (float64 complex)"

    def upstream_rope():
        i = inputs()
        return lambda: upstream.rope_apply(i["x"], i["table"], i["nf"], i["gh"], i["gw"], i["first"])

    def flex_rope(name):
        i = inputs()
        return lambda: ops.rope3d(i["x"], *i["tables"], i["gh"], i["gw"], 0, backend=name)

    cases = [case(op="rope3d", impl=base, work=2 * x_bytes, unit="GB/s", baseline=base, make=upstream_rope)]
    cases += [case(op="rope3d", impl=name, work=2 * x_bytes, unit="GB/s", baseline=base,
                   make=functools.partial(flex_rope, name)) for name in backends("rope3d", device)]

    # Fused: q, k, v from one qkv projection (strided), norms over H*D, write into the ring.
    nbytes = 6 * x_bytes + 2 * s["heads"] * s["head_dim"] * elem
    base = "upstream (norms + complex RoPE + shift copy)"

    def upstream_nrc():
        i = inputs()
        # As in generation, every 5th call (4 denoising passes + the clean pass) starts a new chunk.
        frame = (i["sink"] + i["window"] + i["nf"] * (n // 5) for n in itertools.count())
        return lambda: upstream.self_attention_inputs(i["q"], i["k"], i["v"], i["wq"], i["wk"], i["table"],
                                                      i["shifting"], i["nf"], i["gh"], i["gw"], next(frame))

    def flex_nrc(name, per_head=False):
        i = inputs()
        tables = i["head_tables" if per_head else "tables"]
        return lambda: ops.norm_rope_cache_write(i["q"], i["k"], i["v"], i["wq"], i["wk"], 1e-6, *tables, i["gh"],
                                                 i["gw"], 0, i["ring"].k, i["ring"].v, i["slots"], backend=name)

    op = "norm_rope_cache_write"
    cases.append(case(op=op, impl=base, work=nbytes, unit="GB/s", baseline=base, make=upstream_nrc))
    for name, per_head in itertools.product(backends(op, device), (False, True)):
        cases.append(case(op=op, impl=name + (PER_HEAD if per_head else ""), work=nbytes, unit="GB/s", baseline=base,
                          make=functools.partial(flex_nrc, name, per_head)))
    return cases


def flex_attention_call(q, ring: RingKVCache, scale=None):
    """torch's flex_attention (compiled) over the whole ring with the per-slot frame mask.

    Returns a no-argument callable, or the reason it cannot run here.
    """
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError as err:
        return f"torch.nn.attention.flex_attention not importable: {err}"
    slot_frame, tpf = ring.slot_frame, ring.tokens_per_frame

    def resident(b, h, q_idx, kv_idx):
        return slot_frame[kv_idx // tpf] >= 0

    try:
        mask = create_block_mask(resident, None, None, q.shape[1], ring.k.shape[1], device=q.device)
        attend = torch.compile(flex_attention, dynamic=False)
        qt, kt, vt = q.transpose(1, 2), ring.k.transpose(1, 2), ring.v.transpose(1, 2)
        call = lambda: attend(qt, kt, vt, block_mask=mask, scale=scale).transpose(1, 2)  # noqa: E731
        call()  # compile now, outside the timing
    except Exception as err:  # noqa: BLE001 -- a missing compiler must not stop the other rows
        return f"flex_attention failed: {type(err).__name__}: {err}"[:300]
    return call


@functools.lru_cache(maxsize=4)
def _attention_inputs(device, dtype, quick, layout):
    s = shapes(device, quick, LAYOUTS[layout])
    (gh, gw), nf, h, d, resident = s["attn_grid"], s["frames"], s["heads"], s["head_dim"], s["resident"]
    tpf = gh * gw
    ring = RingKVCache(1, h, d, tpf, 3, resident - 3, dtype=dtype, device=device)
    for f in range(0, 60, nf):  # wrap the ring several times
        ring.write(torch.randn(1, nf * tpf, h, d, device=device, dtype=dtype),
                   torch.randn(1, nf * tpf, h, d, device=device, dtype=dtype), f)
    shifting = upstream.ShiftingCache(1, h, d, tpf, 3, resident - 3, dtype, device)
    shifting.k.copy_(ring.k)
    shifting.v.copy_(ring.v)
    rope = Rope3D.for_wan(d, "flex", length=480)
    slots = torch.arange(ring.n_slots, device=device)
    return dict(q=torch.randn(1, nf * tpf, h, d, device=device, dtype=dtype), ring=ring, shifting=shifting, tpf=tpf,
                first=60 - nf, gh=gh, gw=gw, key_table=rope.temporal_table(slots),
                head_key_table=jittered(rope, jitter_factors(h, d, 0.8, 0)).temporal_table(slots),
                table=upstream.rope_table(d, device))


def attention_cases(device, dtype, quick, layout="1.3B") -> list[OpCase]:
    """A chunk's queries over a full ring (sink 3 + window 9), plain and rotate-on-load."""
    s = shapes(device, quick, LAYOUTS[layout])
    (gh, gw), nf, h, d, resident = s["attn_grid"], s["frames"], s["heads"], s["head_dim"], s["resident"]
    tpf = gh * gw
    tq, tk = nf * tpf, resident * tpf
    inputs = functools.partial(_attention_inputs, device, dtype, quick, layout)
    flops = 4 * tq * tk * d * h
    case = functools.partial(OpCase, layout=layout, shape=f"q [1, {tq}, {h}, {d}] over {tk} keys",
                             dtype=_dtype_name(dtype), work=flops, unit="TFLOP/s")
    small = tq * tk * h <= REFERENCE_SCORE_LIMIT
    base = "upstream (SDPA over cache slice)"

    def upstream_attend():
        i = inputs()
        return lambda: i["shifting"].attend(i["q"], tk)

    def flex_attend(name, rotate, per_head=False):
        i, ring = inputs(), inputs()["ring"]
        key_table = i["head_key_table" if per_head else "key_table"]
        extra = dict(key_freqs_t=key_table) if rotate else dict(resident_tokens=ring.resident_prefix_tokens())
        return lambda: ops.ring_attention(i["q"], ring.k, ring.v, ring.slot_frame, tpf, i["first"], **extra, backend=name)

    def compiled_flex_attention():
        call = flex_attention_call(inputs()["q"], inputs()["ring"])
        if not callable(call):
            raise RuntimeError(call)
        return call

    op = "ring_attention"
    cases = [case(op=op, impl=base, baseline=base, make=upstream_attend)]
    names = [n for n in backends(op, device) if small or n != "reference"]
    cases += [case(op=op, impl=n, baseline=base, make=functools.partial(flex_attend, n, False)) for n in names]
    cases.append(case(op=op, impl="torch flex_attention (compiled, slot mask)", baseline=base,
                      make=compiled_flex_attention))

    # Rotate-on-load: keys cached without temporal rotation, positions re-indexed per chunk.
    def rerotate_then_sdpa():
        # What infinity-style windows do upstream: rotate the whole cache again, then attend.
        i = inputs()
        ring, q = i["ring"], i["q"]

        def call():
            k = upstream.rope_apply(ring.k, i["table"], ring.n_slots, gh, gw, 0)
            return torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), ring.v.transpose(1, 2)).transpose(1, 2)
        return call

    op, base = "ring_attention_rotate_on_load", "upstream (re-rotate cache + SDPA)"
    cases.append(case(op=op, impl=base, baseline=base, make=rerotate_then_sdpa))
    for name in names:
        try:
            ops.resolve_backend("ring_attention", name, device, key_freqs_t=torch.empty(0), dtype=dtype, head_dim=d)
        except ValueError:
            continue  # backend has no rotate-on-load (sdpa, flash)
        for per_head in (False, True):
            cases.append(case(op=op, impl=name + (PER_HEAD if per_head else ""), baseline=base,
                              make=functools.partial(flex_attend, name, True, per_head)))
    return cases


def all_cases(device, dtype, quick) -> list[OpCase]:
    """Every op case of a run: per head layout, the RoPE ops then attention."""
    out = []
    for layout in layouts(device, quick):
        out += rope_cases(device, dtype, quick, layout) + attention_cases(device, dtype, quick, layout)
    return out


def rows_from_benchmark_json(data: dict, roofline: dict) -> list[dict]:
    """run.py's op rows (median seconds, min-max, rate, share of roofline, speedup over the
    upstream-style baseline) from a pytest-benchmark JSON of benchmarks/test_ops.py."""
    timed = [(b["extra_info"], b["stats"]) for b in data.get("benchmarks", []) if "op" in b.get("extra_info", {})]
    median = {(i["op"], i["layout"], i["impl"]): s["median"] for i, s in timed}
    rows = []
    for info, stats in timed:
        seconds = stats["median"]
        gbps = info["unit"] == "GB/s"
        rate = info["work"] / seconds / (1e9 if gbps else 1e12)
        roof = roofline.get("copy_gbps" if gbps else "matmul_tflops")
        base = median.get((info["op"], info["layout"], info["baseline"]))
        rows.append(dict(op=info["op"], impl=info["impl"], layout=info["layout"], seconds=seconds,
                         seconds_min=stats["min"], seconds_max=stats["max"], rounds=stats["rounds"], rate=rate,
                         unit=info["unit"], roofline_fraction=rate / roof if roof else None, shape=info["shape"],
                         dtype=info["dtype"], speedup_vs_upstream=None if base is None else base / seconds))
    return rows
