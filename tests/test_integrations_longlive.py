"""flex.integrations on LongLive v1.0's own code (../shared/upstream/longlive-v1.0, commit e52d9ef).

LongLive's recipe: a local window of 12 frames = sink 3 + 9, chunks of 3. A tiny float64
CausalInferencePipeline of the real classes, 15 frames (the window slides twice).
"""
from __future__ import annotations

import pytest
import torch

from flex import FlexConfig
from flex.integrations import accelerate, default_config, restore, runtime_of

from integration_cases import EXACT, PIPELINE_MODULES, flex_latents, max_diff, tiny_pipeline, upstream_latents
from upstream_code import float64_norms, import_upstream

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 15
FLEX_OFF = FlexConfig.off(window_frames=9).replace(sink_frames=3)  # LongLive's sink 3 + 9, no FLEX


@pytest.fixture(scope="module")
def mods():
    return import_upstream("longlive-v1.0", *PIPELINE_MODULES)


@pytest.fixture
def pipeline(mods):
    with float64_norms(mods["wan.modules.model"]):
        yield tiny_pipeline(mods, local_attn_size=12, sink_size=3)


def test_flex_off_gives_upstreams_latents_and_restore_gives_them_back(pipeline):
    reference = upstream_latents(pipeline, FRAMES)
    accelerate(pipeline, FLEX_OFF, EXACT)
    accelerated = upstream_latents(pipeline, FRAMES)
    restore(pipeline)
    restored = upstream_latents(pipeline, FRAMES)
    assert max_diff(accelerated, reference) < 1e-10
    assert torch.equal(restored, reference)


def test_flex_on_gives_flex_pipelines_latents(pipeline):
    config = FlexConfig.longlive().replace(l_train=6)  # S = 15 / 6: the gate matters at this length
    expected = flex_latents(pipeline, config, FRAMES, antiphase=True)
    accelerate(pipeline, config, EXACT)
    got = upstream_latents(pipeline, FRAMES)
    assert runtime_of(pipeline).cache.n_slots == 12
    restore(pipeline)
    assert max_diff(got, expected) < 1e-10


def test_default_config_is_the_papers_longlive_setting(pipeline):
    assert default_config(pipeline) == FlexConfig.longlive()
