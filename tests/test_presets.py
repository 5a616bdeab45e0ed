"""Model presets: upstream values, schedules against an independent table, Pipeline and loading on the tiny model."""
import math

import pytest
import torch

from tiny_assets import make_dit_checkpoint, tiny_dit_state_dict
from flex.config import FlexConfig
from flex.loading import load_dit
from flex.models import CausalWanModel
from flex.pipeline import Pipeline
from flex.presets import MODEL_PRESETS, ModelPreset, model_preset

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (2, 4)

# name: (architecture, steps, warp, shift, weights, chunk, (alpha, beta, l_train), flex sink + window,
#        baseline sink + window + position policy, LoRA (rank, alpha))
EXPECTED = {
    "self-forcing": ("wan2.1-t2v-1.3b", (1000, 750, 500, 250), True, 5.0, "generator_ema", 3,
                     (0.1, 2.5, 21), (3, 18), (0, 21, "absolute"), (None, None)),
    "causvid": ("wan2.1-t2v-1.3b", (1000, 757, 522), False, 8.0, "generator", 3,
                (0.1, 2.5, 21), (3, 18), (0, 21, "absolute"), (None, None)),
    "longlive": ("wan2.1-t2v-1.3b", (1000, 750, 500, 250), True, 5.0, "generator", 3,
                 (1.0, 15.0, 240), (3, 9), (3, 9, "absolute"), (256, 256.0)),
    "causal-forcing": ("wan2.1-t2v-1.3b", (1000, 750, 500, 250), True, 5.0, "generator", 3,
                       (0.1, 2.5, 21), (3, 18), (0, 21, "absolute"), (None, None)),
    "krea-14b": ("wan2.1-t2v-14b", (1000, 750, 500, 250), True, 5.0, None, 3,
                 (0.1, 2.5, 21), (3, 18), (0, 6, "window"), (None, None)),
}


def shifted_table(shift):
    """Self Forcing's 1000-entry table, in float64: t_i = 1000 sigma'_i, sigma_i = 1 - i / 1000."""
    sigma = [1 - i / 1000 for i in range(1000)]
    shifted = [shift * s / (1 + (shift - 1) * s) for s in sigma]
    return [1000 * s for s in shifted], shifted


def reference_schedule(steps, warp, shift):
    ts, sigmas = shifted_table(shift)
    if warp:
        ts = [ts[1000 - s] if s else 0.0 for s in steps]
    else:
        ts = [float(s) for s in steps]
    table_t = shifted_table(shift)[0]
    nearest = [min(range(1000), key=lambda i: abs(table_t[i] - t)) for t in ts]
    return ts, [sigmas[i] for i in nearest]


def tiny_text():
    return torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))


def test_the_four_presets_exist_and_are_read_only():
    assert sorted(MODEL_PRESETS) == sorted(EXPECTED)
    with pytest.raises(TypeError):
        MODEL_PRESETS["other"] = MODEL_PRESETS["causvid"]
    assert model_preset("causvid") is MODEL_PRESETS["causvid"]
    assert model_preset(MODEL_PRESETS["longlive"]) is MODEL_PRESETS["longlive"]
    with pytest.raises(ValueError, match=r"model must be one of .*'krea-14b'.*got 'self_forcing'"):
        model_preset("self_forcing")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_values(name):
    arch, steps, warp, shift, weights, chunk, (alpha, beta, l_train), (sink, window), base, lora = EXPECTED[name]
    p = MODEL_PRESETS[name]
    assert (p.architecture, p.denoising_steps, p.warp_denoising_step, p.shift, p.weights) == \
        (arch, steps, warp, shift, weights)
    assert p.context_noise == 0.0 and p.chunk_frames == chunk
    assert (p.lora_rank, p.lora_alpha) == lora and p.requires_lora == (lora[0] is not None)
    assert p.final_step_at_t0 == (name == "krea-14b")

    on = p.flex_config()
    assert isinstance(on, FlexConfig)
    assert (on.strategy, on.alpha, on.beta, on.l_train, on.rho) == ("flex", alpha, beta, l_train, -1.0)
    assert (on.sink_frames, on.window_frames, on.chunk_frames, on.position_policy) == (sink, window, chunk, "absolute")

    off = p.baseline_config()
    assert (off.strategy, off.rho, off.ans_renoise, off.dynamic) == ("none", 0.0, False, False)
    assert (off.sink_frames, off.window_frames, off.position_policy) == base and off.chunk_frames == chunk


def test_longlive_window_is_upstream_local_attn_size_12():
    off = MODEL_PRESETS["longlive"].baseline_config()
    on = MODEL_PRESETS["longlive"].flex_config()
    assert off.sink_frames + off.window_frames == 12 == on.sink_frames + on.window_frames


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schedule_matches_an_independent_table(name):
    p = MODEL_PRESETS[name]
    ts, sigmas = p.schedule()
    ref_ts, ref_sigmas = reference_schedule(p.denoising_steps, p.warp_denoising_step, p.shift)
    assert ts == pytest.approx(ref_ts, rel=1e-6) and sigmas == pytest.approx(ref_sigmas, rel=1e-6)


