"""What a prompt switch costs: the latency of the first chunk after a switch in each switch mode
(flex.switching.SWITCH_MODES), beside the steady-state chunk of the same stream, on a reduced
Wan model (dim 256, 2 heads of 128, 4 layers, an 8 x 8 latent: a few minutes on a busy 2-core CPU).

Each round runs one stream per mode, in turns, with LongLive's cache (sink 3 + window 9, chunks
of 3 frames): chunks before the switch give the steady state (the first ones, while the ring
fills, are skipped), the switch is requested once the ring is full, and the next chunk's time
includes the switch's work (the new prompt's cross-attention K/V, then the mode's re-cache).
Reported: median and min-max over rounds, and the switch chunk over the steady chunk of the
same stream (its min-max over rounds). Runs on one intra-op thread: on a shared, oversubscribed
CPU, two threads waiting on each other add more noise than they save.
"""
from __future__ import annotations

import statistics
import time

import torch

from benchmarks.timing import sync

MODES_AND_SINK = [(mode, True) for mode in ("none", "window", "all", "longlive", "flush", "cut")] + [("longlive", False)]
SWITCH_AT = 18  # the chunk at frame 18 starts with the new prompt (the ring is full from frame 12 on)


def _model(device, dtype, quick: bool):
    from flex.models.config import wan_config
    from flex.models.wan import CausalWanModel

    cfg = wan_config("wan2.1-t2v-1.3b", dim=256, ffn_dim=512, num_heads=2, num_layers=2 if quick else 4, text_len=32,
                     text_dim=64, freq_dim=64)
    torch.manual_seed(0)
    return CausalWanModel(cfg).to(device, dtype).eval()


def _one_stream(pipe, text, new_text, mode, global_sink, latent, device) -> tuple[list[float], float]:
    """(steady chunk seconds, switch chunk seconds) of one stream switching before frame SWITCH_AT."""
    stream = pipe.stream(text, SWITCH_AT + 3, latent, generator=torch.Generator().manual_seed(0),
                         recache=mode, global_sink=global_sink)
    steady, switched = [], None
    for chunk_index in range(SWITCH_AT // 3 + 1):
        if chunk_index == SWITCH_AT // 3:
            stream.switch(new_text)
        sync(device)
        t0 = time.perf_counter()
        next(stream)
        sync(device)
        seconds = time.perf_counter() - t0
        if chunk_index == SWITCH_AT // 3:
            switched = seconds
        elif chunk_index >= 4:  # the ring (sink + window) is full from the 4th chunk on
            steady.append(seconds)
    stream.close()
    return steady, switched


def run(device, dtype, quick: bool, rounds: int) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(device, dtype, quick, rounds)
    finally:
        torch.set_num_threads(threads)


def _run(device, dtype, quick: bool, rounds: int) -> list[dict]:
    from flex import FlexConfig
    from flex.pipeline import Pipeline

    model = _model(device, dtype, quick)
    cfg = FlexConfig(strategy="none", rho=0.0, l_train=240, sink_frames=3, window_frames=9, chunk_frames=3)
    pipe = Pipeline(model, cfg)
    latent = (4, 4) if quick else (8, 8)
    mcfg = model.config
    text, new_text = (torch.randn(1, 8, mcfg.text_dim, generator=torch.Generator().manual_seed(s)).to(device, dtype)
                      for s in (1, 2))
    _one_stream(pipe, text, new_text, "window", True, latent, device)  # warm-up
    times = {key: ([], []) for key in MODES_AND_SINK}
    for _ in range(rounds):
        for mode, global_sink in MODES_AND_SINK:
            steady, switched = _one_stream(pipe, text, new_text, mode, global_sink, latent, device)
            times[(mode, global_sink)][0].append(statistics.median(steady))
            times[(mode, global_sink)][1].append(switched)
    rows = []
    for (mode, global_sink), (steady, switched) in times.items():
        ratios = [b / a for a, b in zip(steady, switched)]
        rows.append(dict(mode=mode, global_sink=global_sink, steady_ms=_spread(steady), switch_ms=_spread(switched),
                         ratio=dict(median=statistics.median(ratios), min=min(ratios), max=max(ratios)),
                         model=dict(dim=mcfg.dim, heads=mcfg.num_heads, layers=mcfg.num_layers),
                         latent=list(latent), rounds=rounds))
    return rows


def _spread(seconds: list[float]) -> dict:
    ms = [1e3 * s for s in seconds]
    return dict(median=statistics.median(ms), min=min(ms), max=max(ms))


def table(rows: list[dict]) -> str:
    def cell(s):
        return f"{s['median']:.1f} ({s['min']:.1f}-{s['max']:.1f})"

    lines = ["| switch mode | global_sink | steady chunk, ms | first chunk after the switch, ms | switch / steady |",
             "|---|---|---|---|---|"]
    for r in rows:
        q = r["ratio"]
        lines.append(f"| {r['mode']} | {r['global_sink']} | {cell(r['steady_ms'])} | {cell(r['switch_ms'])} | "
                     f"{q['median']:.2f}x ({q['min']:.2f}-{q['max']:.2f}) |")
    return "\n".join(lines)
