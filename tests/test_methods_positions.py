"""The position methods of flex.methods: the registry's rules and each method's defining property.

* registry: every entry point's FlexConfig refuses unknown methods, parameters and meaningless
  combinations before any model loads, naming the setting (``MethodError.param``);
* infinity-RoPE: matches the official code (fixture recorded by tests/record_infinity_rope.py)
  to 1e-10, and no position leaves the trained range at frame 10^6;
* re-RoPE streaming: the preset is exactly the options it names (same settings, same bits);
* LoL jitter: per head, deterministic per seed, the per-head tables equal a float64 rotation
  per head.
"""
from pathlib import Path

import pytest
import torch

from flex import ops
from flex.cache import RingKVCache
from flex.config import FlexConfig
from flex.methods import METHODS, MethodError, check_method
from flex.methods.position_methods import jitter_factors
from flex.models import CausalWanModel
from flex.pipeline import Pipeline
from flex.positions import PositionPolicy, chunk_positions
from flex.rope import Rope3D, base_thetas, cos_sin

FIXTURE = Path(__file__).parent / "data" / "infinity_rope.pt"
HW = (2, 4)


def rollout(config, frames=12, backend="reference", dtype=torch.float64):
    torch.manual_seed(0)
    model = CausalWanModel("tiny").to(dtype)
    text = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    pipe = Pipeline(model, config, backend=backend)
    return pipe.generate(text, frames, HW, generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------- registry


def test_every_method_names_what_it_changes_and_checks_its_defaults():
    for name, spec in METHODS.items():
        assert spec.name == name and spec.changes and spec.source
        for p in spec.params:
            assert p.value(p.default) == p.default
        FlexConfig.for_method(name)  # the paper's settings pass the method's own checks


@pytest.mark.parametrize("kwargs, param", [
    (dict(method="nope"), "method"),
    (dict(method="re-rope+flex"), "method"),
    (dict(method="lol-jitter+lol-jitter"), "method"),
    (dict(method="lol-jitter", method_params=(("strength", 1.5),)), "strength"),
    (dict(method="lol-jitter", method_params=(("strength", "x"),)), "strength"),
    (dict(method="lol-jitter", method_params=(("seeds", 1),)), "seeds"),
    (dict(method="lol-jitter", method_params="strength=1"), "method_params"),
    (dict(method="infinity-rope"), "position_policy"),
    (dict(method="infinity-rope", position_policy="window", sink_frames=3, window_frames=21), "window_frames"),
    (dict(method="re-rope", sink_frames=5, window_frames=7), "position_policy"),
])
def test_meaningless_settings_are_refused_naming_the_setting(kwargs, param):
    with pytest.raises(MethodError) as err:
        FlexConfig(**kwargs)
    assert err.value.param == param and isinstance(err.value, ValueError)


def test_method_params_are_canonical_and_hashable():
    a = FlexConfig(method="lol-jitter", method_params={"seed": "3", "strength": "0.5"})
    b = FlexConfig(method="lol-jitter", method_params=[("strength", 0.5), ("seed", 3)])
    assert a == b and hash(a) == hash(b) and a.method_params == (("seed", 3), ("strength", 0.5))
    assert a.replace(method="flex").method_params == ()  # a new method starts from its own defaults
    assert check_method(FlexConfig()) == ()


def test_cli_method_flags_reach_flexconfig():
    from flex.cli import build_parser, explicit_flags as _explicit, flex_config
    argv = ["generate", "--prompt", "a cat", "--dit", "x.pt", "--wan-dir", "w", "--method", "lol-jitter", "--method-param", "strength=0.5",
            "--method-param", "seed=7", "--window-frames", "9"]
    args = build_parser().parse_args(argv)
    cfg = flex_config(args, _explicit(argv))
    assert (cfg.method, cfg.method_params, cfg.window_frames) == ("lol-jitter", (("seed", 7), ("strength", 0.5)), 9)
    argv = ["generate", "--prompt", "a cat", "--dit", "x.pt", "--wan-dir", "w", "--method", "infinity-rope"]
    cfg = flex_config(build_parser().parse_args(argv), _explicit(argv))
    assert (cfg.sink_frames, cfg.window_frames, cfg.position_policy) == (1, 5, "window")


# ---------------------------------------------------------------- infinity-RoPE


def test_infinity_rope_matches_the_official_code():
    """One float64 self-attention layer through 8 chunks x 2 passes: the project's ops with the
    method's positions give the official layer's outputs to 1e-10."""
    fx = torch.load(FIXTURE)
    s = fx["settings"]
    dim, heads, (gh, gw), chunk = s["dim"], s["heads"], s["grid"], s["chunk"]
    d, tpf = dim // heads, gh * gw
    w = fx["state_dict"]
    cfg = FlexConfig.for_method("infinity-rope")
    assert (cfg.sink_frames, cfg.sink_frames + cfg.window_frames) == (s["sink_size"], s["local_attn_size"])
    policy = PositionPolicy(cfg, d, heads)
    cache = RingKVCache(1, heads, d, tpf, cfg.sink_frames, cfg.window_frames, torch.float64)
    n_chunks = fx["inputs"].shape[0] // 2
    worst = 0.0
    for i, x in enumerate(fx["inputs"]):
        f0 = (i // 2) * chunk
        rope, shift, scale = policy.for_chunk(f0, chunk, n_chunks * chunk)
        pos = chunk_positions(rope, cache.table, f0, chunk, gh, gw, position_shift=shift, rotate_on_load=True,
                              scale=scale, dtype=torch.float64)

        def lin(name):
            return (x @ w[f"{name}.weight"].T + w[f"{name}.bias"]).view(1, -1, heads, d)
        cache.table.reserve(f0, chunk)
        cache.table.record(pos.frames, pos.slots)
        q = ops.norm_rope_cache_write(lin("q"), lin("k"), lin("v"), None, None, 1e-6, pos.freqs_t, pos.freqs_h,
                                      pos.freqs_w, gh, gw, 0, cache.k, cache.v, pos.slots, rotate_k_temporal=False,
                                      backend="reference")
        out = ops.ring_attention(q, cache.k, cache.v, cache.table.slot_frame, tpf, scale=pos.scale,
                                 key_freqs_t=pos.key_freqs_t, backend="reference")
        y = out.flatten(2) @ w["o.weight"].T + w["o.bias"]
        worst = max(worst, (y - fx["outputs"][i]).abs().max().item())
    assert worst < 1e-10


def test_infinity_rope_positions_stay_in_the_trained_range_at_frame_a_million():
    cfg = FlexConfig.for_method("infinity-rope")
    policy = PositionPolicy(cfg, 12, 2)
    cache = RingKVCache(1, 2, 12, 1, cfg.sink_frames, cfg.window_frames, torch.float64)
    f0 = 10**6
    for start in (0, f0 - (cfg.window_frames - 3)):  # the sink, then the window frames before the chunk
        n = cfg.sink_frames if start == 0 else cfg.window_frames - 3
        cache.table.record(torch.arange(start, start + n), cache.table.slots_of(torch.arange(start, start + n)))
    rope, shift, scale = policy.for_chunk(f0, 3, f0 + 3)
    pos = chunk_positions(rope, cache.table, f0, 3, 1, 1, position_shift=shift, rotate_on_load=True, scale=scale,
                          dtype=torch.float64)
    held = cache.table.after(pos.frames, pos.slots)
    key_pos = torch.where(held < cfg.sink_frames, held, held - shift)
    assert sorted(key_pos.tolist()) == list(range(cfg.sink_frames + cfg.window_frames))  # all < l_train
    assert torch.equal(pos.key_freqs_t, cos_sin(key_pos, rope.thetas_t, torch.float64))
    assert torch.equal(pos.freqs_t, cos_sin(torch.arange(3, 6), rope.thetas_t, torch.float64))
    assert torch.equal(rope.thetas_t, base_thetas(rope.thetas_t.numel()))  # S = 1: the trained thetas


# ---------------------------------------------------------------- re-RoPE streaming


def test_re_rope_is_the_options_it_names():
    named = FlexConfig(strategy="none", sink_frames=5, window_frames=7, position_policy="window")
    preset = FlexConfig.for_method("re-rope")
    assert preset.replace(method="flex") == named
    frames = 18  # past sink + window: keys re-rotated as the window slides
    assert torch.equal(rollout(preset, frames, "cpp", torch.float32), rollout(named, frames, "cpp", torch.float32))


# ---------------------------------------------------------------- LoL jitter


def test_jitter_is_per_head_and_deterministic_per_seed():
    a, b, c = (jitter_factors(12, 128, 0.8, seed) for seed in (0, 0, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (12, 22) and torch.all(a[:, 0] == 1)  # plane 0 (theta 1) never moves
    assert len({round(r, 12) for r in a[:, 1].tolist()}) == 12  # every head its own frequency
    base = a[:, 1] ** -11  # (1 + 0.8 u_h) from plane 1's factor (1 + 0.8 u_h)^(-2/44)
    assert torch.all((base > 0.2 - 1e-9) & (base < 1.8 + 1e-9))
    half = jitter_factors(12, 128, 0.8, 0, heads=0.5)
    assert (half != 1).any(dim=1).sum() == 6
    assert (jitter_factors(2, 128, 0.8, 0, heads=0.25) != 1).any(dim=1).sum() == 1  # never zero heads
    assert torch.equal(jitter_factors(12, 128, 0.0, 0), torch.ones(12, 22, dtype=torch.float64))


def test_jitter_tables_rotate_each_head_by_its_own_thetas():
    cfg = FlexConfig(method="lol-jitter", l_train=5)
    rope = PositionPolicy(cfg, 12, 2).rope_for_length(30)
    plain = Rope3D.for_wan(12, "flex", 30, 5)
    factors = jitter_factors(2, 12, 0.8, 0)
    assert rope.thetas_t.shape == (2, 2) and torch.equal(rope.thetas_t, plain.thetas_t[None] * factors)
    x = torch.randn(1, 3 * 6, 2, 12, dtype=torch.float64)
    ft = cos_sin(torch.arange(7, 10), rope.thetas_t, torch.float64)  # [3, H, C_t, 2]
    fh, fw = cos_sin(torch.arange(2), rope.thetas_h, torch.float64), cos_sin(torch.arange(3), rope.thetas_w, torch.float64)
    out = ops.rope3d(x, ft, fh, fw, 2, 3, backend="reference")
    for h in range(2):  # head h alone, with a shared table of its own thetas
        one = ops.rope3d(x[:, :, h:h + 1], ft[:, h], fh, fw, 2, 3, backend="reference")
        assert torch.allclose(out[:, :, h:h + 1], one, atol=1e-14, rtol=0)
    for backend in ("cpp", "triton"):  # the fused kernels take the per-head tables too
        if backend in ops.available_backends("rope3d", "cpu"):
            got = ops.rope3d(x.float(), ft.float(), fh.float(), fw.float(), 2, 3, backend=backend)
            assert torch.allclose(got.double(), out, atol=1e-5, rtol=0), backend


@pytest.mark.parametrize("positions", ["absolute", "window"])
def test_jitter_stream_is_deterministic_per_seed(positions):
    def cfg(seed):
        return FlexConfig(method="lol-jitter", method_params={"seed": seed}, l_train=5, sink_frames=3,
                          window_frames=6, position_policy=positions)
    a, b, c = rollout(cfg(0)), rollout(cfg(0)), rollout(cfg(1))
    plain = rollout(FlexConfig(l_train=5, sink_frames=3, window_frames=6, position_policy=positions))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


def test_every_method_runs_on_the_causal_forcing_preset():
    from flex.methods import method_settings
    from flex.presets import MODEL_PRESETS
    base = MODEL_PRESETS["causal-forcing"].flex_config()
    for name in METHODS:
        assert base.replace(**method_settings(name), method=name).method == name


def test_method_param_tolerates_spaces_and_says_what_a_bad_value_is():
    from flex.cli.args import _key_value
    from flex.methods import MethodError

    assert _key_value(" strength = 0.5 ") == ("strength", "0.5")
    with pytest.raises(MethodError, match="not an integer: '1.5'"):
        FlexConfig(method="lol-jitter", method_params={"seed": "1.5"})
    with pytest.raises(MethodError, match="not a number: 'abc'"):
        FlexConfig(method="lol-jitter", method_params={"strength": "abc"})


@pytest.mark.parametrize("args, flag", [
    (["--method", "no-such-method"], "--method"),
    (["--method", "lol-jitter", "--method-param", "strenght=0.5"], "--method-param strenght"),
    (["--method", "lol-jitter", "--method-param", "strength=abc"], "--method-param strength"),
    (["--method", "infinity-rope", "--window-frames", "40"], "--window-frames"),
])
def test_bad_method_flags_name_the_flag_before_any_model_loads(tmp_path, capsys, monkeypatch, args, flag):
    import flex.loading
    from flex.cli import main

    monkeypatch.setattr(flex.loading, "load_dit", lambda *a, **k: pytest.fail("a model was loaded"))
    code = main(["generate", "--dit", str(tmp_path / "x.pt"), "--wan-dir", str(tmp_path), "--prompt", "a cat", *args])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err, err


def test_bad_phase_method_is_a_usage_error(tmp_path, capsys):
    from flex.cli import main

    assert main(["evaluate", "--phase", "--method", "no-such-method", "--out", str(tmp_path), "--no-plot"]) == 2
    assert "method" in capsys.readouterr().err
