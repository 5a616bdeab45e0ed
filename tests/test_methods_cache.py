"""Cache methods (flex.methods): each one's defining property on a tiny float64 model.

Rolling Sink: the slot frames are the sliding indices and the older blocks hold the rolled
clean K/V of the first blocks, re-rotated at their new positions. MemRoPE: the memory slots
equal the EMA definition over every evicted frame. Participative Compression: the compressed
slots hold exactly the top-C candidate tokens by the attention mass of the recent queries,
computed here densely in float64.
"""
from pathlib import Path

import pytest
import torch

from flex import reference
from flex.config import FlexConfig
from flex.models import CausalWanModel
from flex.positions import PositionPolicy, chunk_positions, frame_positions

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (4, 4)  # 2 x 2 tokens per frame
N = 3  # frames per chunk


def tiny():
    torch.manual_seed(0)
    return CausalWanModel("tiny").to(torch.float64)


def run_chunks(model, cfg: FlexConfig, policy, n_chunks, *, after_pass=None, total=None):
    """The pipeline's per-chunk order (before_chunk, 4 noisy passes, clean pass, after_chunk) with
    random latents; ``after_pass(c, cache)`` is called after each chunk's clean pass, before
    after_chunk. Returns the cache."""
    g = torch.Generator().manual_seed(3)
    text = model.encode_text(torch.randn(1, 5, 32, generator=g, dtype=torch.float64))
    gh, gw = HW[0] // 2, HW[1] // 2
    cache = model.new_cache(1, gh, gw, cfg.sink_frames, cfg.window_frames)
    positions = PositionPolicy(cfg, model.head_dim)
    policy.start(cache, cfg.rotate_on_load)
    total = total or n_chunks * N
    for c in range(n_chunks):
        f0 = c * N
        place = positions.for_chunk(f0, N, total)
        rope, shift, scale = place
        pos = chunk_positions(rope, cache.table, f0, N, gh, gw, position_shift=shift,
                              rotate_on_load=cfg.rotate_on_load, scale=scale, dtype=torch.float64)
        policy.before_chunk(cache, f0, N, place)
        for t in (1000.0, 750.0, 500.0, 250.0, 0.0):
            x = torch.randn(1, N, 16, *HW, generator=g, dtype=torch.float64)
            model(x, t, text, cache, f0, pos, backend="reference")
        if after_pass is not None:
            after_pass(c, cache, place)
        policy.after_chunk(cache, f0, N, place)
    return cache


def tokens(cache, layer, slot, which="k"):
    buf = getattr(cache.layers[layer], which)
    tpf = cache.tokens_per_frame
    return buf[:, slot * tpf:(slot + 1) * tpf].clone()


def as_complex(x):
    return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).clone())


def turn(k, thetas, first_plane, angles_per_token):
    """Rotate planes [first_plane, +len(thetas)) of k [B, T, H, D] by angle a_t * theta (complex math)."""
    z = as_complex(k)
    c = thetas.numel()
    phase = torch.polar(torch.ones(len(angles_per_token), c, dtype=torch.float64),
                        torch.as_tensor(angles_per_token, dtype=torch.float64)[:, None] * thetas[None])
    z[..., first_plane:first_plane + c] *= phase[None, :, None, :]
    return torch.view_as_real(z).flatten(-2)


# ---------------------------------------------------------------- Rolling Sink


