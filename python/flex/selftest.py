"""``flex selftest``: every op on every available backend against the float64 reference.

    python -m flex.selftest                      # this machine's default device and dtype
    python -m flex.selftest --device cuda --dtype bf16
    python -m flex.selftest --quick              # small grids: seconds

Each op runs at the model's head layouts (1.3B: 12 heads x 128, 14B: 40 heads x 128) on the
480x832 frame grid (30x52 tokens per latent frame), against a ring cache with sink and window
frames that has wrapped. A GPU runs whole chunks (3 frames, sink 3 + window 9); a CPU runs
1-frame chunks over 3 slots (sink 1 + window 2) and computes the float64 attention reference
for 256 of each frame's 1560 queries (the first and last 128) to stay within minutes, and
Triton there runs in its interpreter (TRITON_INTERPRET=1), so its rows use a small grid (the
table says so).
Then the first chunk (4 denoising passes and the clean pass) of a tiny random model runs in
the chosen dtype against the same model in float64. Errors are max |out - ref| / max |ref|
(flex.tolerance). Prints one table; exit status 0 when every row passes, 1 otherwise.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import torch

from . import canary, ops, reference
from .cache import RingKVCache
from .methods.position_methods import jitter_factors, jittered
from .models import CausalWanModel
from .ops import BACKENDS
from .rope import Rope3D, head_rows
from .tolerance import relative_error, tolerance

DTYPES = ("fp32", "fp16", "bf16")
LAYOUTS = {"1.3B": (12, 128), "14B": (40, 128)}  # model: (heads, head_dim)
STEP_TIMESTEPS = (1000.0, 937.5, 833.33, 625.0, 0.0)  # Self Forcing's 4 steps, then the clean pass
# Largest float64 score block the attention reference builds at once (elements).
REFERENCE_BLOCK = 2**24


@dataclass(frozen=True)
class Setting:
    """Where the ops run: the frame grid, chunk and ring (sink + window frames), first frame."""

    grid: tuple[int, int]
    frames: int
    sink: int
    window: int
    first: int
    note: str = ""
    rows_per_frame: int | None = None  # query rows per frame the attention reference computes (None: all)

    def describe(self, heads, head_dim) -> str:
        gh, gw = self.grid
        return (f"{heads}x{head_dim}, {self.frames}x{gh}x{gw} tok, ring {self.sink}+{self.window}@{self.first}"
                + (f" ({self.note})" if self.note else ""))


def settings(device_type: str, quick: bool) -> tuple[Setting, Setting]:
    """(the setting of the compiled backends, the one of Triton's CPU interpreter)."""
    interp = Setting((2, 3) if quick else (5, 7), 1, 1, 2, 10, "Triton interpreter: small grid")
    if quick:
        return Setting((6, 10), 1, 1, 2, 10), interp
    if device_type == "cuda":
        full = Setting((30, 52), 3, 3, 9, 60)
        return full, full
    cpu = Setting((30, 52), 1, 1, 2, 10, "CPU: 1-frame chunk; attention ref on 256 q/frame", rows_per_frame=256)
    return cpu, interp


# ------------------------------------------------------------------------------------ the cases


def _randn(shape, dtype, device, gen):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device, dtype)


