"""No silent wrong answer from the ring cache's bookkeeping or from streams that share state."""
import pytest
import torch

from flex import FlexConfig, ops
from flex.cache import RingKVCache
from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dtype=torch.float32):
    torch.manual_seed(0)
    return CausalWanModel("tiny").to(dtype)


def test_chunk_after_a_gap_is_exact_on_every_backend():
    """Frames 3..5 written into a new cache leave slots 0..2 empty: the resident slots are no
    prefix, so the prefix backends (sdpa) must not be chosen and auto equals the masked kernels."""
    model = tiny()
    x = torch.randn(1, 3, 16, 2, 2, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 4, 32, generator=torch.Generator().manual_seed(2))
    outs = {}
    for backend in ("auto", "cpp", "reference"):
        cache = model.new_cache(1, 1, 1, 3, 6)
        outs[backend] = model(x, 500.0, text, cache, 3, backend=backend)
        assert cache.table.resident_prefix_tokens() is None
    assert torch.allclose(outs["auto"], outs["reference"], atol=1e-5)
    assert torch.allclose(outs["cpp"], outs["reference"], atol=1e-5)
    with pytest.raises(ValueError, match="does not support"):
        model(x, 500.0, text, model.new_cache(1, 1, 1, 3, 6), 3, backend="sdpa")


def test_resident_tokens_must_be_the_filled_prefix():
    cache = RingKVCache(1, 2, 8, 4, 0, 4)
    q = torch.randn(1, 4, 2, 8)
    cache.write(q, q, 0)
    ops.ring_attention(q, cache.k, cache.v, cache.slot_frame, 4, resident_tokens=4, backend="sdpa")
    with pytest.raises(ValueError, match="multiple of tokens_per_frame"):
        ops.ring_attention(q, cache.k, cache.v, cache.slot_frame, 4, resident_tokens=5)
    with pytest.raises(ValueError, match="resident_tokens"):
        ops.ring_attention(q, cache.k, cache.v, cache.slot_frame, 4, resident_tokens=8)
    gap = torch.tensor([-1, -1, 0, 1])
    with pytest.raises(ValueError, match="filled slots are exactly"):
        ops.ring_attention(q, cache.k, cache.v, gap, 4, resident_tokens=8, backend="sdpa")


def test_float64_rotate_on_load_falls_back_to_the_reference_under_auto():
    model = tiny(torch.float64)
    cfg = FlexConfig(l_train=5, dynamic=True, sink_frames=3, window_frames=6)
    text = torch.randn(1, 4, 32, dtype=torch.float64)
    auto = Pipeline(model, cfg).generate(text, 12, (2, 4), generator=torch.Generator().manual_seed(3))
    ref = Pipeline(model, cfg, backend="reference").generate(text, 12, (2, 4),
                                                             generator=torch.Generator().manual_seed(3))
    # auto: the C++ norm + RoPE (float32 angle tables) and the reference attention
    assert torch.allclose(auto, ref, atol=1e-7, rtol=0)


def test_second_live_stream_of_a_compiled_pipeline_is_refused():
    model = tiny()
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    pipe = Pipeline(model, cfg, backend="cpp", compile="aot_eager")
    text = torch.randn(1, 4, 32)
    first = pipe.stream(text, 12, (2, 4), generator=torch.Generator().manual_seed(0))
    next(first)
    second = pipe.stream(text, 12, (2, 4), generator=torch.Generator().manual_seed(1))
    with pytest.raises(RuntimeError, match="still running"):
        next(second)
    rest = list(first)  # the first stream is unharmed and completes
    assert len(rest) == 3
    # Once it finished, a new stream runs, and equals the eager path.
    again = pipe.generate(text, 12, (2, 4), generator=torch.Generator().manual_seed(1))
    eager = Pipeline(model, cfg, backend="cpp").generate(text, 12, (2, 4), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(again, eager, atol=1e-6)
    # A closed stream frees the pass too.
    third = pipe.stream(text, 12, (2, 4))
    next(third)
    third.close()
    assert pipe.generate(text, 3, (2, 4)).shape[1] == 3


def test_eager_streams_may_interleave():
    model = tiny()
    cfg = FlexConfig(l_train=5, sink_frames=3, window_frames=6)
    pipe = Pipeline(model, cfg, backend="cpp")
    text = torch.randn(1, 4, 32)
    a = pipe.stream(text, 12, (2, 4), generator=torch.Generator().manual_seed(0))
    b = pipe.stream(text, 12, (2, 4), generator=torch.Generator().manual_seed(1))
    mixed_a, mixed_b = [], []
    for ca, cb in zip(a, b):
        mixed_a.append(ca)
        mixed_b.append(cb)
    alone_a = pipe.generate(text, 12, (2, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat(mixed_a, 1), alone_a)