def rolling_source(block_start, n, sweep):
    """Official code's rule (Rolling-Sink d7fc0d9, causal_model.py): forward, then mirrored sweeps."""
    rel = block_start % sweep
    if (block_start // sweep) % 2:
        right = sweep - rel
        return [right - 1 - i for i in range(n)]
    return [rel + i for i in range(n)]


@pytest.mark.parametrize("dynamic", [False, True], ids=["pre-rotated", "rotate-on-load"])
def test_rolling_sink_indices_and_sink_content_after_n_chunks(dynamic):
    from flex.methods.rolling_sink import RollingSink

    model = tiny()
    # A 4-block cache (12 frames), 3 rolled blocks over the first 9 frames; 11 chunks sweep
    # forward, backward and forward again.
    cfg = FlexConfig(strategy="none", sink_frames=0, window_frames=12, dynamic=dynamic)
    policy = RollingSink(cfg, {"sink_blocks": 3})
    clean = {}

    def keep(c, cache, place):
        for f in range(c * N, c * N + N):
            slot = cache.table.slots_of(torch.tensor([f]))[0].item()
            clean[f] = [(tokens(cache, i, slot), tokens(cache, i, slot, "v")) for i in range(2)]

    cache = run_chunks(model, cfg, policy, 11, after_pass=keep)
    end = 33
    assert sorted(cache.slot_frame.tolist()) == list(range(end - 12, end))  # sliding indices
    thetas = model.default_rope().thetas_t.double()
    checked = 0
    for block in range(end - 12, end - N, N):  # every block but the newest holds rolled content
        for f, src in zip(range(block, block + N), rolling_source(block, N, 9)):
            slot = cache.table.slots_of(torch.tensor([f]))[0].item()
            for i in range(2):
                k_src, v_src = clean[src][i]
                want = k_src if dynamic else turn(k_src, thetas, 0, [f - src] * 4)
                assert torch.allclose(tokens(cache, i, slot), want, atol=1e-12, rtol=0)
                assert torch.equal(tokens(cache, i, slot, "v"), v_src)
                checked += 1
    assert checked == 3 * N * 2
    newest = cache.table.slots_of(torch.arange(end - N, end))
    for f, slot in zip(range(end - N, end), newest.tolist()):  # the newest block is real
        assert torch.equal(tokens(cache, 0, slot), clean[f][0][0])


def test_rolling_source_sweeps_forward_then_backward():
    from flex.methods.rolling_sink import roll_source_frames

    got = [list(roll_source_frames(b, 3, 18)) for b in range(18, 54, 3)]
    assert got[0] == [17, 16, 15] and got[5] == [2, 1, 0] and got[6] == [0, 1, 2] and got[11] == [15, 16, 17]
    assert all(list(roll_source_frames(b, 3, 18)) == rolling_source(b, 3, 18) for b in range(0, 200, 3))


# ---------------------------------------------------------------- MemRoPE


def test_memrope_memories_equal_their_ema_definition():
    from flex.methods.memrope import MemRoPE

    model = tiny()
    cfg = FlexConfig(strategy="none", sink_frames=5, window_frames=7, position_policy="window")
    a_long, a_short = 0.3, 0.6  # large rates so that every update shows
    policy = MemRoPE(cfg, {"alpha_long": a_long, "alpha_short": a_short})
    clean = {}

    def keep(c, cache, place):
        for f in range(c * N, c * N + N):
            slot = cache.table.slots_of(torch.tensor([f]))[0].item()
            clean[f] = [(tokens(cache, i, slot), tokens(cache, i, slot, "v")) for i in range(2)]

    cache = run_chunks(model, cfg, policy, 8, after_pass=keep)  # evictions before chunks 4..7
    rope = model.default_rope()
    ct = rope.thetas_t.numel()
    thetas_hw = torch.cat((rope.thetas_h, rope.thetas_w)).double()
    gh, gw = HW[0] // 2, HW[1] // 2

    def spatial(k, sign):  # (un)rotate the height and width planes by each token's place
        out = as_complex(k).clone()
        hs, ws = torch.arange(gh * gw) // gw, torch.arange(gh * gw) % gw
        ang = torch.cat((hs[:, None] * rope.thetas_h.double()[None], ws[:, None] * rope.thetas_w.double()[None]), 1)
        out[..., ct:ct + thetas_hw.numel()] *= torch.polar(torch.ones_like(ang), sign * ang)[None, :, None, :]
        return torch.view_as_real(out).flatten(-2)

    for i in range(2):
        ema = None
        for c in range(4, 8):  # chunk c (frames 3c..) evicts frames 3c - 7 .. 3c - 5
            gone = range(3 * c - 7, 3 * c - 4)
            mk = torch.cat([spatial(clean[f][i][0], -1) for f in gone], 1).mean(1, keepdim=True)
            mv = torch.cat([clean[f][i][1] for f in gone], 1).mean(1, keepdim=True)
            if ema is None:
                ema = [mk, mv, mk, mv]
            else:
                ema = [a_long * mk + (1 - a_long) * ema[0], a_long * mv + (1 - a_long) * ema[1],
                       a_short * mk + (1 - a_short) * ema[2], a_short * mv + (1 - a_short) * ema[3]]
        for slot, (mk, mv) in ((3, ema[:2]), (4, ema[2:])):
            want_k = spatial(mk.expand(-1, gh * gw, -1, -1), 1)
            assert torch.allclose(tokens(cache, i, slot), want_k, atol=1e-12, rtol=0)
            assert torch.allclose(tokens(cache, i, slot, "v"), mv.expand(-1, gh * gw, -1, -1), atol=1e-12, rtol=0)
    assert cache.slot_frame[:5].tolist() == [0, 1, 2, 3, 4]  # memories sit at positions 3 and 4


# ---------------------------------------------------------------- Participative Compression


def test_participative_compression_keeps_exactly_the_top_c_tokens():
    from flex.methods.deep_forcing import ParticipativeCompression

    model = tiny()
    cfg = FlexConfig(strategy="none", sink_frames=4, window_frames=6, position_policy="window")
    policy = ParticipativeCompression(cfg, {"compressed": 2, "query_frames": 1})
    seen = {}

    def before_compression(c, cache, place):
        if cache.observer is None:
            return
        seen[c] = ({i: q.clone() for i, q in policy.queries.items()},
                   [(l.k.clone(), l.v.clone()) for l in cache.layers], cache.slot_frame.clone(), place)

    cache = run_chunks(model, cfg, policy, 6, after_pass=before_compression)
    assert sorted(seen) == [2, 3, 4, 5]  # every chunk whose successor evicts frames
    c = 5
    queries, kv, slot_frame, (rope, shift, scale) = seen[c]
    tpf = cache.tokens_per_frame
    frames = torch.arange(3 * c, 3 * c + 3)
    pos = frame_positions(rope, cache.table, frames, 2, 2, position_shift=shift, rotate_on_load=True,
                          scale=scale, dtype=torch.float64)
    gone = [f - 6 for f in range(3 * c + 3, 3 * c + 6)]
    cand_slots = [2, 3] + cache.table.slots_of(torch.tensor(gone)).tolist()
    for i in range(2):
        k, v = kv[i]
        keys = reference.rotate_keys_on_load(k, pos.key_freqs_t, tpf)  # [B, T, H, D] float64
        q = queries[i][:, -tpf:]
        logits = torch.einsum("bqhd,bkhd->bhqk", q, keys) * scale
        logits = logits.masked_fill((slot_frame < 0).repeat_interleave(tpf)[None, None, None], float("-inf"))
        mass = logits.softmax(-1).sum(dim=(1, 2))[0]  # [T]
        cand_tokens = torch.cat([torch.arange(s * tpf, (s + 1) * tpf) for s in cand_slots])
        top = cand_tokens[mass[cand_tokens].topk(2 * tpf).indices.sort().values]
        assert torch.equal(cache.layers[i].k[:, 2 * tpf:4 * tpf], k[:, top])
        assert torch.equal(cache.layers[i].v[:, 2 * tpf:4 * tpf], v[:, top])
        assert not torch.equal(k[:, 2 * tpf:4 * tpf], k[:, top])  # it did move tokens


# ---------------------------------------------------------------- official code fixtures

FIXTURE = Path(__file__).parent / "data" / "upstream_cache_methods.pt"


def fixture_case(name):
    data = torch.load(FIXTURE)
    return {**data[name], "x": data["x"]}


def fixture_layer(case, cfg, policy):
    """Rerun a recorded self-attention layer (no qk-norm) through flex's ops and the cache policy:
    per chunk before_chunk, the recorded passes, after_chunk. Returns the outputs."""
    from flex import ops
    from flex.cache import ModelKVCache

    w = case["weights"]
    n, (gh, gw) = case["chunk"], case["grid"]
    heads = 2
    d = w["q.weight"].shape[0] // heads  # head_dim 6: 1 temporal, 1 height, 1 width plane
    cache = ModelKVCache(1, 1, heads, d, gh, gw, cfg.sink_frames, cfg.window_frames, torch.float64)
    positions = PositionPolicy(cfg, d)
    policy.start(cache, cfg.rotate_on_load)
    steps = len(case["timesteps"])
    outs = []
    for c in range(case["x"].shape[0] // steps):
        f0 = c * n
        place = positions.for_chunk(f0, n, 10 ** 6)
        rope, shift, scale = place
        pos = chunk_positions(rope, cache.table, f0, n, gh, gw, position_shift=shift,
                              rotate_on_load=cfg.rotate_on_load, scale=scale, dtype=torch.float64)
        policy.before_chunk(cache, f0, n, place)
        for s in range(steps):
            x = case["x"][c * steps + s]
            q, k, v = (torch.nn.functional.linear(x, w[f"{p}.weight"], w[f"{p}.bias"]).view(1, -1, heads, d)
                       for p in "qkv")
            layer = cache.layers[0]
            cache.table.reserve(f0, n)
            cache.table.record(pos.frames, pos.slots)
            q_rot = ops.norm_rope_cache_write(q, k, v, None, None, 1e-6, pos.freqs_t, pos.freqs_h, pos.freqs_w,
                                              gh, gw, 0, layer.k, layer.v, pos.slots, not pos.rotate_on_load,
                                              backend="reference")
            a = ops.ring_attention(q_rot, layer.k, layer.v, cache.slot_frame, gh * gw, scale=pos.scale,
                                   key_freqs_t=pos.key_freqs_t, backend="reference")
            outs.append(torch.nn.functional.linear(a.flatten(2), w["o.weight"], w["o.bias"]))
        policy.after_chunk(cache, f0, n, place)
    return torch.stack(outs)


@pytest.mark.parametrize("dynamic", [False, True], ids=["pre-rotated", "rotate-on-load"])
def test_rolling_sink_matches_the_official_code(dynamic):
    from flex.methods.rolling_sink import RollingSink

    case = fixture_case("rolling_sink")
    cfg = FlexConfig(strategy="none", sink_frames=0, window_frames=case["cache_frames"], dynamic=dynamic)
    out = fixture_layer(case, cfg, RollingSink(cfg, {"sink_blocks": case["cache_frames"] // case["chunk"] - 1}))
    assert out.shape == case["out"].shape
    assert (out - case["out"]).abs().max().item() < 1e-10


def test_memrope_matches_the_official_code():
    from flex.methods.memrope import MemRoPE

    case = fixture_case("memrope")
    cfg = FlexConfig(strategy="none", sink_frames=case["sink"] + 2, window_frames=case["recent"] + case["chunk"],
                     position_policy="window")
    policy = MemRoPE(cfg, {"alpha_long": case["alpha_long"], "alpha_short": case["alpha_short"]})
    out = fixture_layer(case, cfg, policy)
    assert (out - case["out"]).abs().max().item() < 1e-10


# ---------------------------------------------------------------- through the pipeline

PIPE_CONFIGS = {  # each method at a small scale (a few chunks fill and wrap its cache)
    "rolling-sink": dict(window_frames=12, method_params={"sink_blocks": 3}),
    "memrope": dict(),
    "deep-sink": dict(sink_frames=4, window_frames=6),
    "flex+deep-sink": dict(sink_frames=4, window_frames=6),
}


def pipe_generate(pipe, frames, seed=3):
    text = torch.randn(1, 16, 32, generator=torch.Generator().manual_seed(1))
    return pipe.generate(text, frames, HW, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", list(PIPE_CONFIGS))
def test_cache_methods_run_in_the_pipeline_and_the_compiled_pass_matches_eager(method):
    from test_chunk_step import BACKEND, CountingBackend

    from flex.pipeline import Pipeline

    torch.manual_seed(0)
    model = CausalWanModel("tiny").eval()
    cfg = FlexConfig.for_method(method, l_train=5, **PIPE_CONFIGS[method])
    plain = cfg.replace(method="flex")  # the same slot table and positions, no cache policy
    with torch.no_grad():
        ref = pipe_generate(Pipeline(model, cfg, backend=BACKEND), 36)
        without = pipe_generate(Pipeline(model, plain, backend=BACKEND), 36)
        counter = CountingBackend()
        out = pipe_generate(Pipeline(model, cfg, backend=BACKEND, compile=counter), 36)
    assert torch.equal(out, ref)  # the policy acts between passes, outside the traced pass
    assert counter.graphs == 1
    if method in ("rolling-sink", "memrope"):
        assert not torch.equal(ref, without)  # the policy changed what the cache held


def test_deep_forcing_runs_eagerly_and_is_refused_with_compile():
    from flex.methods import MethodError
    from flex.pipeline import Pipeline

    torch.manual_seed(0)
    model = CausalWanModel("tiny").eval()
    cfg = FlexConfig.for_method("deep-forcing", sink_frames=4, window_frames=6, method_params={"compressed": 2})
    with torch.no_grad():
        out = pipe_generate(Pipeline(model, cfg), 24)
        plain = pipe_generate(Pipeline(model, cfg.replace(method="flex")), 24)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    with pytest.raises(MethodError) as err, torch.no_grad():
        pipe_generate(Pipeline(model, cfg, compile="eager"), 24)
    assert err.value.param == "compile"


def test_meaningless_settings_are_refused_before_any_model_loads():
    from flex.methods import MethodError

    cases = [(dict(method="rolling-sink"), "sink_frames"),  # sink 3 of the defaults
             (dict(method="rolling-sink", sink_frames=0, window_frames=20), "window_frames"),
             (dict(method="memrope", sink_frames=5, window_frames=7), "position_policy"),
             (dict(method="deep-sink", sink_frames=10, window_frames=11, position_policy="window", dynamic=True),
              "dynamic"),
             (dict(method="deep-forcing", sink_frames=4, window_frames=6, position_policy="window",
                   method_params={"compressed": 4}), "compressed"),
             (dict(method="memrope+lol-jitter"), "method")]
    for kwargs, param in cases:
        with pytest.raises(MethodError) as err:
            FlexConfig(**kwargs)
        assert err.value.param == param, kwargs


# ---------------------------------------------------------------- experiments/rivals.toml


def test_rivals_experiment_is_valid_and_names_every_method(tmp_path):
    """experiments/rivals.toml checks out once its model files and prompt file exist, and runs
    every registered method (both issues) beside FLEX and the upstream baseline."""
    from tiny_assets import make_dit_checkpoint, make_wan_dir

    from flex.jobs.experiment import load_experiment
    from flex.methods import METHODS, method_parts

    text = (Path(__file__).parent.parent / "experiments" / "rivals.toml").read_text()
    text = text.replace("../checkpoints/self_forcing_dmd.pt", str(make_dit_checkpoint(tmp_path / "tiny.pt")))
    text = text.replace("../wan_models/Wan2.1-T2V-1.3B-Diffusers", str(make_wan_dir(tmp_path / "wan")))
    (tmp_path / "rivals.toml").write_text(text)
    (tmp_path / "prompts.txt").write_text("a red fox runs through snow\n")
    exp = load_experiment(tmp_path / "rivals.toml", device="cpu")
    assert exp.horizons == [30, 60, 120, 240] and len(exp.jobs()) == len(exp.variants) * 4 * len(exp.seeds)
    named = {spec.name for j in exp.jobs() for spec in method_parts(j.settings.flex.method)}
    assert named == set(METHODS)
    assert len({j.settings.flex for j in exp.jobs() if j.horizon == 30}) == len(exp.variants)