def test_documented_timesteps_and_sigmas():
    ts, sigmas = MODEL_PRESETS["self-forcing"].schedule()
    assert ts == pytest.approx([1000, 937.5, 2500 / 3, 625], rel=1e-6)
    assert sigmas == pytest.approx([1, 0.9375, 5 / 6, 0.625], rel=1e-6)
    assert MODEL_PRESETS["longlive"].schedule() == MODEL_PRESETS["krea-14b"].schedule() == (ts, sigmas)
    # CausVid: raw timesteps; sigmas of the nearest shift-8 entries (sigma 0.28 -> 28/37, 0.12 -> 12/23)
    ts, sigmas = MODEL_PRESETS["causvid"].schedule()
    assert ts == [1000.0, 757.0, 522.0]
    assert sigmas == pytest.approx([1.0, 28 / 37, 12 / 23], rel=1e-6)
    # warping CausVid's list would be a different schedule: the shift-8 table at 757 and 522
    warped, _ = MODEL_PRESETS["causvid"].replace(warp_denoising_step=True).schedule()
    assert warped[1] == pytest.approx(1000 * 8 * 0.757 / (1 + 7 * 0.757), rel=1e-5)
    assert abs(warped[1] - 757.0) > 100


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_preset_builds_a_pipeline_and_streams_on_the_tiny_model(name):
    p = MODEL_PRESETS[name]
    torch.manual_seed(0)
    model = CausalWanModel("tiny")
    for cfg in (p.flex_config(), p.baseline_config()):
        pipe = Pipeline(model, cfg, **p.pipeline_kwargs())
        assert (pipe.timesteps, pipe.sigmas) == p.schedule()
        assert pipe.context_noise == p.context_noise and pipe.schedule.shift == p.shift
        frames = cfg.sink_frames + cfg.window_frames + p.chunk_frames  # past the window: eviction runs
        frames += -frames % p.chunk_frames
        out = pipe.generate(tiny_text(), frames, HW, generator=torch.Generator().manual_seed(1))
        assert out.shape == (1, frames, 16, *HW) and torch.isfinite(out).all()


def test_flex_and_baseline_agree_while_nothing_differs():
    """Self Forcing: within 21 frames the baseline (window 21, no sink) is upstream exactly, and
    FLEX with rho 0 and L <= L_train gives the same latents (its RoPE is the identity there)."""
    p = MODEL_PRESETS["self-forcing"]
    torch.manual_seed(0)
    model = CausalWanModel("tiny").double()
    text = tiny_text().double()
    run = lambda cfg: Pipeline(model, cfg, backend="reference", **p.pipeline_kwargs()).generate(
        text, 9, HW, generator=torch.Generator().manual_seed(5))
    assert torch.equal(run(p.baseline_config()), run(p.flex_config(rho=0.0, sink_frames=0, window_frames=21)))


def test_overrides_are_validated():
    p = MODEL_PRESETS["self-forcing"]
    assert p.replace(shift=3.0).shift == 3.0 and p.shift == 5.0
    assert p.flex_config(rho=0.0).rho == 0.0 and p.flex_config().rho == -1.0
    with pytest.raises(ValueError, match="shift must be in"):
        p.replace(shift=0.0)
    with pytest.raises(ValueError, match="shift"):
        p.replace(shift=math.nan)
    with pytest.raises(ValueError, match="denoising_steps must not be empty"):
        p.replace(denoising_steps=())
    with pytest.raises(ValueError, match="denoising_steps must be ints"):
        p.replace(denoising_steps=(1000, 757.5))  # warped steps index the table
    with pytest.raises(ValueError, match="denoising_steps must be a sequence"):
        p.replace(denoising_steps="1000,750")
    with pytest.raises(ValueError, match="warp_denoising_step must be True or False"):
        p.replace(warp_denoising_step="no")
    with pytest.raises(ValueError, match="context_noise"):
        p.replace(context_noise=-1.0)
    with pytest.raises(ValueError, match="architecture must be one of"):
        p.replace(architecture="wan2.2-5b")
    with pytest.raises(ValueError, match="weights must be one of"):
        p.replace(weights="ema")
    with pytest.raises(ValueError, match="lora_rank and lora_alpha go together"):
        p.replace(lora_rank=256)
    with pytest.raises(ValueError, match="lora_rank must be an int"):
        p.replace(lora_rank=True, lora_alpha=1.0)
    with pytest.raises(ValueError, match="flex and baseline must generate the model's chunk size"):
        p.replace(baseline=FlexConfig.off(chunk_frames=1))
    with pytest.raises(ValueError, match="flex must be a FlexConfig"):
        p.replace(flex={"alpha": 0.1})
    with pytest.raises(ValueError, match="final_step_at_t0 must be True or False"):
        p.replace(final_step_at_t0=1)
    with pytest.raises(ValueError, match="name must be a non-empty string"):
        ModelPreset(name="", architecture="tiny", denoising_steps=(1000,), warp_denoising_step=False,
                    shift=5.0, context_noise=0.0, weights=None, flex=FlexConfig(), baseline=FlexConfig.off())


def test_load_kwargs_read_the_weights_upstream_reads(tmp_path):
    """Self Forcing reads generator_ema, CausVid and LongLive the raw generator (EMA + 1 here)."""
    path = make_dit_checkpoint(tmp_path / "ckpt.pt")
    ema = tiny_dit_state_dict()
    for name, offset in (("self-forcing", 0.0), ("causvid", 1.0), ("longlive", 1.0)):
        kwargs = {**MODEL_PRESETS[name].load_kwargs(), "preset": "tiny"}  # (no LoRA file here)
        model, info = load_dit(path, **kwargs)
        assert info["entry"] == MODEL_PRESETS[name].weights
        assert all(torch.equal(model.state_dict()[k], v + offset) for k, v in ema.items())
    assert MODEL_PRESETS["krea-14b"].load_kwargs() == {"preset": "wan2.1-t2v-14b", "use_ema": None,
                                                       "lora_alpha": None}
    assert MODEL_PRESETS["longlive"].load_kwargs()["lora_alpha"] == 256.0
