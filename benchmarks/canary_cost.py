"""The cost of the first-use canaries (flex.canary) at the model's shapes.

Per op and backend: the plain call (canaries off), the first call of a process with the canary
(the kernel plus the float64 reference on its slice), and later calls with canaries on (a
verified variant is called directly). Part of ``benchmarks/run.py --suite ops``; alone:

    python benchmarks/canary_cost.py [--device cuda] [--quick]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from flex import canary, ops  # noqa: E402

from benchmarks import ops_suite  # noqa: E402
from benchmarks.timing import measure, sync  # noqa: E402


def _calls(device, dtype, quick):
    """{(op, backend): no-argument call} at the op suite's 1.3B shapes."""
    r = ops_suite._rope_inputs(device, dtype, quick, "1.3B")
    a = ops_suite._attention_inputs(device, dtype, quick, "1.3B")
    ring = a["ring"]
    make = {
        "rope3d": lambda b: lambda: ops.rope3d(r["x"], *r["tables"], r["gh"], r["gw"], 0, backend=b),
        "norm_rope_cache_write": lambda b: lambda: ops.norm_rope_cache_write(
            r["q"], r["k"], r["v"], r["wq"], r["wk"], 1e-6, *r["tables"], r["gh"], r["gw"], 0, r["ring"].k,
            r["ring"].v, r["slots"], backend=b),
        "ring_attention": lambda b: lambda: ops.ring_attention(
            a["q"], ring.k, ring.v, ring.slot_frame, a["tpf"], a["first"], resident_tokens=ring.resident_prefix_tokens(),
            backend=b),
    }
    return {(op, b): fn(b) for op, fn in make.items() for b in ops_suite.backends(op, device) if b != "reference"}


def _first_call(fn, device, repeats):
    """Median seconds of a process's first call with the canary on (verdicts forgotten each time)."""
    times = []
    for _ in range(repeats):
        canary.reset()
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int = 5) -> list[dict]:
    """Rows: op, backend, plain seconds, first call with the canary, later calls with it on."""
    rows = []
    saved = os.environ.get(canary.ENV)
    try:
        for (op, name), fn in _calls(device, dtype, quick).items():
            with canary.off():
                plain = measure(fn, device, repeats=repeats)
            os.environ[canary.ENV] = "1"
            first = _first_call(fn, device, repeats)
            later = measure(fn, device, repeats=repeats)
            rows.append(dict(op=op, backend=name, dtype=str(dtype).replace("torch.", ""), plain_seconds=plain,
                             first_call_seconds=first, first_call_extra_seconds=first - plain,
                             later_calls_ratio=later / plain))
    finally:
        canary.reset()
        if saved is None:
            os.environ.pop(canary.ENV, None)
        else:
            os.environ[canary.ENV] = saved
    return rows


def table(rows: list[dict]) -> list[list[str]]:
    out = [["op", "backend", "plain call", "first call with canary", "extra (once per process)", "later calls"]]
    for r in rows:
        out.append([r["op"], r["backend"], f"{r['plain_seconds'] * 1e3:.3f} ms", f"{r['first_call_seconds'] * 1e3:.3f} ms",
                    f"{r['first_call_extra_seconds'] * 1e3:.3f} ms", f"{r['later_calls_ratio']:.2f}x"])
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from benchmarks.run import default_dtype

    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype or default_dtype(device)]
    rows = run(device, dtype, args.quick)
    widths = [max(len(r[i]) for r in table(rows)) for i in range(6)]
    for r in table(rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
