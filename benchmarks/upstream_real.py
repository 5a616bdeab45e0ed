"""The real Self Forcing code as end-to-end paths: upstream as shipped, and upstream + accelerate.

:class:`RealUpstream` builds upstream's own ``CausalInferencePipeline`` (from the repository
given by ``--upstream-repo``, by default ``../shared/upstream/self-forcing``) on the weights of
the benchmark's FLEX model and times its ``inference`` (noise in, latents out). With a
FlexConfig it is accelerated in place first (:func:`flex.integrations.accelerate`).

What differs from a user's run of upstream, and why:

* attention: upstream calls flash-attn (not installable here; its cross-attention needs it);
  both paths use plain SDPA in the inputs' dtype instead (benchmarks/upstream_code.py).
  Upstream's own fallback would cast fp32 inputs to bf16; for bf16 models it is the same.
* sizes: upstream hard-codes Wan2.1-1.3B at 480x832 (1560 tokens per frame, 30 blocks, 12 x
  128 heads in its cache shapes); they are set to the benchmark model's. At full size, the same.
* the text encoder and the VAE are stand-ins: text encoding is excluded as for every path (the
  prompt embeddings are given; upstream embeds them in every pass and computes the
  cross-attention K/V in its first pass, as it does), decoding is measured elsewhere.
* sink 3 + window 9: upstream's ``local_attn_size`` 12 with ``sink_size`` 3 (its released
  config keeps a 21-frame cache, which overflows past 5 s).
* upstream prints every timestep; that output is discarded (the print itself still runs).
"""
from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import torch

from flex.config import FlexConfig
from flex.integrations import accelerate
from flex.models.wan import CausalWanModel

from .upstream_code import UPSTREAM, UpstreamMissing, import_upstream, upstream_model, upstream_pipeline

MODULES = ("wan.modules.model", "wan.modules.causal_model", "utils.wan_wrapper", "pipeline.causal_inference")


def default_repo() -> Path | None:
    """../shared/upstream/self-forcing when it is there, else None."""
    root = UPSTREAM / "self-forcing"
    return root if (root / "wan" / "modules" / "causal_model.py").is_file() else None


class RealUpstream:
    """Upstream's pipeline on a FLEX model's weights (accelerated when ``config`` is given)."""

    def __init__(self, repo: Path, model: CausalWanModel, text: torch.Tensor, latent: tuple[int, int], sink: int,
                 window: int, chunk: int, config: FlexConfig | None = None):
        mods = import_upstream(repo, *MODULES)
        weight = model.patch_embedding.weight
        local = sink + window
        up = upstream_model(mods, model.config, local_attn_size=local, sink_size=sink)
        up.load_state_dict(model.state_dict(), strict=True)
        up = up.to(weight.device, weight.dtype).eval()
        _, ph, pw = model.config.patch_size
        self.latent = latent
        with contextlib.redirect_stdout(io.StringIO()):  # upstream prints its settings
            self.pipeline = upstream_pipeline(mods, up, text, (latent[0] // ph) * (latent[1] // pw),
                                              local_attn_size=local, sink_size=sink, chunk=chunk)
        if config is not None:
            accelerate(self.pipeline, config)

    def latents(self, noise: torch.Tensor) -> torch.Tensor:
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            return self.pipeline.inference(noise=noise, text_prompts=["benchmark"], return_latents=True)[1]

    def run(self, frames: int, device: torch.device) -> float:
        """Seconds of upstream's inference over ``frames`` latent frames (noise drawn first)."""
        weight = self.pipeline.generator.model.patch_embedding.weight
        gen = torch.Generator(device=device).manual_seed(0)
        noise = torch.randn(1, frames, 16, *self.latent, generator=gen, device=device, dtype=weight.dtype)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        self.latents(noise)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start


__all__ = ["MODULES", "RealUpstream", "UpstreamMissing", "default_repo"]
