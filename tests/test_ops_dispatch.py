import pytest
import torch

from flex import ops
from flex.cache import RingKVCache
from flex.config import FlexConfig
from flex.rope import Rope3D


def rope_inputs(d=32, gh=3, gw=4, nf=2):
    ft, fh, fw = Rope3D.for_wan(d).tables(0, nf, gh, gw)
    return torch.randn(1, nf * gh * gw, 2, d), ft, fh, fw, gh, gw


def test_unknown_backend_is_named():
    x, ft, fh, fw, gh, gw = rope_inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.rope3d(x, ft, fh, fw, gh, gw, backend="cudnn")


def test_sdpa_refuses_masked_calls():
    c = RingKVCache(1, 2, 32, 12, 1, 3)
    q = torch.randn(1, 12, 2, 32)
    c.write(q, q, 0)  # one resident frame: resident_tokens=12 is a true prefix
    with pytest.raises(ValueError, match="does not support"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame, 12, chunk_frames=1, backend="sdpa", resident_tokens=12)


@pytest.mark.parametrize("change,match", [
    (dict(x=torch.randn(1, 25, 2, 32)), "multiple of grid_h"),
    (dict(x=torch.randn(1, 24, 2, 30)), "planes"),
    (dict(frame_offset=5), "freqs_t has 2 frames"),
    (dict(frame_offset=-1), "frame_offset"),
    (dict(grid_h=0), "grid_h"),
    (dict(x=torch.randn(1, 24, 2, 64)[..., ::2]), "contiguous"),
    (dict(x=torch.randn(1, 24, 32)), "x must be 4-D"),
])
def test_rope3d_bad_input(change, match):
    x, ft, fh, fw, gh, gw = rope_inputs()
    args = dict(x=x, freqs_t=ft, freqs_h=fh, freqs_w=fw, grid_h=gh, grid_w=gw, frame_offset=0)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        ops.rope3d(**args, backend="reference")


def test_attention_bad_input():
    c = RingKVCache(1, 2, 32, 12, 1, 3)
    q = torch.randn(1, 12, 2, 32)
    with pytest.raises(ValueError, match="k_cache must have dtype"):
        ops.ring_attention(q.half(), c.k, c.v, c.slot_frame, 12)
    with pytest.raises(ValueError, match="slot_frame"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame[:2], 12)
    with pytest.raises(ValueError, match="tokens_per_frame"):
        ops.ring_attention(q, c.k, c.v, c.slot_frame, 0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alpha=3.0), "alpha"), (dict(alpha=-1.0), "alpha"), (dict(rho=1.5), "rho"),
    (dict(l_train=0), "l_train"), (dict(sink_frames=-1), "sink_frames"),
    (dict(window_frames=2), "window_frames"), (dict(strategy="rope"), "strategy"),
    (dict(position_policy="relative"), "position_policy"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlexConfig(**kwargs)


def test_config_presets():
    assert FlexConfig().rotate_on_load is False
    assert FlexConfig(position_policy="window").rotate_on_load
    off = FlexConfig.off(window_frames=30)
    assert off.strategy == "none" and off.rho == 0 and off.sink_frames == 0
    assert FlexConfig.longlive().l_train == 240
