"""Streaming Self Forcing pipeline with FLEX: cached rollout == dense recompute, switches, eviction."""
import math

import pytest
import torch

from flex import ops
from flex.config import FlexConfig
from flex.models import CausalWanModel
from flex.noise import antiphase_noise
from flex.pipeline import Pipeline
from flex.rope import Rope3D, logit_scale
from flex.schedule import FlowMatchSchedule

HW = (2, 4)  # latent 2 x 4 -> 1 x 2 tokens per frame
STEPS = 4


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return CausalWanModel("tiny").to(dtype)


def text_emb(batch=1, dtype=torch.float64, seed=1):
    return torch.randn(batch, 6, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def explicit_noise(frames, batch=1, hw=HW, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (batch, frames, 16, *hw)
    return torch.randn(shape, generator=g, dtype=dtype), [torch.randn(shape, generator=g, dtype=dtype) for _ in range(STEPS - 1)]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---------------------------------------------------------------- dense recompute reference


def recompute_rollout(model, cfg: FlexConfig, text, noise, renoise, pipe: Pipeline):
    """Self Forcing rerun from scratch: for every pass, ALL frames so far (clean context at t=0 and
    the current noisy chunk) go through ``forward_full`` with a dense mask. Which frames each query
    frame sees, at which positions and with which RoPE, is derived here from the definitions:
    a chunk ending at frame e sees frames j < e with j < sink or j >= e - window; "window" positions
    are ranks among those frames; S comes from the total (static) or from e (dynamic)."""
    total, n = noise.shape[1], cfg.chunk_frames
    sink, window, cap = cfg.sink_frames, cfg.window_frames, cfg.sink_frames + cfg.window_frames
    mask = torch.zeros(total, total, dtype=torch.bool)
    qpos, kpos = torch.zeros(total, dtype=torch.long), torch.zeros(total, total, dtype=torch.long)
    ropes, scales, clean = [], [], []
    for c in range(total // n):
        f0, end = c * n, c * n + n
        visible = [j for j in range(end) if j < sink or j >= end - window]
        if cfg.position_policy == "window":
            pos = {j: r for r, j in enumerate(visible)}
            length = len(visible) if cfg.dynamic else min(total, cap)
        else:
            pos = {j: j for j in visible}
            length = end if cfg.dynamic else total
        rope = Rope3D.for_wan(model.head_dim, cfg.strategy, length, cfg.l_train, cfg.alpha, cfg.beta)
        for a in range(f0, end):
            mask[a, visible] = True
            qpos[a] = pos[a]
            kpos[a, visible] = torch.tensor([pos[j] for j in visible])
            ropes.append(rope)
            scales.append(model.head_dim ** -0.5 * logit_scale(cfg.strategy, length, cfg.l_train))
        x = noise[:, f0:end]
        for i, (t, sigma) in enumerate(zip(pipe.timesteps, pipe.sigmas)):
            seq = torch.cat(clean + [x], dim=1)
            ts = torch.tensor([0.0] * f0 + [t] * n)
            v = model.forward_full(seq, ts, text, mask[:end, :end], ropes[:end], query_pos=qpos[:end],
                                   key_pos=kpos[:end, :end], scale=scales[:end])[:, f0:]
            x0 = x - sigma * v
            if i + 1 < len(pipe.timesteps):
                s = pipe.sigmas[i + 1]
                x = (1 - s) * x0 + s * renoise[i][:, f0:end]
        clean.append(x0)
    return torch.cat(clean, dim=1)


EQUIV_CONFIGS = {
    "self_forcing_full_window": (FlexConfig.off(window_frames=12), 12),
    "flex_static_S>1": (FlexConfig(l_train=5, sink_frames=0, window_frames=12), 12),
    "flex_sink_window": (FlexConfig(l_train=5, sink_frames=3, window_frames=6), 18),
    "odd_sink_window": (FlexConfig(l_train=4, sink_frames=1, window_frames=4), 15),
    "dynamic_S": (FlexConfig(l_train=5, dynamic=True, sink_frames=3, window_frames=6), 18),
    "window_positions": (FlexConfig(l_train=5, sink_frames=3, window_frames=6, position_policy="window"), 18),
    "window_positions_dynamic": (FlexConfig(l_train=4, dynamic=True, sink_frames=2, window_frames=5,
                                            position_policy="window"), 15),
    "yarn_sink_window": (FlexConfig(strategy="yarn", l_train=5, sink_frames=3, window_frames=6), 15),
    "ntk_chunk2": (FlexConfig(strategy="ntk", l_train=4, sink_frames=2, window_frames=4, chunk_frames=2), 12),
}


@pytest.mark.parametrize("name", list(EQUIV_CONFIGS))
def test_cached_rollout_equals_dense_recompute(name):
    cfg, frames = EQUIV_CONFIGS[name]
    model = tiny()
    text = model.encode_text(text_emb())
    noise, renoise = explicit_noise(frames)
    pipe = Pipeline(model, cfg, backend="reference")
    cached = pipe.generate(text, frames, noise=noise, renoise=renoise)
    dense = recompute_rollout(model, cfg, text, noise, renoise, pipe)
    assert cached.dtype == torch.float64 and cached.shape == noise.shape
    assert rel_err(cached, dense) < 1e-10, rel_err(cached, dense)


def test_batch_elements_are_independent():
    model = tiny()
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    emb = text_emb(batch=2)
    noise, renoise = explicit_noise(12, batch=2)
    both = Pipeline(model, cfg, backend="reference").generate(emb, 12, noise=noise, renoise=renoise)
    one = Pipeline(model, cfg, backend="reference").generate(emb[1:], 12, noise=noise[1:], renoise=[r[1:] for r in renoise])
    assert rel_err(both[1:], one) < 1e-12


# ---------------------------------------------------------------- schedule


def test_self_forcing_schedule():
    sched = FlowMatchSchedule(shift=5.0)
    ts, sigmas = sched.timesteps_and_sigmas([1000, 750, 500, 250])
    assert ts[0] == 1000.0 and ts[1] == 937.5 and ts[3] == 625.0
    assert math.isclose(ts[2], 833.3333, rel_tol=1e-6) and math.isclose(sigmas[2], 0.833333, rel_tol=1e-6)
    assert sigmas[0] == 1.0 and sigmas[1] == 0.9375 and sigmas[3] == 0.625
    for t, s in zip(ts, sigmas):  # sigma' = 5 sigma / (1 + 4 sigma), t = 1000 sigma'
        assert math.isclose(t, 1000 * s, rel_tol=1e-6)
    raw, raw_sigmas = sched.timesteps_and_sigmas([1000, 937.5], warp=False)
    assert raw == [1000.0, 937.5] and raw_sigmas == [1.0, 0.9375]
    assert Pipeline(tiny(), FlexConfig.off()).timesteps == ts


# ---------------------------------------------------------------- FLEX switches


def run(model, cfg, frames, **kw):
    return Pipeline(model, cfg, backend=kw.pop("backend", "auto")).generate(text_emb(dtype=model.param_dtype), frames, HW, **kw)


def replay_noise(seed, frames, rho_init, rho_renoise, chunk=3, dtype=torch.float32):
    """The whole video's noise as the pipeline draws it from a generator: per chunk, the initial
    noise first, then the re-noising of each step."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, chunk, 16, *HW)
    init, ren = [], [[] for _ in range(STEPS - 1)]
    for _ in range(frames // chunk):
        init.append(antiphase_noise(shape, rho_init, g))
        for i in range(STEPS - 1):
            ren[i].append(antiphase_noise(shape, rho_renoise, g))
    return torch.cat(init, 1).to(dtype), [torch.cat(r, 1).to(dtype) for r in ren]


def test_switches_off_reproduce_plain_self_forcing_bit_for_bit():
    model = tiny(torch.float32)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    plain = run(model, FlexConfig.off(window_frames=9), 18, generator=gen())
    off = run(model, FlexConfig(strategy="none", rho=0.0, sink_frames=0, window_frames=9), 18, generator=gen())
    assert torch.equal(plain, off)
    # FLEX's strategy with L <= L_train is the unmodified RoPE: identical bits.
    short = run(model, FlexConfig(rho=0.0, sink_frames=0, window_frames=9, l_train=18), 18, generator=gen())
    assert torch.equal(plain, short)
    # And with L > L_train it changes the result.
    longer = run(model, FlexConfig(rho=0.0, sink_frames=0, window_frames=9, l_train=6), 18, generator=gen())
    assert not torch.allclose(plain, longer, atol=1e-3)
    # The generator-driven plain run is the explicit-noise run with the replayed i.i.d. draws.
    noise, renoise = replay_noise(5, 18, 0.0, 0.0)
    assert torch.equal(plain, run(model, FlexConfig.off(window_frames=9), 18, noise=noise, renoise=renoise))


def test_ans_changes_only_the_initial_noise():
    model = tiny(torch.float32)
    base = FlexConfig(strategy="none", sink_frames=0, window_frames=9)
    noise, renoise = explicit_noise(12, dtype=torch.float32)
    # With explicit noise ANS has nothing to change.
    assert torch.equal(run(model, base.replace(rho=-1.0), 12, noise=noise, renoise=renoise),
                       run(model, base.replace(rho=0.0), 12, noise=noise, renoise=renoise))
    # From a generator, ANS = antiphase initial noise, i.i.d. re-noising, nothing else.
    ans = run(model, base.replace(rho=-1.0), 12, generator=torch.Generator().manual_seed(3))
    init, ren = replay_noise(3, 12, -1.0, 0.0)
    assert torch.equal(init[:, 1], -init[:, 0]) and torch.equal(init[:, 2], init[:, 0])
    assert torch.equal(ans, run(model, base.replace(rho=0.0), 12, noise=init, renoise=ren))
    assert not torch.allclose(ans, run(model, base.replace(rho=0.0), 12, generator=torch.Generator().manual_seed(3)))
    # ans_renoise also draws the re-noising antiphase.
    both = run(model, base.replace(rho=-0.5, ans_renoise=True), 12, generator=torch.Generator().manual_seed(3))
    init, ren = replay_noise(3, 12, -0.5, -0.5)
    assert torch.equal(both, run(model, base, 12, noise=init, renoise=ren))


def test_sink_changes_nothing_until_frames_are_evicted():
    model = tiny(torch.float32)
    noise, renoise = explicit_noise(18, dtype=torch.float32)
    with_sink = run(model, FlexConfig.off().replace(sink_frames=3, window_frames=6), 18, noise=noise, renoise=renoise)
    no_sink = run(model, FlexConfig.off(window_frames=9), 18, noise=noise, renoise=renoise)
    assert torch.equal(with_sink[:, :9], no_sink[:, :9])  # 9 = sink + window frames, nothing evicted yet
    assert not torch.allclose(with_sink[:, 9:], no_sink[:, 9:], atol=1e-4)


def test_rotate_on_load_paths_agree_when_positions_coincide():
    """Window positions without eviction, and dynamic S while L <= L_train, are the static model."""
    model = tiny()
    noise, renoise = explicit_noise(12)
    kw = dict(noise=noise, renoise=renoise, backend="reference")
    static = run(model, FlexConfig(l_train=12, sink_frames=3, window_frames=9), 12, **kw)
    assert rel_err(run(model, FlexConfig(l_train=12, sink_frames=3, window_frames=9, position_policy="window"), 12, **kw), static) < 1e-12
    assert rel_err(run(model, FlexConfig(l_train=12, sink_frames=3, window_frames=9, dynamic=True), 12, **kw), static) < 1e-12
    # Past L_train, dynamic S differs from static S (same positions, other thetas).
    short_train = FlexConfig(l_train=4, sink_frames=3, window_frames=9)
    assert rel_err(run(model, short_train.replace(dynamic=True), 12, **kw), run(model, short_train, 12, **kw)) > 1e-6


# ---------------------------------------------------------------- long streams


@pytest.mark.parametrize("cfg", [
    FlexConfig(sink_frames=3, window_frames=6),
    FlexConfig(sink_frames=2, window_frames=4, dynamic=True, position_policy="window"),
], ids=["absolute_static", "window_dynamic"])
def test_long_stream_evicts_and_keeps_memory_constant(cfg):
    """345 chunks = 1035 latent frames (past Wan's 1024-position RoPE table); 2 steps for speed."""
    model = tiny(torch.float32)
    pipe = Pipeline(model, cfg, denoising_steps=[1000, 500])
    frames = 1035
    seen = []
    state = {}

    def check(info, x0):
        cache = pipe.cache
        if "ptrs" not in state:
            state["ptrs"] = cache.data_ptrs()
        assert cache.data_ptrs() == state["ptrs"]
        end = info.frames_done
        expect = sorted(set(range(min(cfg.sink_frames, end))) | set(range(max(cfg.sink_frames, end - cfg.window_frames), end)))
        for layer in cache.layers:
            assert sorted(f for f in layer.slot_frame.tolist() if f >= 0) == expect
            assert layer.k.shape[1] == (cfg.sink_frames + cfg.window_frames) * 2
        assert torch.isfinite(x0).all()
        seen.append(info.frames_done)

    for chunk in pipe.stream(text_emb(dtype=torch.float32), frames, HW, generator=torch.Generator().manual_seed(0),
                             callback=check):
        assert chunk.shape == (1, 3, 16, *HW)
    assert seen == list(range(3, frames + 1, 3))


# ---------------------------------------------------------------- backends


def _supports_rotate_on_load(name):
    try:
        ops.resolve_backend("ring_attention", name, torch.device("cpu"), chunk_frames=0,
                            key_freqs_t=torch.zeros(1), resident_tokens=0, return_lse=False,
                            dtype=torch.float32, head_dim=32)
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("cfg", [
    FlexConfig(l_train=4, sink_frames=2, window_frames=4),
    FlexConfig(l_train=4, sink_frames=2, window_frames=4, dynamic=True, position_policy="window"),
], ids=["absolute", "rotate_on_load"])
def test_every_backend_gives_the_same_latents(cfg):
    """fp32 on every backend here (triton through its CPU interpreter) vs the float64 reference."""
    names = ops.available_backends(device="cpu")
    assert "reference" in names
    noise, renoise = explicit_noise(9, hw=(2, 6))  # 3 tokens per frame; the ring wraps in chunk 3
    truth = Pipeline(tiny(), cfg, backend="reference").generate(text_emb(), 9, noise=noise, renoise=renoise)
    model = tiny(torch.float32)
    tested = []
    for name in names:
        if cfg.rotate_on_load and not _supports_rotate_on_load(name):
            continue
        out = Pipeline(model, cfg, backend=name).generate(
            text_emb(dtype=torch.float32), 9, noise=noise.float(), renoise=[r.float() for r in renoise])
        assert rel_err(out.double(), truth) < 1e-4, (name, rel_err(out.double(), truth))
        tested.append(name)
    assert "reference" in tested


# ---------------------------------------------------------------- streaming API


def test_stream_callback_progress_and_generate_agree(capsys):
    model = tiny(torch.float32)
    pipe = Pipeline(model, FlexConfig(sink_frames=3, window_frames=6))
    infos = []
    chunks = []
    it = pipe.stream(text_emb(dtype=torch.float32), 12, HW, generator=torch.Generator().manual_seed(1),
                     callback=lambda info, x0: infos.append(info), progress=True)
    for chunk in it:
        assert torch.is_grad_enabled()  # no_grad never leaks to the caller between chunks
        chunks.append(chunk)
    assert [i.frames_done for i in infos] == [3, 6, 9, 12] and infos[-1].chunks_done == infos[-1].total_chunks == 4
    assert all(i.latent_fps > 0 and i.elapsed_s > 0 for i in infos)
    assert "chunk" in capsys.readouterr().err  # the tqdm bar
    whole = pipe.generate(text_emb(dtype=torch.float32), 12, HW, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(chunks, 1), whole)


def test_text_cache_and_global_rng():
    model = tiny(torch.float32)
    pipe = Pipeline(model, FlexConfig.off())
    text = model.encode_text(text_emb(dtype=torch.float32))
    torch.manual_seed(11)
    a = pipe.generate(text, 6, HW)
    torch.manual_seed(11)
    b = pipe.generate(text_emb(dtype=torch.float32), 6, HW)
    assert torch.equal(a, b)


# ---------------------------------------------------------------- bad configuration


def test_bad_configuration_is_refused_before_compute():
    model = tiny(torch.float32)
    pipe = Pipeline(model, FlexConfig())
    text = text_emb(dtype=torch.float32)
    noise, renoise = explicit_noise(6, dtype=torch.float32)
    cases = [
        (dict(num_frames=7), "num_frames"),
        (dict(num_frames=0), "num_frames"),
        (dict(latent_size=(3, 4)), "latent_size"),
        (dict(noise=noise[:, :3]), "noise"),
        (dict(noise=noise, latent_size=(4, 4)), "noise"),
        (dict(renoise=renoise[:2]), "renoise"),
        (dict(renoise=[renoise[0], renoise[1], renoise[2][:, :3]]), r"renoise\[2\]"),
        (dict(text=torch.randn(1, 6, 31)), "text"),
        (dict(text=torch.randn(1, 17, 32)), "text"),
        (dict(text=torch.randn(2, 6, 32), noise=noise), "noise"),
        (dict(generator=5), "generator"),
    ]
    for change, match in cases:
        kw = dict(text=text, num_frames=6, latent_size=HW if "noise" not in change else None)
        kw.update(change)
        with pytest.raises(ValueError, match=match):
            pipe.stream(kw.pop("text"), kw.pop("num_frames"), kw.pop("latent_size"), **kw)  # not even iterated
    with pytest.raises(ValueError, match="window_frames"):
        FlexConfig(window_frames=2, chunk_frames=3)
    with pytest.raises(ValueError, match="preset must be one of"):
        CausalWanModel("wan-14b")
    with pytest.raises(ValueError, match="backend"):
        Pipeline(model, FlexConfig(), backend="cudnn")
    with pytest.raises(ValueError, match="backend"):
        Pipeline(model, FlexConfig(), backend={"attention": "sdpa"})
    with pytest.raises(ValueError, match="denoising_steps"):
        Pipeline(model, FlexConfig(), denoising_steps=[])
    with pytest.raises(ValueError, match="denoising_steps"):
        Pipeline(model, FlexConfig(), denoising_steps=[1200])
    with pytest.raises(ValueError, match="config must be a FlexConfig"):
        Pipeline(model, {"rho": 0})


@pytest.mark.parametrize("fp32_modulation", [True, False])
def test_bf16_pipeline_runs(fp32_modulation):
    torch.manual_seed(0)
    model = CausalWanModel("tiny", fp32_modulation=fp32_modulation).to(torch.bfloat16)
    out = Pipeline(model, FlexConfig(sink_frames=3, window_frames=3)).generate(
        text_emb(dtype=torch.bfloat16), 9, HW, generator=torch.Generator().manual_seed(0))
    assert out.dtype == (torch.float32 if fp32_modulation else torch.bfloat16)
    assert out.shape == (1, 9, 16, *HW) and torch.isfinite(out.float()).all()
    assert Pipeline(model).cache is None and model.new_cache(1, 1, 2).dtype == torch.bfloat16
