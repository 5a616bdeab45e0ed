"""bf16 accuracy of one chunk against float64 truth: Self Forcing's code, as shipped and accelerated.

    python benchmarks/run.py --suite accuracy [--accuracy-latent 16x28]

Random weights (seeded) at the Wan2.1-1.3B size, one chunk of 3 latent frames through
upstream's own ``CausalInferencePipeline`` (4 steps, its draws). Truth: the same pipeline in
float64 (its one float32 rounding, in WanRMSNorm, removed). Then bf16 weights and noise, upstream
as shipped and upstream + ``accelerate(FlexConfig.off())`` (the same function on FLEX's ops):
the max and RMS difference of each to the truth. Not a CI test: float64 at 1.3B takes minutes
on a CPU and ~11 GB of memory (the latent size can be reduced; the model never is).
"""
from __future__ import annotations

import contextlib
import io

import torch

from flex.config import FlexConfig
from flex.integrations import accelerate
from flex.models.wan import wan_config

from .upstream_code import float64_norms, import_upstream, upstream_model, upstream_pipeline
from .upstream_real import MODULES

CHUNK = 3


@contextlib.contextmanager
def same_draws(seed: int):
    """Upstream's ``torch.randn_like`` re-noising drawn in float64 from ``seed`` and rounded to the
    tensor's dtype, so that runs in different dtypes get the same noise."""
    original = torch.randn_like
    g = torch.Generator().manual_seed(seed)
    torch.randn_like = lambda x, **kw: torch.randn(x.shape, generator=g, dtype=torch.float64).to(x.device, x.dtype)
    try:
        yield
    finally:
        torch.randn_like = original


def _latents(pipeline, noise, seed):
    with same_draws(seed), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        return pipeline.inference(noise=noise, text_prompts=["accuracy"], return_latents=True)[1].double()


def run(repo, device: torch.device, latent=(60, 104), model: str = "wan2.1-t2v-1.3b", seed: int = 0) -> dict:
    """{"rows": [{"path", "max_abs", "rms", "rel_max"}], "notes": [...]} for one chunk."""
    mods = import_upstream(repo, *MODULES)
    cfg = wan_config(model)
    torch.manual_seed(seed)
    with torch.device(device):
        up = upstream_model(mods, cfg).to(torch.float64).eval()  # upstream's own init, seeded
    with torch.no_grad():  # Wan zero-initialises the head and every bias: the output would be 0
        for p in up.parameters():
            if not p.any():
                p.normal_(0.0, 0.02)
    text = torch.randn(1, min(32, cfg.text_len), cfg.text_dim, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64).to(device)
    noise = torch.randn(1, CHUNK, cfg.in_dim, *latent, generator=torch.Generator().manual_seed(seed + 2),
                        dtype=torch.float64).to(device)
    tpf = (latent[0] // cfg.patch_size[1]) * (latent[1] // cfg.patch_size[2])

    def latents(dtype, flex: bool):
        pipe = upstream_pipeline(mods, up, text.to(dtype), tpf)
        if flex:
            accelerate(pipe, FlexConfig.off(window_frames=21))
        return _latents(pipe, noise.to(dtype), seed + 3)

    with float64_norms(mods["wan.modules.model"]):
        truth = latents(torch.float64, False)
    up.to(torch.bfloat16)
    rows = []
    for label, flex in (("Self Forcing's code, bf16", False), ("Self Forcing's code + accelerate, bf16", True)):
        got = latents(torch.bfloat16, flex)
        diff = got - truth
        rows.append(dict(path=label, max_abs=diff.abs().max().item(), rms=diff.pow(2).mean().sqrt().item(),
                         rel_max=(diff.abs().max() / truth.abs().max()).item()))
    notes = [f"{model}, random weights (seed {seed}), one chunk of {CHUNK} latent frames at {latent[0]}x{latent[1]}, "
             f"4 steps; truth: upstream's pipeline in float64 (WanRMSNorm without its float32 rounding); the "
             f"re-noising draws are the same for every run (bf16 rounds them)"]
    return dict(rows=rows, notes=notes)


def table(result: dict) -> str:
    lines = ["| path | max abs diff to float64 | RMS diff | max diff / max abs |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['path']} | {r['max_abs']:.3e} | {r['rms']:.3e} | {r['rel_max']:.3e} |")
    return "\n".join(lines + [""] + [f"- {n}" for n in result["notes"]])


__all__ = ["run", "table"]
