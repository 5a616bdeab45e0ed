"""What an accelerated upstream ``CausalInferencePipeline`` does differently: its KV cache lists
and its initial noise. Its loop, scheduler, text encoder and VAE stay as they are.

* ``_initialize_kv_cache`` makes per-layer dicts that hold only upstream's two index tensors
  (upstream's loop resets them, LongLive's model fills them); the K/V live in the runtime's
  ring cache, sink + window frames per layer instead of upstream's 21-frame (or whole-video)
  buffers.
* ``inference(noise, ...)`` first turns each chunk's frames of ``noise`` into antiphase noise
  (:func:`flex.noise.antiphase` with the config's rho, chunks as upstream's loop cuts them)
  and tells the runtime the video length (which sets the RoPE scale S), then runs upstream's
  own ``inference``. Its re-noising between steps (``randn_like``) stays upstream's.
"""
from __future__ import annotations

import inspect

import torch

from ..noise import antiphase
from .runtime import Runtime
from .upstream import swap_attribute


def chunk_sizes(pipeline, noise_frames: int, has_initial_latent: bool) -> list[int]:
    """Frames of ``noise`` each chunk of upstream's loop takes, in order."""
    n = int(getattr(pipeline, "num_frame_per_block", 1))
    first = 1 if getattr(pipeline, "independent_first_frame", False) and not has_initial_latent else n
    sizes = [min(first, noise_frames)] if noise_frames else []
    while sum(sizes) < noise_frames:
        sizes.append(min(n, noise_frames - sum(sizes)))
    return sizes


def antiphase_chunks(noise: torch.Tensor, sizes: list[int], rho: float) -> torch.Tensor:
    """``noise`` [B, F, C, H, W] with each chunk's frames made antiphase (rho = 0: unchanged)."""
    if rho == 0.0:
        return noise
    return torch.cat(list(antiphase(part, rho) for part in noise.split(sizes, dim=1)), dim=1)


def patch_pipeline(pipeline, runtime: Runtime):
    """Swap the pipeline's cache lists and noise; returns the function that undoes it."""
    original = pipeline.inference
    signature = inspect.signature(original)
    layers = len(runtime.upstream.attentions)

    def initialize_kv_cache(batch_size, dtype, device, *args, **kwargs):
        pipeline.kv_cache1 = [
            {"global_end_index": torch.zeros(1, dtype=torch.long, device=device),
             "local_end_index": torch.zeros(1, dtype=torch.long, device=device)}
            for _ in range(layers)]

    def inference(noise, *args, **kwargs):
        bound = signature.bind(noise, *args, **kwargs)
        initial = bound.arguments.get("initial_latent")
        if not isinstance(noise, torch.Tensor) or noise.dim() != 5:
            raise ValueError(f"noise must be [B, F, C, H, W], got {getattr(noise, 'shape', type(noise).__name__)}")
        frames = noise.shape[1] + (initial.shape[1] if initial is not None else 0)
        runtime.num_frames = frames
        sizes = chunk_sizes(pipeline, noise.shape[1], initial is not None)
        bound.arguments["noise"] = antiphase_chunks(noise, sizes, runtime.config.rho)
        return original(*bound.args, **bound.kwargs)

    undos = [swap_attribute(pipeline, "_initialize_kv_cache", initialize_kv_cache),
             swap_attribute(pipeline, "inference", inference)]
    pipeline.kv_cache1 = None  # Self Forcing re-initialises its caches when this is None

    def undo():
        for u in undos:
            u()
        pipeline.kv_cache1 = None

    return undo


__all__ = ["antiphase_chunks", "chunk_sizes", "patch_pipeline"]
