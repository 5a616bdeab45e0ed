"""End-to-end FPS of the causal Wan model: upstream's own code, upstream + accelerate, the FLEX path.

The baseline is Self Forcing's real code (``upstream_repo``, benchmarks/upstream_real.py)
whenever it is available, unmodified and accelerated in place by flex.integrations; only
without it the upstream-style twin (benchmarks/upstream.py) stands in, and the notes say so.
Every path runs the same DiT weights (random: speed does not depend on their values) through
the Self Forcing schedule (chunk 3, 4 steps + the clean context pass) with sink 3 + window 9.
What is timed, warm-up, synchronisation and the FPS conversion: benchmarks/fps_methodology.py.
Decode (the Wan VAE and the tiny decoder) is measured by benchmarks/decode_suite.py.
"""
from __future__ import annotations

import os
import statistics
import threading
import time

import torch
from .progress import tqdm

from flex.config import FlexConfig
from flex.models.wan import CausalWanModel, wan_config
from flex.pipeline import Pipeline

from . import fps_methodology
from . import flashdreams_peer
from .flops import stream_flops
from .interleave import interleaved, ratio, spread_warning
from .upstream import MAX_POSITIONS, UpstreamStyleWan
from .upstream_real import RealUpstream

SINK, WINDOW, CHUNK = 3, 9, 3


def setup(device: torch.device, quick: bool) -> dict:
    """Model size, latent size and horizons (seconds of 16 fps video) per device."""
    if device.type == "cuda" and not quick:
        return dict(model=wan_config("wan2.1-t2v-1.3b"), latent=(60, 104), horizons=(5, 30, 60, 240))
    if quick:
        return dict(model=wan_config("tiny"), latent=(4, 6), horizons=(5, 30))
    # CPU default: head dim 128 like Wan, a reduced width/depth and a 16x28 latent (128x224 video).
    return dict(model=wan_config("tiny", dim=512, ffn_dim=1024, num_heads=4, num_layers=4, text_len=512,
                                 text_dim=4096, freq_dim=256), latent=(16, 28), horizons=(5, 30, 60, 240))


def latent_frames(seconds: int) -> int:
    """Latent frames of a video of ``seconds`` at 16 fps (4F - 3 pixel frames), whole chunks."""
    pixel = 16 * seconds
    f = (pixel + 3) // 4
    return CHUNK * round(f / CHUNK) if seconds != 5 else 21


class PeakMemory:
    """Peak memory of a run: the CUDA allocator's peak, or the process RSS peak sampled on CPU."""

    def __init__(self, device):
        self.device = device

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.base = self._rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())
            self.mb = self.peak / 2**20  # process RSS: model, caches, interpreter; it never shrinks


def run_stream(pipe: Pipeline, text, frames: int, latent, device, first_chunk: list | None = None) -> float:
    """Seconds to generate ``frames`` latent frames, streaming (chunks are not kept); the seconds
    to the first chunk are appended to ``first_chunk`` (benchmarks/fps_methodology.py)."""
    gen = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for i, _ in enumerate(pipe.stream(text, frames, latent, generator=gen)):
        if i == 0 and first_chunk is not None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_chunk.append(time.perf_counter() - start)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def fastest_options(device: torch.device) -> tuple[str, dict]:
    """The FLEX path's fastest Pipeline options on this device, and their label."""
    if device.type == "cuda":
        return "compile + CUDA graphs", dict(compile=True, cuda_graphs=True)
    return "compile, frozen weights", dict(compile="frozen")


def option_variants(device: torch.device) -> dict[str, dict]:
    """Pipeline options whose effect is reported separately (FLEX on, one horizon)."""
    variants = {"eager": {}, "compile": dict(compile=True)}
    if device.type == "cuda":
        variants["CUDA graphs"] = dict(cuda_graphs=True)
    label, fastest = fastest_options(device)
    variants[label] = fastest
    return variants


