"""Decode FPS of the two video decoders, and end-to-end video FPS with decode included.

A user's video FPS is that of generation *and* decode. Measured here, side by side:

* decode FPS (pixel frames per second, chunk by chunk) of the Wan2.1 VAE (diffusers'
  ``AutoencoderKLWan``) and of the tiny TAEHV decoder (``flex.decoders.tiny``), both with random
  weights (speed does not depend on their values);
* for each decoder, one stream of the FLEX path three ways, in turns: diffusion only, decode
  after each chunk in the loop (sequential: the rate is the harmonic sum of the two), and
  decode in a worker thread while the next chunk is generated (flex.decoders.worker: the rate
  can approach min(diffusion FPS, decode FPS)). The target is overlapped >= 0.9 x that min.

On a CPU both parts share the same cores, so overlap can only hide the decoder's idle time;
on a GPU the decoder runs on a side stream between the DiT's kernels.
"""
from __future__ import annotations

import statistics
import time

import torch

from flex.decoders.worker import DecodeWorker

from .interleave import interleaved, ratio

CHUNK = 3


def decoders(device, dtype, quick: bool) -> dict:
    """{label: decoder or a 'skipped: ...' note}: the Wan VAE (needs diffusers) and the tiny one."""
    from flex.decoders.tiny import TinyVAEDecoder, TinyWanDecoderNet
    from flex.decoders import WanVAEDecoder

    out = {}
    try:
        from diffusers import AutoencoderKLWan

        torch.manual_seed(0)
        small = dict(base_dim=8, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[]) if quick else {}
        out["Wan VAE"] = WanVAEDecoder(AutoencoderKLWan(**small).to(device, dtype).eval().requires_grad_(False))
    except ImportError as err:
        out["Wan VAE"] = f"skipped: diffusers not importable ({err})"
    torch.manual_seed(0)
    tiny_dtype = torch.float32 if device.type == "cpu" else dtype  # flex.decoders.load_decoder's rule
    out["tiny (TAEHV)"] = TinyVAEDecoder(TinyWanDecoderNet().to(device, tiny_dtype).eval().requires_grad_(False))
    return out


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_fps(decoder, latents: torch.Tensor, device) -> float:
    """Pixel frames per second of decoding ``latents`` chunk by chunk, after a one-chunk warm-up."""
    decoder.stream().decode(latents[:, :1])  # warm-up: allocator, kernel selection
    stream = decoder.stream()
    _sync(device)
    start = time.perf_counter()
    n = sum(stream.decode(latents[:, f:f + CHUNK]).shape[1] for f in range(0, latents.shape[1], CHUNK))
    _sync(device)
    return n / (time.perf_counter() - start)


def stream_with_decode(pipe, text, frames: int, latent, device, decoder, mode: str) -> float:
    """Seconds of one stream: ``mode`` "diffusion" (no decode), "sequential" or "overlapped"."""
    gen = torch.Generator(device=device).manual_seed(0)
    sink = []
    _sync(device)
    start = time.perf_counter()
    if mode == "diffusion":
        for _ in pipe.stream(text, frames, latent, generator=gen):
            pass
    else:
        with DecodeWorker(decoder.stream().decode, lambda f: sink.append(f.shape[0]),
                          threaded=mode == "overlapped") as worker:
            for chunk in pipe.stream(text, frames, latent, generator=gen):
                worker.submit(chunk)
    _sync(device)
    return time.perf_counter() - start


def run(device, dtype, quick: bool, rounds: int, pipe, text, latent, decode_latent_frames: dict,
        e2e_frames: dict) -> dict:
    """{"decoders": decode FPS per decoder, "e2e": video FPS with decode per decoder and mode}.

    ``decode_latent_frames[label]``: latent frames timed for decode FPS; ``e2e_frames[label]``:
    the stream length (latent frames) of the end-to-end runs, 0 to skip them.
    """
    rows, e2e = [], []
    for label, decoder in decoders(device, dtype, quick).items():
        if isinstance(decoder, str):
            rows.append(dict(decoder=label, note=decoder))
            continue
        n = decode_latent_frames.get(label, 0)
        latents = torch.randn(1, n, 16, *latent, device=device)
        fps = decode_fps(decoder, latents, device) if n else None
        rows.append(dict(decoder=label, latent_frames=n, video_frames=4 * n - 3 if n else 0, decode_fps=fps,
                         dtype=str(decoder.dtype).replace("torch.", "")))
        frames = e2e_frames.get(label, 0)
        if not frames:
            continue
        video = 4 * frames - 3
        runs = {mode: (lambda mode=mode: stream_with_decode(pipe, text, frames, latent, device, decoder, mode))
                for mode in ("diffusion", "sequential", "overlapped")}
        stream_with_decode(pipe, text, CHUNK * 2, latent, device, decoder, "overlapped")  # warm-up
        times = interleaved(runs, rounds)
        if any(not isinstance(t, list) for t in times.values()):
            e2e.append(dict(decoder=label, error="; ".join(f"{m}: {t}" for m, t in times.items()
                                                           if not isinstance(t, list))))
            continue
        fps_of = {m: video / statistics.median(t) for m, t in times.items()}
        bound = min(fps_of["diffusion"], fps) if fps else fps_of["diffusion"]
        e2e.append(dict(decoder=label, latent_frames=frames, video_frames=video, rounds=rounds,
                        diffusion_video_fps=fps_of["diffusion"], sequential_video_fps=fps_of["sequential"],
                        overlapped_video_fps=fps_of["overlapped"], decode_fps=fps,
                        overlap_vs_sequential=ratio(times["sequential"], times["overlapped"]),
                        overlapped_of_bound=fps_of["overlapped"] / bound))
    return dict(decoders=rows, e2e=e2e)