def _op_inputs(s: Setting, heads, head_dim, dtype, device, seed=0):
    """A chunk's q, k, v (slices of one fused projection), norm weights, RoPE tables and a ring
    cache filled through the real write schedule up to the chunk (which is resident too)."""
    gen = torch.Generator().manual_seed(seed)
    gh, gw = s.grid
    tpf = gh * gw
    t = s.frames * tpf
    qkv = _randn((1, t, 3, heads, head_dim), dtype, device, gen)
    rope = Rope3D.for_wan(head_dim, "flex", length=480)
    # LoL's multi-head jitter: a temporal table per head ([N, H, C_t, 2]).
    jitter = jittered(rope, jitter_factors(heads, head_dim, 0.8, 0))
    ring = RingKVCache(1, heads, head_dim, tpf, s.sink, s.window, dtype=dtype, device=device)
    for f in range(0, s.first + s.frames, s.frames):
        n = min(s.frames, s.first + s.frames - f)
        ring.write(_randn((1, n * tpf, heads, head_dim), dtype, device, gen),
                   _randn((1, n * tpf, heads, head_dim), dtype, device, gen), f)
    slot_positions = torch.arange(ring.n_slots, device=device, dtype=torch.float64)
    return dict(
        q=qkv[:, :, 0], k=qkv[:, :, 1], v=qkv[:, :, 2],
        wq=(torch.rand(heads * head_dim, generator=gen) + 0.5).to(device, dtype),
        wk=(torch.rand(heads * head_dim, generator=gen) + 0.5).to(device, dtype),
        tables=rope.tables(s.first, s.frames, gh, gw, device=device),
        key_table=rope.temporal_table(slot_positions),
        head_table=jitter.tables(s.first, s.frames, gh, gw, device=device)[0],
        head_key_table=jitter.temporal_table(slot_positions),
        ring=ring, slots=ring.slots(s.first, s.frames), tpf=tpf, grid=(gh, gw), first=s.first,
        rows_per_frame=s.rows_per_frame,
    )


