import pytest
import torch

from flex.cache import RingKVCache, frame_slots


def expected_resident(frames_done, sink, window):
    sink_part = list(range(min(sink, frames_done)))
    rest = list(range(sink, frames_done))[-window:] if window else []
    return sorted(sink_part + rest)


@pytest.mark.parametrize("sink,window,chunk", [(3, 9, 3), (3, 18, 3), (0, 6, 3), (1, 4, 3), (2, 5, 1), (4, 3, 3)])
def test_long_stream_keeps_sink_and_most_recent_window(sink, window, chunk):
    """Bookkeeping of a 10,000-chunk stream, checked exactly after every chunk."""
    cache = RingKVCache(1, 1, 1, 1, sink, window)
    ptr = cache.k.data_ptr()
    for c in range(10_000):
        first = c * chunk
        k = torch.arange(first, first + chunk, dtype=torch.float32).reshape(1, chunk, 1, 1)
        for _ in range(5):  # 4 denoising passes + the clean pass land in the same slots
            cache.write(k, -k, first)
        if c < 50 or c % 997 == 0 or c == 9_999:
            resident = sorted(f for f in cache.slot_frame.tolist() if f >= 0)
            assert resident == expected_resident(first + chunk, sink, window)
            # Every resident slot holds the k/v of the frame it claims.
            occupied = cache.slot_frame >= 0
            assert torch.equal(cache.k.flatten()[occupied], cache.slot_frame[occupied].float())
            assert torch.equal(cache.v.flatten()[occupied], -cache.slot_frame[occupied].float())
    assert cache.k.data_ptr() == ptr and cache.k.numel() == sink + window


def test_resident_slots_form_a_prefix_while_filling():
    cache = RingKVCache(1, 1, 1, 2, 3, 9)
    for c in range(6):
        cache.write(torch.zeros(1, 6, 1, 1), torch.zeros(1, 6, 1, 1), 3 * c)
        n = cache.resident_prefix_tokens() // 2
        assert (cache.slot_frame[:n] >= 0).all() and (cache.slot_frame[n:] < 0).all()


def test_slots_from_device_tensor_match_int():
    cache = RingKVCache(1, 1, 1, 1, 3, 9)
    for first in (0, 3, 27, 1_000_002):
        assert torch.equal(cache.slots(first, 3), cache.slots(torch.tensor(first), 3))
    assert frame_slots(torch.tensor([0, 2, 3, 11, 12, 13]), 3, 9).tolist() == [0, 2, 3, 11, 3, 4]


def test_overflow_and_bad_arguments():
    cache = RingKVCache(1, 2, 4, 5, 3, 6)
    with pytest.raises(ValueError, match="cache overflow"):
        cache.slots(3, 7)
    with pytest.raises(ValueError, match="k must be"):
        cache.write(torch.zeros(1, 7, 2, 4), torch.zeros(1, 7, 2, 4), 0)
    with pytest.raises(ValueError, match="sink_frames"):
        RingKVCache(1, 2, 4, 5, -1, 6)
    with pytest.raises(ValueError, match="window_frames"):
        RingKVCache(1, 2, 4, 5, 0, 0.5)
    with pytest.raises(ValueError, match="sink_frames \\+ window_frames"):
        RingKVCache(1, 2, 4, 5, 0, 0)


def test_reset():
    cache = RingKVCache(1, 1, 1, 1, 1, 2)
    cache.write(torch.ones(1, 3, 1, 1), torch.ones(1, 3, 1, 1), 0)
    cache.reset()
    assert (cache.slot_frame == -1).all() and cache.resident_prefix_tokens() == 0