def warm_up(pipe: Pipeline, text, latent, device) -> float:
    """Seconds of a short stream that fills the ring: compiles / captures every pass variant."""
    frames = CHUNK * (-(-(SINK + WINDOW) // CHUNK) + 1)
    return run_path(pipe, text, frames, latent, device)


def _error(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"[:400]


PATH_KEYS = ("upstream", "accelerate", "off", "on", "fast")  # --paths names of the paths, in order
DEFAULT_HORIZONS = (5, 30)  # a CPU run's default (within 10 minutes); --full (and a GPU): 5, 30, 60, 240
PASSES_PER_CHUNK = 5  # 4 denoising steps + the clean context pass


def _row_numbers(frames: int, times: list[float], flops: float, matmul_tflops: float | None,
                 first_chunk: list[float]) -> dict:
    sec = statistics.median(times)
    tflops = flops / sec / 1e12
    steady = [fps_methodology.steady_fps(frames, t, CHUNK, c) for t, c in zip(times, first_chunk)]
    return dict(**fps_methodology.fps(frames, sec), wall_seconds=sec,
                wall_seconds_per_round=times, model_tflops=tflops,
                roofline_fraction=None if not matmul_tflops else tflops / matmul_tflops,
                first_chunk_seconds=statistics.median(first_chunk) if first_chunk else None,
                steady_video_fps=statistics.median(steady) if steady else None)


def run_path(pipe, text, frames: int, latent, device, first_chunk: list | None = None) -> float:
    """Seconds of one stream of a path: a FLEX Pipeline or upstream's real pipeline (whose loop
    reports no first chunk)."""
    if isinstance(pipe, RealUpstream):
        return pipe.run(frames, device)
    return run_stream(pipe, text, frames, latent, device, first_chunk)


def upstream_paths(repo, model, text, latent, flex_on: FlexConfig, flex_off: FlexConfig, notes: list) -> dict:
    """{"upstream": (label, path), "accelerate": ...}: the real code when ``repo`` imports, else the twin."""
    if repo is not None:
        try:
            return {"upstream": ("Self Forcing's code, FLEX off", RealUpstream(repo, model, text, latent, SINK, WINDOW,
                                                                               CHUNK)),
                    "accelerate": ("Self Forcing's code + accelerate, FLEX on",
                                   RealUpstream(repo, model, text, latent, SINK, WINDOW, CHUNK, flex_on))}
        except Exception as err:  # noqa: BLE001 -- say why, and fall back to the twin
            notes.append(f"the upstream code at {repo} could not be used ({_error(err)})")
    notes.append("baseline: the upstream-style twin (benchmarks/upstream.py), NOT Self Forcing's own code "
                 "(pass --upstream-repo PATH to a Self Forcing checkout); no accelerate row without it")
    return {"upstream": ("upstream-style, FLEX off", Pipeline(UpstreamStyleWan.sharing_weights_of(model).eval(),
                                                              flex_off))}


def run(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int, decode: bool = True,
        horizons: tuple[int, ...] | None = None, paths: tuple[str, ...] = PATH_KEYS,
        options: bool = True, on_progress=None, matmul_tflops: float | None = None, upstream_repo=None) -> dict:
    """{"rows": the path x horizon matrix, "options": compile / CUDA-graph variants, "notes": ...}.

    ``paths`` picks among upstream / upstream + accelerate / FLEX off / FLEX on / FLEX on with the
    fastest options (upstream: Self Forcing's code at ``upstream_repo``, else the twin);
    at every horizon they run in turns, ``repeats`` rounds, and every ratio is the median over
    rounds with its min and max (benchmarks/interleave.py). ``options=False`` skips the
    per-option table; ``on_progress(partial result)`` is called after every horizon (to save
    what was measured so far); ``matmul_tflops`` (the roofline measured in the same run) gives
    each row's achieved model FLOP/s as a fraction of it.
    """
    unknown = set(paths) - set(PATH_KEYS)
    if unknown or not paths:
        raise ValueError(f"paths must be a non-empty subset of {PATH_KEYS}, got {paths}")
    s = setup(device, quick)
    horizons = tuple(horizons or s["horizons"])
    torch.manual_seed(0)
    with torch.device(device):
        model = CausalWanModel(s["model"]).to(dtype).eval()
    text = torch.randn(1, s["model"].text_len, s["model"].text_dim, device=device, dtype=dtype)
    with torch.no_grad():
        text_cache = model.encode_text(text)  # excluded from timing
    flex_on = FlexConfig(sink_frames=SINK, window_frames=WINDOW, chunk_frames=CHUNK)
    flex_off = FlexConfig.off(window_frames=WINDOW, chunk_frames=CHUNK).replace(sink_frames=SINK)
    fast_label, fast = fastest_options(device)
    eager_on, fast_on = Pipeline(model, flex_on), Pipeline(model, flex_on, **fast)
    notes = []
    every_path = {
        **upstream_paths(upstream_repo if {"upstream", "accelerate"} & set(paths) else None, model, text,
                         s["latent"], flex_on, flex_off, notes),
        "off": ("FLEX path, FLEX off", Pipeline(model, flex_off)),
        "on": ("FLEX path, FLEX on", eager_on),
        "fast": (f"FLEX path, FLEX on, {fast_label}", fast_on),
    }
    paths = dict(every_path[k] for k in PATH_KEYS if k in paths and k in every_path)
    variants = {}
    if options:
        for label, opts in option_variants(device).items():
            variants[label] = eager_on if not opts else fast_on if opts == fast else Pipeline(model, flex_on, **opts)
    # Warm-up (kernel selection, allocator, compilation, graph capture) outside the timings.
    warm, failed = {}, {}
    paths_base = every_path["upstream"][0] if every_path["upstream"][0] in paths else None  # the baseline column

    def prompt(name):  # upstream embeds the prompt inside every pass; the FLEX paths did it above
        return text if name.startswith("upstream") else text_cache

    for name, pipe in {**paths, **{f"option {k}": v for k, v in variants.items()}}.items():
        if id(pipe) in warm or id(pipe) in failed:
            continue
        try:
            warm[id(pipe)] = warm_up(pipe, prompt(name), s["latent"], device)
        except Exception as err:  # noqa: BLE001 -- an option failing must not lose the other numbers
            failed[id(pipe)] = _error(err)
    rows, option_rows = [], []
    notes += ["text encoding (T5) excluded; the FLEX paths compute the prompt's cross-attention K/V once before "
             "timing, the upstream-style path embeds the prompt in every pass and computes them in its first "
             "pass, as upstream does",
             "warm-up (compilation, CUDA-graph capture) is excluded from FPS and reported as warmup_seconds",
             "upstream's paths run eagerly, as the upstream code ships",
             f"paths run in turns, {repeats} round(s) per horizon; FPS from the median round, ratios as the median "
             f"of the per-round ratios (min-max in brackets)",
             "model TFLOP/s counts the DiT's matmuls (benchmarks/flops.py), of roofline = against the matmul "
             "measured in this run"]
    progress = on_progress or (lambda partial: None)
    model_desc = f"dim {s['model'].dim}, {s['model'].num_layers} layers, {s['model'].num_heads}x{s['model'].head_dim}"
    tpf = (s["latent"][0] // 2) * (s["latent"][1] // 2)
    bar = tqdm(total=sum(latent_frames(h) for h in horizons) * len(paths) * repeats, unit="frame",
               desc="end to end", leave=False)

    def timed(name, pipe, frames, mem, first_chunk):
        def once():
            with PeakMemory(device) as m:
                sec = run_path(pipe, prompt(name), frames, s["latent"], device, first_chunk)
            mem.append(m.mb)
            bar.update(frames)
            return sec
        return once

    for seconds in horizons:
        frames = latent_frames(seconds)
        flops = stream_flops(s["model"], tpf, frames, CHUNK, SINK, WINDOW, PASSES_PER_CHUNK)
        base_row = dict(seconds_of_video=seconds, latent_frames=frames, video_frames=4 * frames - 3,
                        model=model_desc, latent_size=list(s["latent"]), sink_frames=SINK, window_frames=WINDOW,
                        model_tflop_per_stream=flops / 1e12)
        runs, mems, firsts = {}, {}, {}
        for name, pipe in paths.items():
            if name.startswith(("upstream", "Self Forcing")) and frames > MAX_POSITIONS:
                continue  # upstream's 1024-position RoPE table cannot go there
            if id(pipe) in failed:
                rows.append(dict(base_row, path=name, error=failed[id(pipe)]))
                continue
            mems[name], firsts[name] = [], []
            runs[name] = timed(name, pipe, frames, mems[name], firsts[name])
        times = interleaved(runs, repeats)
        base = next((t for n, t in times.items() if n == paths_base and isinstance(t, list)), None)
        for name, t in times.items():
            if not isinstance(t, list):
                rows.append(dict(base_row, path=name, error=_error(t)))
                continue
            speed = None if base is None else ratio(base, t)
            rows.append(dict(base_row, path=name, **_row_numbers(frames, t, flops, matmul_tflops, firsts[name]),
                             peak_memory_mb=max(mems[name]), warmup_seconds=warm[id(paths[name])],
                             speedup_vs_upstream=None if speed is None else speed["median"], speedup_stats=speed))
            if speed is not None and speed["wide"]:
                notes.append(spread_warning(f"{name} vs upstream at {seconds} s", speed))
        rows.append(flashdreams_peer.skipped_row(base_row))
        progress(dict(rows=rows, options=option_rows, notes=notes))
    bar.close()

    # Compile / CUDA-graph options of the FLEX path, one horizon, ratios against eager (in turns).
    seconds = horizons[1] if len(horizons) > 1 else horizons[0]
    frames = latent_frames(seconds)
    runs = {}
    for label, pipe in variants.items():
        if id(pipe) in failed:
            option_rows.append(dict(option=label, seconds_of_video=seconds, latent_frames=frames,
                                    error=failed[id(pipe)]))
            continue
        runs[label] = lambda pipe=pipe: run_stream(pipe, text_cache, frames, s["latent"], device)
    times = interleaved(runs, repeats) if runs else {}
    eager = times.get("eager") if isinstance(times.get("eager"), list) else None
    for label, t in times.items():
        row = dict(option=label, seconds_of_video=seconds, latent_frames=frames)
        if not isinstance(t, list):
            option_rows.append(dict(row, error=_error(t)))
            continue
        speed = None if eager is None else ratio(eager, t)
        sec = statistics.median(t)
        option_rows.append(dict(row, latent_fps=frames / sec, video_fps=(4 * frames - 3) / sec,
                                warmup_seconds=warm[id(variants[label])],
                                speedup_vs_eager=None if speed is None else speed["median"], speedup_stats=speed))
    decoding = {}
    if decode:
        from . import decode_suite

        pipe = fast_on if id(fast_on) not in failed else eager_on
        wan_e2e = 0 if device.type == "cpu" and not quick else latent_frames(5)  # see the note below
        decoding = decode_suite.run(device, dtype, quick, repeats, pipe, text_cache, s["latent"],
                                    decode_latent_frames={"Wan VAE": 3 if not quick else 6,
                                                          "tiny (TAEHV)": 6 if not quick else 6},
                                    e2e_frames={"Wan VAE": wan_e2e, "tiny (TAEHV)": latent_frames(5)
                                                if not quick else 6})
        if not wan_e2e:
            notes.append("end to end with the Wan VAE is not run on a CPU by default: it decodes about a frame a "
                         "second or less there, so a 5 s video would take minutes per run; its decode FPS is "
                         "measured, and the tiny decoder is run end to end")
    return dict(rows=rows, options=option_rows, notes=notes, decode=decoding)
