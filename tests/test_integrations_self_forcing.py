"""flex.integrations on Self Forcing's own code (../shared/upstream/self-forcing, commit 33593df).

A tiny float64 CausalInferencePipeline of the real classes: accelerated with FLEX off it
gives upstream's latents, with FLEX on it gives FLEX's own Pipeline's latents (same weights,
same draws), and restore() gives upstream's behaviour back.
"""
from __future__ import annotations

import pytest
import torch

from flex import FlexConfig
from flex.integrations import IntegrationError, accelerate, restore, runtime_of
from flex.pipeline import Pipeline

from integration_cases import (EXACT, PIPELINE_MODULES, flex_latents, flex_model_of, max_diff, tiny_pipeline,
                               upstream_latents)
from upstream_code import float64_norms, import_upstream

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 12  # 4 chunks of 3
ON = [
    pytest.param(FlexConfig(l_train=6, sink_frames=3, window_frames=6), id="flex-sink3-window6"),
    pytest.param(FlexConfig(l_train=6, sink_frames=3, window_frames=6, position_policy="window", dynamic=True),
                 id="flex-window-positions-dynamic"),
    pytest.param(FlexConfig(method="lol-jitter", l_train=6, sink_frames=3, window_frames=6, position_policy="window"),
                 id="lol-jitter-window-positions"),  # per-head tables, keys rotated on load
]


@pytest.fixture(scope="module")
def mods():
    return import_upstream("self-forcing", *PIPELINE_MODULES)


@pytest.fixture
def pipeline(mods):
    with float64_norms(mods["wan.modules.model"]):
        yield tiny_pipeline(mods)


def test_flex_off_gives_upstreams_latents_and_restore_gives_them_back(pipeline):
    reference = upstream_latents(pipeline, FRAMES)
    accelerate(pipeline, FlexConfig.off(window_frames=21), EXACT)
    accelerated = upstream_latents(pipeline, FRAMES)
    again = upstream_latents(pipeline, FRAMES)  # a second video on the same pipeline resets the ring
    restore(pipeline)
    restored = upstream_latents(pipeline, FRAMES)
    assert max_diff(accelerated, reference) < 1e-10
    assert max_diff(again, reference) < 1e-10
    assert torch.equal(restored, reference)
    assert all("forward" not in b.self_attn.__dict__ for b in pipeline.generator.model.blocks)


@pytest.mark.parametrize("config", ON)
def test_flex_on_gives_flex_pipelines_latents(pipeline, config):
    expected = flex_latents(pipeline, config, FRAMES, antiphase=True)
    accelerate(pipeline, config, EXACT)
    got = upstream_latents(pipeline, FRAMES)
    assert runtime_of(pipeline).cache.n_slots == 9  # upstream's 21-frame buffers are not used
    restore(pipeline)
    assert max_diff(got, expected) < 1e-10


def test_accelerated_bare_model_matches_flex_model(pipeline):
    """The model alone (a user's own loop): FLEX on, one chunk, against FLEX's CausalWanModel."""
    upstream = pipeline.generator.model
    config = FlexConfig(l_train=6, sink_frames=3, window_frames=6)
    ours = flex_model_of(upstream)
    x = torch.randn(1, 3, 16, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    text = pipeline.text_encoder.embeddings
    t = torch.full((1, 3), 937.5)
    cache = ours.new_cache(1, 2, 2, 3, 6)
    with torch.no_grad():
        expected = ours(x, t, text, cache, 0, Pipeline(ours, config).chunk_tables(cache, 0, 3, 12), EXACT)
    accelerate(upstream, config, EXACT, num_frames=12)
    kv = [{} for _ in upstream.blocks]  # the user's cache dicts: the ring replaces their tensors
    cross = [{"is_init": False} for _ in upstream.blocks]
    with torch.no_grad():
        got = upstream(x.permute(0, 2, 1, 3, 4), t=t, context=text, seq_len=12, kv_cache=kv,
                       crossattn_cache=cross, current_start=0).permute(0, 2, 1, 3, 4)
    restore(upstream)
    assert max_diff(got, expected) < 1e-10


def test_bad_settings_are_refused_before_any_change(pipeline):
    with pytest.raises(IntegrationError) as err:
        accelerate(pipeline, FlexConfig(ans_renoise=True))
    assert err.value.setting == "ans_renoise"
    with pytest.raises(IntegrationError) as err:
        accelerate(pipeline.generator.model, FlexConfig())  # the length sets S: it must be known
    assert err.value.setting == "strategy"
    with pytest.raises(ValueError, match="backend"):
        accelerate(pipeline, FlexConfig.off(), backend="nope")
    with pytest.raises(ValueError, match="obj must be"):
        accelerate(torch.nn.Linear(2, 2))
    assert runtime_of(pipeline) is None and "inference" not in pipeline.__dict__
    accelerate(pipeline, FlexConfig.off())
    with pytest.raises(ValueError, match="already accelerated"):
        accelerate(pipeline)
    with pytest.raises(ValueError, match="restore the pipeline"):
        restore(pipeline.generator.model)
    restore(pipeline)
    with pytest.raises(ValueError, match="not accelerated"):
        restore(pipeline)


def test_default_kernels_flex_on_match_flex_pipeline_on_the_same_kernels(pipeline):
    """The backends "auto" picks here (C++ / SDPA on a CPU), in the integration and in FLEX's own
    pipeline: the same kernels on the same inputs."""
    config = ON[0].values[0]
    expected = flex_latents(pipeline, config, FRAMES, antiphase=True, backend="auto")
    accelerate(pipeline, config)
    got = upstream_latents(pipeline, FRAMES)
    restore(pipeline)
    assert max_diff(got, expected) < 1e-10


def test_accelerated_model_traces_under_torch_compile(pipeline):
    """Upstream's demo compiles the transformer in place (``transformer.compile(...)``): the
    accelerated model traces (dynamo, eager backend here: the CPU test skips inductor's build
    time) and computes the same latents; the pass placement runs outside the graph."""
    config = ON[0].values[0]
    accelerate(pipeline, config, EXACT)
    eager = upstream_latents(pipeline, 3)
    model = pipeline.generator.model
    torch._dynamo.reset()
    model.compile(backend="eager")
    try:
        compiled = upstream_latents(pipeline, 3)
    finally:
        model._compiled_call_impl = None
        torch._dynamo.reset()
        restore(pipeline)
    assert torch.equal(compiled, eager)
