"""A tiny float64 upstream pipeline (Self Forcing's or LongLive's real classes) and FLEX's own
pipeline on the same weights, for tests/test_integrations_*.py."""
from __future__ import annotations

import torch
from torch import nn

from benchmarks.upstream_code import upstream_model, upstream_pipeline
from flex.models.wan import CausalWanModel, wan_config
from flex.noise import UpstreamNoise
from flex.pipeline import Pipeline

TINY = wan_config("tiny")
LATENT = (4, 4)  # 2 x 2 tokens per frame
STEPS = [1000, 750, 500, 250]
SEED = 7
# The float64 equivalences run the ops' float64 references (flex.reference): the C++ kernels
# compute the qk-RMSNorm in float32 even for float64 input, as Wan does (1e-8 apart here).
EXACT = "reference"
# The upstream modules a tiny CausalInferencePipeline is built from (Self Forcing and LongLive alike).
PIPELINE_MODULES = ("wan.modules.model", "wan.modules.causal_model", "utils.wan_wrapper", "pipeline.causal_inference")


def random_weights(model: nn.Module, seed: int = 0) -> None:
    """Every parameter random (norm weights around 1), so that no path is a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(1 + 0.1 * noise if "norm" in name else 0.2 * noise)


def tiny_pipeline(mods, local_attn_size=-1, sink_size=0, dtype=torch.float64):
    """Upstream's CausalInferencePipeline around a tiny CausalWanModel with random weights."""
    model = upstream_model(mods, TINY, local_attn_size=local_attn_size, sink_size=sink_size)
    random_weights(model)
    model = model.to(dtype)
    text = torch.randn(1, 6, TINY.text_dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return upstream_pipeline(mods, model, text.to(dtype), (LATENT[0] // 2) * (LATENT[1] // 2),
                             local_attn_size=local_attn_size, sink_size=sink_size, steps=STEPS)


def upstream_latents(pipeline, frames: int, seed: int = SEED) -> torch.Tensor:
    """Latents of upstream's ``inference`` from upstream's own draws (``set_seed``, then ``randn``)."""
    torch.manual_seed(seed)
    dtype = pipeline.generator.model.patch_embedding.weight.dtype
    noise = torch.randn(1, frames, 16, *LATENT, dtype=dtype)
    with torch.no_grad():
        _, latents = pipeline.inference(noise=noise, text_prompts=["a prompt"], return_latents=True)
    return latents


class SignedUpstreamNoise(UpstreamNoise):
    """Upstream's draws, each chunk's initial frames made antiphase with rho = -1:
    frame u of a chunk is (-1)^u times its first frame."""

    def initial(self, f0, n):
        z = super().initial(f0, n)
        signs = torch.tensor([(-1.0) ** u for u in range(n)], dtype=z.dtype).view(1, n, 1, 1, 1)
        return z[:, :1] * signs


def flex_model_of(upstream) -> CausalWanModel:
    """FLEX's CausalWanModel with the weights of an upstream one."""
    model = CausalWanModel(TINY).to(upstream.patch_embedding.weight.dtype)
    model.load_state_dict(upstream.state_dict(), strict=True)
    return model


def flex_latents(pipeline, config, frames: int, seed: int = SEED, antiphase: bool = False,
                 backend: str = EXACT) -> torch.Tensor:
    """FLEX's own Pipeline on the upstream pipeline's weights, noise and prompt."""
    flex = Pipeline(flex_model_of(pipeline.generator.model), config, denoising_steps=STEPS, shift=5.0,
                    backend=backend)
    noise = (SignedUpstreamNoise if antiphase else UpstreamNoise)(seed)
    with torch.no_grad():
        return flex.generate(pipeline.text_encoder.embeddings, frames, LATENT, noise=noise)


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()
