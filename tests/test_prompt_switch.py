"""Prompt switching while a video streams: schedules, live switches and the KV re-cache."""
import pytest
import torch

from flex import FlexConfig
from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline
from flex.rope import logit_scale

pytestmark = pytest.mark.usefixtures("one_thread")

HW = (2, 4)
STEPS = 4


def tiny(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return CausalWanModel("tiny").to(dtype)


def emb(seed, dtype=torch.float64):
    return torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def explicit_noise(frames, seed=2, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = (1, frames, 16, *HW)
    return torch.randn(shape, generator=g, dtype=dtype), [torch.randn(shape, generator=g, dtype=dtype)
                                                          for _ in range(STEPS - 1)]


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def dense_chunk_after_recache(model, pipe, cfg, text, context, context_frames, f0, noise, renoise, total):
    """The chunk [f0, f0 + n) recomputed densely after a switch that re-cached ``context_frames``
    (their clean latents ``context``) under ``text``: the re-cached frames see each other; the
    chunk sees the frames its ring holds once it is written (sink + the newest window) and itself."""
    n = cfg.chunk_frames
    chunk = list(range(f0, f0 + n))
    frames = context_frames + chunk
    held = [f for f in context_frames if f < cfg.sink_frames or f >= f0 + n - cfg.window_frames]
    m = len(frames)
    mask = torch.zeros(m, m, dtype=torch.bool)
    k = len(context_frames)
    mask[:k, :k] = True
    for a in range(k, m):
        mask[a, [frames.index(f) for f in held + chunk]] = True
    pos = torch.tensor(frames)
    rope = pipe.positions.rope_for_length(total)
    scale = model.head_dim ** -0.5 * logit_scale(cfg.strategy, total, cfg.l_train)
    x = noise[:, f0:f0 + n]
    for i, (t, sigma) in enumerate(zip(pipe.timesteps, pipe.sigmas)):
        seq = torch.cat([context, x], dim=1)
        ts = torch.tensor([pipe.context_noise] * k + [t] * n)
        v = model.forward_full(seq, ts, text, mask, rope, query_pos=pos, key_pos=pos, scale=scale)[:, k:]
        x0 = x - sigma * v
        if i + 1 < len(pipe.timesteps):
            s = pipe.sigmas[i + 1]
            x = (1 - s) * x0 + s * renoise[i][:, f0:f0 + n]
    return x0


@pytest.mark.parametrize("strategy", ["none", "flex"])
def test_switch_with_full_recache_equals_dense_recompute(strategy):
    model = tiny()
    cfg = FlexConfig(strategy=strategy, l_train=5, sink_frames=3, window_frames=6, rho=0.0)
    total, f0 = 21, 15  # frames 9..14 and the sink 0..2 are resident at the switch; 9..11 get evicted after
    noise, renoise = explicit_noise(total)
    pipe = Pipeline(model, cfg, backend="reference")
    a, b = model.encode_text(emb(1)), model.encode_text(emb(7))
    out = pipe.generate(None, total, noise=noise, renoise=renoise, prompts=[(0, a), (f0, b)], recache="all")
    plain = pipe.generate(a, total, noise=noise, renoise=renoise)
    assert torch.equal(out[:, :f0], plain[:, :f0])  # nothing changes before the switch
    assert not torch.allclose(out[:, f0:], plain[:, f0:])
    context_frames = [0, 1, 2] + list(range(9, 15))
    context = out[:, context_frames]
    dense = dense_chunk_after_recache(model, pipe, cfg, b, context, context_frames, f0, noise, renoise, total)
    assert rel_err(out[:, f0:f0 + 3], dense) < 1e-10, rel_err(out[:, f0:f0 + 3], dense)


class CacheSpy:
    """Snapshots of the ring cache's K/V when a chunk's first pass starts (model.forward)."""

    def __init__(self, model, watch_frame):
        self.model, self.watch_frame, self.snapshots = model, watch_frame, {}
        self._forward = model.forward

    def __enter__(self):
        def forward(x, t, text, cache, first_frame, *args, **kwargs):
            if first_frame not in self.snapshots:
                self.snapshots[first_frame] = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
            return self._forward(x, t, text, cache, first_frame, *args, **kwargs)
        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.forward


@pytest.mark.parametrize("mode", ["none", "window", "all"])
def test_what_each_recache_mode_recomputes(mode):
    model = tiny(torch.float32)
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    pipe = Pipeline(model, cfg, backend="cpp")
    tpf = 2  # tokens per frame of the 2 x 4 latent
    calls = []
    recache = model.recache
    model.recache = lambda *a, **k: calls.append(a[4]) or recache(*a, **k)
    try:
        with CacheSpy(model, 15) as spy:
            stream = pipe.stream(emb(1, torch.float32), 21, HW, generator=torch.Generator().manual_seed(0),
                                 recache=mode)
            for i, _ in enumerate(stream):
                if i == 4:  # after frames 12..14: switch before the chunk at frame 15
                    stream.switch(emb(7, torch.float32))
    finally:
        del model.recache
    assert stream.switches == [15]
    before, after = spy.snapshots[12], spy.snapshots[15]  # cache entering chunk 12 / chunk 15
    sink = slice(0, 3 * tpf)
    window = slice(3 * tpf, 9 * tpf)
    # What chunk 12's passes wrote is in the cache entering chunk 15 unless re-cached.
    end_of_12 = [(layer.k.clone(), layer.v.clone()) for layer in pipe.cache.layers]  # final state, for shapes
    assert len(end_of_12) == len(after)
    if mode == "none":
        assert calls == []
    else:
        assert calls == [[0, 1, 2, 9, 10, 11, 12, 13, 14] if mode == "all" else [9, 10, 11, 12, 13, 14]]
    for (k0, _), (k1, _) in zip(before, after):
        assert torch.equal(k0[:, sink], k1[:, sink]) == (mode != "all")  # the sink, re-cached only by "all"
        # Frames 9..11 sit in the window both times: equal unless the window was re-cached.
        assert torch.equal(k0[:, window][:, :3 * tpf], k1[:, window][:, :3 * tpf]) == (mode == "none")


def test_schedule_equals_live_switch_and_compiled_equals_eager():
    model = tiny(torch.float32)
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    a, b, c = emb(1, torch.float32), emb(7, torch.float32), emb(9, torch.float32)
    sched = [(0, a), (6, b), (13, c)]  # 13: switches before the chunk at 15 (LongLive: start >= switch frame)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    scheduled_stream = Pipeline(model, cfg, backend="cpp").stream(None, 21, HW, generator=gen(), prompts=sched)
    scheduled = torch.cat(list(scheduled_stream), 1)
    assert scheduled_stream.switches == [6, 15]
    live = Pipeline(model, cfg, backend="cpp").stream(a, 21, HW, generator=gen())
    chunks = []
    for i, x in enumerate(live):
        chunks.append(x)
        if i == 1:
            live.switch(b)
        if i == 4:
            live.switch(c)
    assert torch.equal(torch.cat(chunks, 1), scheduled)
    compiled = Pipeline(model, cfg, backend="cpp", compile="aot_eager").generate(None, 21, HW, generator=gen(),
                                                                                  prompts=sched)
    assert torch.allclose(compiled, scheduled, atol=1e-5)


def test_switching_every_chunk_keeps_memory_constant():
    model = tiny(torch.float32)
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    pipe = Pipeline(model, cfg, backend="cpp")
    texts = [model.encode_text(emb(s, torch.float32)) for s in (1, 2)]
    stream = pipe.stream(texts[0], 600, HW, generator=torch.Generator().manual_seed(0))
    ptrs = None
    for i, _ in enumerate(stream):
        cache = pipe.cache
        if ptrs is None:
            ptrs = cache.data_ptrs()
        assert cache.data_ptrs() == ptrs
        end = 3 * (i + 1)
        assert cache.table.frames_written == end
        resident = sorted(f for f in cache.slot_frame.tolist() if f >= 0)
        assert resident == cache.table.resident_frames()
        stream.switch(texts[(i + 1) % 2])
    assert len(stream.switches) == 199


@pytest.mark.parametrize("prompts,match", [
    ([(0, "x")], "prompts\\[0\\]"),
    ([(0, None)], "prompts\\[0\\]"),
    ([(6, 1), (3, 2)], "prompts\\[1\\] first_frame 3 must be after"),
    ([(-1, 1)], "prompts\\[0\\] first_frame"),
    ([(21, 1)], "prompts\\[0\\] first_frame"),
    ([(3, 1)], "prompts\\[0\\] must start at frame 0"),
    ([], "non-empty"),
    ("a prompt", "non-empty"),
    ([(0, 1, 2, 2)], "prompts\\[0\\] must be a \\(first_frame, text\\) pair"),
    ([(0, 1), (3, 2, "sink")], "prompts\\[1\\] mode must be one of"),
    ([(0, 1), (4, 2), (5, 2)], "same 3-frame chunk"),
    ([(0, 1), (20, 2)], "past the video's 21 frames"),
])
def test_bad_schedules_name_the_entry(prompts, match):
    model = tiny(torch.float32)
    pipe = Pipeline(model, FlexConfig(l_train=5, sink_frames=3, window_frames=6))
    good = emb(1, torch.float32)
    resolved = [tuple(good if v == 1 or v == 2 else v for v in p) if isinstance(p, tuple) else p for p in prompts] \
        if isinstance(prompts, list) else prompts
    with pytest.raises(ValueError, match=match):
        pipe.stream(None, 21, HW, prompts=resolved)


def test_bad_switches():
    model = tiny(torch.float32)
    pipe = Pipeline(model, FlexConfig(l_train=5, sink_frames=3, window_frames=6))
    with pytest.raises(ValueError, match="recache"):
        pipe.stream(emb(1, torch.float32), 21, HW, recache="sink")
    with pytest.raises(ValueError, match="text and prompts\\[0\\]"):
        pipe.stream(emb(1, torch.float32), 21, HW, prompts=[(0, emb(2, torch.float32))])
    stream = pipe.stream(emb(1, torch.float32), 21, HW)
    with pytest.raises(ValueError, match="text must be"):
        stream.switch(torch.zeros(1, 5, 31))
    with pytest.raises(ValueError, match="batch"):
        stream.switch(torch.zeros(2, 5, 32))


def run_with_switch(mode, cfg=None, at=15, total=21, spy_frame=None):
    """A float32 tiny stream switching to another prompt before chunk ``at`` with ``mode``; returns
    (latents, pipeline, spy with the cache entering each chunk, the chunk passes' positions)."""
    model = tiny(torch.float32)
    cfg = cfg or FlexConfig(strategy="none", rho=0.0, l_train=5, sink_frames=3, window_frames=6)
    pipe = Pipeline(model, cfg, backend="cpp")
    positions = {}
    forward = model.forward

    def spy(x, t, text, cache, first_frame, pos, *args, **kwargs):
        positions.setdefault(first_frame, (pos, cache.slot_frame.clone()))
        return forward(x, t, text, cache, first_frame, pos, *args, **kwargs)

    model.forward = spy
    try:
        with CacheSpy(model, at) as caches:
            prompts = [(0, emb(1, torch.float32)), (at, emb(7, torch.float32), mode)]
            stream = pipe.stream(None, total, HW, generator=torch.Generator().manual_seed(0), prompts=prompts)
            out = torch.cat(list(stream), 1)
    finally:
        model.__dict__.pop("forward", None)
    return out, stream, caches.snapshots, positions


def test_kv_flush_keeps_only_the_sink_and_the_last_frame():
    flushed, stream, caches, positions = run_with_switch("flush")
    kept, _, kept_caches, _ = run_with_switch("none")
    assert stream.switches == [15]
    _, held = positions[15]  # the slots entering chunk 15, before its frames are recorded
    assert sorted(f for f in held.tolist() if f >= 0) == [0, 1, 2, 14]
    _, held = positions[18]  # the ring refills from the last frame on
    assert sorted(f for f in held.tolist() if f >= 0) == [0, 1, 2, 14, 15, 16, 17]
    tpf = 2
    slots = [0, 1, 2, 3 + (14 - 3) % 6]  # nothing is re-encoded: the kept K/V are bit for bit the old ones
    for (k1, v1), (k0, v0) in zip(caches[15], kept_caches[15]):
        for s in slots:
            assert torch.equal(k1[:, s * tpf:(s + 1) * tpf], k0[:, s * tpf:(s + 1) * tpf])
            assert torch.equal(v1[:, s * tpf:(s + 1) * tpf], v0[:, s * tpf:(s + 1) * tpf])
    assert torch.equal(flushed[:, :15], kept[:, :15]) and not torch.allclose(flushed[:, 15:], kept[:, 15:])


def test_rope_cut_moves_the_frames_after_the_switch_ahead():
    cut, stream, caches, positions = run_with_switch("cut")
    kept, _, kept_caches, _ = run_with_switch("none")
    jump = 3 + 6  # default: sink + window frames
    assert stream.cuts == [(15, jump)]
    rope = Pipeline(tiny(torch.float32), FlexConfig(strategy="none", l_train=5, sink_frames=3,
                                                   window_frames=6)).positions.rope_for_length(21)
    from flex.rope import cos_sin

    for f0, offset in ((12, 0), (15, jump), (18, jump)):
        pos, _ = positions[f0]
        want = cos_sin(torch.arange(f0, f0 + 3) + offset, rope.thetas_t, pos.freqs_t.dtype)
        assert torch.equal(pos.freqs_t, want), f0
    for (k1, v1), (k0, v0) in zip(caches[15], kept_caches[15]):  # the cache is not re-encoded
        assert torch.equal(k1, k0) and torch.equal(v1, v0)
    assert torch.equal(cut[:, :15], kept[:, :15]) and not torch.allclose(cut[:, 15:], kept[:, 15:])


def test_cut_needs_pre_rotated_keys_and_global_sink_needs_absolute_positions():
    from flex.switching import SwitchError

    model = tiny(torch.float32)
    dynamic = Pipeline(model, FlexConfig(l_train=5, sink_frames=3, window_frames=6, dynamic=True))
    with pytest.raises(SwitchError, match="cut") as err:
        dynamic.stream(None, 21, HW, prompts=[(0, emb(1, torch.float32)), (6, emb(2, torch.float32), "cut")])
    assert err.value.setting == "prompts"
    stream = dynamic.stream(emb(1, torch.float32), 21, HW)
    with pytest.raises(SwitchError, match="cut"):
        stream.switch(emb(2, torch.float32), mode="cut")
    window = Pipeline(model, FlexConfig(l_train=5, sink_frames=3, window_frames=6, position_policy="window"))
    with pytest.raises(SwitchError, match="global_sink") as err:
        window.stream(emb(1, torch.float32), 21, HW, global_sink=False)
    assert err.value.setting == "global_sink"


def test_switches_in_one_chunk_longlive_defers_live_and_scheduled():
    model = tiny(torch.float32)
    cfg = FlexConfig(strategy="none", rho=0.0, l_train=5, sink_frames=3, window_frames=6)
    a, b, c = (emb(s, torch.float32) for s in (1, 2, 3))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    pipe = Pipeline(model, cfg, backend="cpp", recache="longlive")
    scheduled = pipe.stream(None, 24, HW, generator=gen(), prompts=[(0, a), (16, b), (17, c)])
    sched_out = torch.cat(list(scheduled), 1)
    assert scheduled.switches == [18, 21]
    live = pipe.stream(a, 24, HW, generator=gen())
    chunks = []
    for i, x in enumerate(live):
        chunks.append(x)
        if i == 5:  # after frames 15..17: two switches before the chunk at 18
            live.switch(b)
            live.switch(c)
    assert live.switches == [18, 21] and torch.equal(torch.cat(chunks, 1), sched_out)
    with pytest.raises(ValueError, match="same 3-frame chunk") as err:
        Pipeline(model, cfg).stream(None, 24, HW, prompts=[(0, a), (16, b), (17, c)])
    assert err.value.setting == "prompts"