def _reference_rows(n_queries: int, tpf: int, per_frame: int | None) -> list[range]:
    """Per chunk frame, the query rows the attention reference computes: all of them, or the
    first and last ``per_frame // 2`` (tile starts and the ragged tail of every frame)."""
    frames = [range(f * tpf, (f + 1) * tpf) for f in range(n_queries // tpf)]
    if per_frame is None or per_frame >= tpf:
        return frames
    half = per_frame // 2
    return [range(r.start, r.start + half) for r in frames] + [range(r.stop - half, r.stop) for r in frames]


def _blocks(rows, heads: int, n_keys: int):
    """(rows, head slice) blocks whose float64 score matrix stays within REFERENCE_BLOCK elements."""
    for r in rows:
        group = max(1, REFERENCE_BLOCK // (len(r) * n_keys))
        for h0 in range(0, heads, group):
            yield r, slice(h0, h0 + group)


def _attention_reference(q, k, v, slot_frame, tpf, first, chunk_frames, scale, key_table, rows):
    """flex.reference.ring_attention on the given query rows (each within one frame, whose chunk
    starts where block-causal order says), block by block (heads are independent): the
    flattened (out, lse) of those rows."""
    outs, lses = [], []
    for r, h in _blocks(rows, q.shape[2], k.shape[1]):
        frame = r.start // tpf
        q_first = first + (frame // chunk_frames) * chunk_frames if chunk_frames else first
        out, lse = reference.ring_attention(q[:, r.start:r.stop, h], k[:, :, h], v[:, :, h], slot_frame, tpf,
                                            q_first, chunk_frames, scale, head_rows(key_table, h), True)
        outs.append(out.flatten())
        lses.append(lse.flatten())
    return torch.cat(outs), torch.cat(lses)


def _pick(out, lse, rows, n_keys):
    """The backend's (out, lse) at the reference's rows, flattened in the same order."""
    blocks = list(_blocks(rows, out.shape[2], n_keys))
    picked = torch.cat([out[:, r.start:r.stop, h].flatten() for r, h in blocks])
    if lse is None:
        return picked
    return picked, torch.cat([lse[:, h, r.start:r.stop].flatten() for r, h in blocks])


def _cases(x):
    """(op label, call description, run(backend), reference()) for one set of inputs."""
    q, k, v, ring, tpf, (gh, gw), first = x["q"], x["k"], x["v"], x["ring"], x["tpf"], x["grid"], x["first"]
    ft, fh, fw = x["tables"]
    cases = [("rope3d", {}, lambda b: ops.rope3d(q, ft, fh, fw, gh, gw, 0, backend=b),
              lambda: reference.rope3d(q, ft, fh, fw, gh, gw))]
    for label, rotate, table in (("", True, ft), (" (keys unrotated)", False, ft),
                                 (" (per-head tables)", True, x["head_table"])):
        def nrc(b, rotate=rotate, table=table):  # on fresh copies of the caches: (q out, k cache, v cache)
            kc, vc = ring.k.clone(), ring.v.clone()
            out = ops.norm_rope_cache_write(q, k, v, x["wq"], x["wk"], 1e-6, table, fh, fw, gh, gw, 0, kc, vc,
                                            x["slots"], rotate, backend=b)
            return out, kc, vc

        cases.append(("norm_rope_cache_write" + label, {}, nrc, lambda f=nrc: f("reference")))
    scale = q.shape[-1] ** -0.5
    rows = _reference_rows(q.shape[1], tpf, x["rows_per_frame"])
    # Block-causal: the queries sit one frame back with 1-frame chunks, so that the newest
    # resident frame is masked for the whole chunk and each later frame of it for the earlier.
    for variant, extra, q_first in (
            ("window", dict(resident_tokens=ring.resident_prefix_tokens()), first),
            ("block-causal + lse", dict(chunk_frames=1, return_lse=True), first - 1),
            ("rotate-on-load", dict(key_freqs_t=x["key_table"]), first),
            ("rotate-on-load, per-head tables", dict(key_freqs_t=x["head_key_table"]), first)):
        def attend(b, e=extra, q_first=q_first):
            res = ops.ring_attention(q, ring.k, ring.v, ring.slot_frame, tpf, q_first, scale=scale, **e, backend=b)
            out, lse = res if e.get("return_lse") else (res, None)
            return _pick(out, lse, rows, ring.k.shape[1])

        def ref(e=extra, q_first=q_first):
            out, lse = _attention_reference(q, ring.k, ring.v, ring.slot_frame, tpf, q_first,
                                            e.get("chunk_frames", 0), scale, e.get("key_freqs_t"), rows)
            return (out, lse) if e.get("return_lse") else out

        cases.append((f"ring_attention ({variant})", extra, attend, ref))
    return cases


def _error(out, ref) -> float:
    if isinstance(ref, tuple):
        return max(relative_error(o, r) for o, r in zip(out, ref))
    return relative_error(out, ref)


def _backends(device, full: Setting, interp: Setting, setting: Setting, only=None) -> list[str]:
    """The backends (not the reference) that run at ``setting``: Triton alone runs at the
    interpreter's setting when it differs from the compiled backends' one."""
    names = [b for b in ops.BACKENDS if b != "reference" and ops.backend_status(b)[0] and (not only or b in only)]
    if full is interp:
        return names
    return [b for b in names if (b == "triton") == (setting is interp)]


def op_rows(device, dtype, quick: bool, only=None) -> list[tuple]:
    """Rows (op, backend, shape, error or None, tolerance, ok or None, note) of every op case."""
    full, interp = settings(device.type, quick)
    tol = tolerance(dtype)
    rows = []
    for model, (heads, head_dim) in LAYOUTS.items():
        for setting in dict.fromkeys((full, interp)):
            names = _backends(device, full, interp, setting, only)
            if quick and setting is interp and interp is not full and model != "1.3B":
                continue  # the interpreter is slow: a quick run interprets one head layout
            if not names:
                continue
            x = _op_inputs(setting, heads, head_dim, dtype, device)
            shape = f"{model} " + setting.describe(heads, head_dim)
            for label, call, run, ref_fn in _cases(x):
                op = label.split()[0]
                usable = []
                for name in names:
                    try:
                        ops.resolve_backend(op, name, device, dtype=dtype, head_dim=head_dim, **call)
                        usable.append(name)
                    except ValueError:
                        pass  # the backend does not take this call (e.g. sdpa with a mask)
                if not usable:
                    continue
                ref = ref_fn()
                for name in usable:
                    if name == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
                        rows.append((label, name, shape, None, tol, None,
                                     "skipped: the Triton interpreter cannot compute in bf16"))
                        continue
                    try:
                        out = run(name)
                        if device.type == "cuda":
                            torch.cuda.synchronize(device)
                        err, note = _error(out, ref), ""
                    except Exception as exc:  # noqa: BLE001 -- a crashing kernel is a failed row
                        err, note = float("inf"), f"{type(exc).__name__}: {exc}"[:120]
                    rows.append((label, name, shape, err, tol, err <= tol, note))
    return rows


# Model tolerance: max |out - ref| / max |ref| of the flow prediction after a whole (tiny) model.
MODEL_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "bf16": 5e-2}


def model_rows(device, dtype_name: str, only=None) -> list[tuple]:
    """The first chunk (4 denoising passes, then the clean pass) of a tiny random model in the
    chosen dtype, per backend, against the same weights in float64 on the reference backend."""
    dtype = _torch_dtype(dtype_name)
    torch.manual_seed(0)
    model64 = CausalWanModel("tiny").to(torch.float64)
    model = CausalWanModel("tiny").to(device, dtype)
    model.load_state_dict(model64.state_dict())
    gen = torch.Generator().manual_seed(1)
    text = torch.randn(1, 5, model.config.text_dim, generator=gen, dtype=torch.float64)
    x = torch.randn(1, 3, model.config.in_dim, 4, 6, generator=gen, dtype=torch.float64)

    def chunk(m, backend):
        text_kv = m.encode_text(text.to(m.device, m.param_dtype))
        cache = m.new_cache(1, 2, 3, sink_frames=3, window_frames=3)
        xs = x.to(m.device, m.param_dtype)
        return torch.stack([m(xs, t, text_kv, cache, 0, backend=backend).double().cpu() for t in STEP_TIMESTEPS])

    ref = chunk(model64, "reference")
    shape = f"tiny model ({model.num_heads}x{model.head_dim}, {model.num_layers} layers), first chunk 3x2x3"
    tol = MODEL_TOLERANCE[dtype_name]
    rows = []
    names = ["auto"] + [b for b in ops.available_backends("norm_rope_cache_write", device.type) if b != "reference"]
    names = [b for b in names if not only or b in only]
    for name in names:
        if name == "triton" and device.type == "cpu" and dtype == torch.bfloat16:
            continue
        try:
            err, note = _error(chunk(model, name), ref), ""
        except Exception as exc:  # noqa: BLE001
            err, note = float("inf"), f"{type(exc).__name__}: {exc}"[:120]
        rows.append(("model first chunk vs float64", name, shape, err, tol, err <= tol, note))
    return rows


# ----------------------------------------------------------------------------------- the command


def _torch_dtype(name: str):
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def format_table(rows) -> str:
    header = ("op", "backend", "shape", "max error", "tolerance", "ok")
    body = [(op, b, shape, "-" if err is None else f"{err:.2e}", f"{tol:.0e}",
             ("skip" if ok is None else "ok" if ok else "FAIL") + (f"  {note}" if note else ""))
            for op, b, shape, err, tol, ok, note in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def add_parser(subparsers) -> None:
    """Add the ``selftest`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser("selftest", help="check every kernel on this machine against the float64 reference",
                              description=__doc__.split("\n\n")[0] + ".",
                              epilog="exit status: 0 every check passed, 1 a check failed")
    _add_arguments(p)
    p.set_defaults(run=run)


def _add_arguments(p) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: bf16 on a GPU, fp32 on a CPU")
    p.add_argument("--quick", action="store_true", help="small grids (seconds): a smoke check, not the real shapes")
    p.add_argument("--backends", type=_backend_list, default=None, metavar="NAME,...",
                   help="check only these backends (default: every available one)")


def _backend_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names or set(names) - set(BACKENDS):
        raise argparse.ArgumentTypeError(f"must be a comma-separated subset of {','.join(BACKENDS)}, got {text!r}")
    return names


def run(args) -> int:
    """Run the checks, print the table; 0 when every row passes, 1 otherwise."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("flex selftest: --device cuda: no CUDA device is available", file=sys.stderr)
        return 1
    if device.type == "cpu" and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # Triton's kernels through its CPU interpreter
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    start = time.perf_counter()
    with canary.off():  # the kernels themselves, no fallback
        rows = (op_rows(device, _torch_dtype(dtype_name), args.quick, args.backends)
                + model_rows(device, dtype_name, args.backends))
    print(f"flex selftest on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{dtype_name}; error = max |out - ref| / max |ref| against float64")
    print(format_table(rows))
    failed = [r for r in rows if r[5] is False]
    print(f"{len(rows) - len(failed)} of {len(rows)} rows passed or skipped, {len(failed)} failed, "
          f"in {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m flex.selftest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
