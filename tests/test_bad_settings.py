"""Settings that would give NaN or nonsense videos are refused with a ValueError naming them."""
import math
import subprocess
import sys
import warnings

import pytest
import torch

import flex
from flex import FlexConfig, ops
from flex.cache import RingKVCache, frame_slots
from flex.models.wan import CausalWanModel, WanConfig
from flex.pipeline import Pipeline
from flex.schedule import FlowMatchSchedule

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize("kwargs,name", [
    (dict(rope_base=NAN), "rope_base"), (dict(rope_base=1.0), "rope_base"), (dict(rope_base=INF), "rope_base"),
    (dict(dynamic="no"), "dynamic"), (dict(dynamic=1), "dynamic"), (dict(ans_renoise="yes"), "ans_renoise"),
    (dict(alpha=NAN), "alpha"), (dict(beta=INF), "beta"), (dict(beta=NAN), "beta"), (dict(rho=NAN), "rho"),
    (dict(l_train=True), "l_train"), (dict(l_train=21.0), "l_train"), (dict(chunk_frames=3.5), "chunk_frames"),
    (dict(sink_frames=None), "sink_frames"), (dict(strategy=None), "strategy"),
])
def test_flex_config_refuses(kwargs, name):
    with pytest.raises(ValueError, match=name):
        FlexConfig(**kwargs)


@pytest.mark.parametrize("base", [0, -1e4, 1, 0.5, NAN, INF])
def test_rope_base_must_be_finite_and_above_one(base):
    with pytest.raises(ValueError, match="base"):
        flex.Rope3D.for_wan(base=base)


@pytest.mark.parametrize("kwargs,name", [
    (dict(length=0), "length"), (dict(length=2.5), "length"), (dict(l_train=0), "l_train"),
    (dict(alpha=NAN), "alpha"), (dict(alpha=2.0, beta=1.0), "alpha"),
])
def test_temporal_thetas_refuses(kwargs, name):
    with pytest.raises(ValueError, match=name):
        flex.temporal_thetas(128, "flex", **kwargs)


def test_noise_settings():
    with pytest.raises(ValueError, match="dtype"):
        flex.antiphase_noise((1, 3, 1, 2, 2), dtype=torch.int64)
    with pytest.raises(ValueError, match="rho"):
        flex.antiphase_noise((1, 3, 1, 2, 2), rho=NAN)


@pytest.mark.parametrize("kwargs,name", [
    (dict(shift=INF), "shift"), (dict(shift=NAN), "shift"), (dict(shift=0.0), "shift"),
    (dict(context_noise=NAN), "context_noise"), (dict(context_noise=-1.0), "context_noise"),
    (dict(denoising_steps=[1000, NAN]), "denoising_steps"), (dict(denoising_steps=[750.5]), "denoising_steps"),
    (dict(denoising_steps=[INF], warp_denoising_step=False), "denoising_steps"),
    (dict(warp_denoising_step="yes"), "warp_denoising_step"),
])
def test_pipeline_refuses(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Pipeline(CausalWanModel("tiny"), **kwargs)


def test_schedule_warp_refuses_non_finite_steps():
    with pytest.raises(ValueError, match="denoising_steps"):
        FlowMatchSchedule().warp([INF])


@pytest.mark.parametrize("kwargs,name", [(dict(eps=0.0), "eps"), (dict(eps=NAN), "eps"), (dict(rope_base=NAN), "rope_base")])
def test_wan_config_refuses(kwargs, name):
    with pytest.raises(ValueError, match=name):
        WanConfig(**kwargs)


def test_frame_slots_needs_a_ring():
    with pytest.raises(ValueError, match="window_frames"):
        frame_slots(torch.arange(5), 3, 0)
    # A sink-only cache keeps frames below the sink and refuses any other.
    cache = RingKVCache(1, 1, 1, 1, 3, 0)
    assert cache.slots(0, 3).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="cache overflow"):
        cache.slots(2, 2)


def test_import_flex_registers_the_ops():
    code = "import torch, flex; print(hasattr(torch.ops.flex, 'rope3d') and torch.ops.flex.rope3d is not None)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_missing_extension_warns_once(monkeypatch):
    from flex import _extension

    monkeypatch.setattr(_extension, "AVAILABLE", False)
    monkeypatch.setattr(ops, "_warned_slow_fallback", False)
    x = torch.randn(1, 2, 1, 6, dtype=torch.float64)
    ft, fh, fw = flex.Rope3D.for_wan(6).tables(0, 2, 1, 1)
    with pytest.warns(RuntimeWarning, match="pip install"):
        ops.rope3d(x, ft, fh, fw, 1, 1)  # cpp is "unavailable": auto falls back to the reference
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.rope3d(x, ft, fh, fw, 1, 1)  # once only
