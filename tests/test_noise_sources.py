"""Noise sources: upstream Self Forcing's own draws reproduce its latents with FLEX off."""
import pytest
import torch

from flex import FlexConfig
from flex.models.wan import CausalWanModel
from flex.noise import ChunkNoise, GivenNoise, UpstreamNoise
from flex.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")
HW = (2, 4)


def upstream_draws(seed, frames, chunk, steps, dtype):
    """The noise exactly as Self Forcing's inference.py / causal_inference.py draw it: set_seed(seed)
    (torch.manual_seed), the whole video's noise with torch.randn in the model's dtype, then per
    chunk one torch.randn_like(denoised_pred.flatten(0, 1)) per step after the first."""
    torch.manual_seed(seed)
    video = torch.randn([1, frames, 16, *HW], dtype=dtype)
    renoise = [torch.empty_like(video) for _ in range(steps - 1)]
    for f0 in range(0, frames, chunk):
        for i in range(steps - 1):
            renoise[i][:, f0:f0 + chunk] = torch.randn_like(video[:, f0:f0 + chunk].flatten(0, 1)).unflatten(
                0, (1, chunk))
    return video, renoise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_upstream_noise_equals_upstream_draws(dtype):
    torch.manual_seed(0)
    model = CausalWanModel("tiny").to(dtype)
    cfg = FlexConfig.off(window_frames=9)
    text = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(1)).to(dtype)
    pipe = Pipeline(model, cfg, backend="cpp")
    ours = pipe.generate(text, 12, HW, noise=UpstreamNoise(7))
    noise, renoise = upstream_draws(7, 12, 3, len(pipe.timesteps), dtype)
    theirs = pipe.generate(text, 12, HW, noise=noise, renoise=renoise)
    assert torch.equal(ours, theirs)
    assert not torch.equal(ours, pipe.generate(text, 12, HW, noise=UpstreamNoise(8)))


def test_given_noise_falls_back_and_sources_are_checked():
    source = GivenNoise(torch.zeros(1, 6, 16, *HW), None, ChunkNoise(0.0, 0.0, torch.Generator().manual_seed(0)))
    source.start((1, 6, 16, *HW), "cpu", torch.float32)
    assert torch.equal(source.initial(3, 3), torch.zeros(1, 3, 16, *HW))
    assert source.renoise(0, 0, 3).shape == (1, 3, 16, *HW)
    with pytest.raises(ValueError, match="seed"):
        UpstreamNoise(2**70)
    with pytest.raises(ValueError, match="rho"):
        ChunkNoise(rho=2.0)
    model = CausalWanModel("tiny")
    with pytest.raises(ValueError, match="NoiseSource"):
        Pipeline(model).stream(torch.randn(1, 5, 32), 3, HW, noise=UpstreamNoise(1), generator=torch.Generator())
