"""Timers and roofline probes shared by the benchmark suites."""
from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, warmup: int = 2, repeats: int = 10, min_seconds: float = 0.0) -> float:
    """Median seconds of ``fn()`` after warm-up: CUDA events on GPU, perf_counter on CPU."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeats:
            break
    return statistics.median(times)


def copy_bandwidth(device: torch.device, mbytes: int = 256, repeats: int = 10) -> float:
    """Device copy bandwidth in GB/s, counting bytes read + written."""
    n = mbytes * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), device, repeats=repeats)
    return 2 * src.numel() * 4 / seconds / 1e9


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 4096, repeats: int = 10) -> float:
    """Dense matmul throughput in TFLOP/s at size n."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = measure(lambda: a @ b, device, repeats=repeats)
    return 2 * n**3 / seconds / 1e12
