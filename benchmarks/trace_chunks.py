"""``benchmarks/run.py --profile``: a torch.profiler trace of a few steady-state chunks.

The FLEX path (FLEX on, eager, so that every op shows) first streams until the ring is full
and wrapping, then PROFILE_CHUNKS chunks run under torch.profiler. Writes profile-trace.json
(open it in chrome://tracing or https://ui.perfetto.dev: on a GPU the kernels of every op and
the gaps between them) and profile-ops.txt (time per op, by self device time on a GPU).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from flex.config import FlexConfig
from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline

from . import e2e_suite
from .fps_methodology import PROFILE_CHUNKS
from .timing import sync


def profile(device: torch.device, dtype: torch.dtype, quick: bool, out: Path, chunks: int = PROFILE_CHUNKS) -> dict:
    """Trace ``chunks`` steady-state chunks; returns the files written and the device-busy share."""
    s = e2e_suite.setup(device, quick)
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWanModel(s["model"]).to(dtype).eval()
    with torch.no_grad():
        text = model.encode_text(torch.randn(1, s["model"].text_len, s["model"].text_dim, device=device, dtype=dtype))
    chunk = e2e_suite.CHUNK
    pipe = Pipeline(model, FlexConfig(sink_frames=e2e_suite.SINK, window_frames=e2e_suite.WINDOW, chunk_frames=chunk))
    warm_chunks = -(-(e2e_suite.SINK + e2e_suite.WINDOW) // chunk) + 1  # the ring is full and wraps
    stream = iter(pipe.stream(text, chunk * (warm_chunks + chunks), s["latent"],
                              generator=torch.Generator(device=device).manual_seed(0)))
    for _ in range(warm_chunks):
        next(stream)
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(chunks):
            next(stream)
        sync(device)
        wall = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    trace, table = out / "profile-trace.json", out / "profile-ops.txt"
    prof.export_chrome_trace(str(trace))
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table.write_text(averages.table(sort_by=sort, row_limit=30))
    result = dict(trace=trace.name, ops_table=table.name, chunks=chunks, wall_seconds=wall)
    if device.type == "cuda":  # the share of the wall time with a kernel running (1 - gaps)
        busy = sum(getattr(e, "self_device_time_total", 0.0) for e in averages) / 1e6
        result["device_busy_fraction"] = busy / wall
    return result
