import math

import pytest
import torch

from flex import reference
from flex.rope import STRATEGIES, Rope3D, axis_planes, base_thetas, logit_scale, temporal_thetas


def test_wan_axis_split():
    assert axis_planes(128) == (22, 21, 21)
    assert axis_planes(64) == (12, 10, 10)
    for bad in (127, 4, 0, 128.0):
        with pytest.raises(ValueError, match="head_dim"):
            axis_planes(bad)


def test_flex_check_values_30s():
    ratio = temporal_thetas(128, "flex", length=120, l_train=21) / base_thetas(22)
    s = 120 / 21
    assert math.isclose(s, 5.7143, rel_tol=1e-4)
    expected = [1.0, 0.89652, 0.63796, 0.46784, 0.35591]
    assert torch.allclose(ratio[:5], torch.tensor(expected, dtype=torch.float64), atol=5e-6)
    assert torch.equal(ratio[9:], torch.full((13,), 1 / s, dtype=torch.float64)) or torch.allclose(
        ratio[9:], torch.full((13,), 1 / s, dtype=torch.float64), rtol=1e-15
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("length", [1, 20, 21])
def test_short_videos_are_unchanged(strategy, length):
    assert torch.equal(temporal_thetas(128, strategy, length=length, l_train=21), base_thetas(22))
    assert logit_scale(strategy, length, 21) == 1.0


def test_baseline_formulas():
    theta = base_thetas(22)
    s = 240 / 21
    assert torch.allclose(temporal_thetas(128, "pi", 240, 21), theta / s, rtol=1e-15)
    ntk = temporal_thetas(128, "ntk", 240, 21)
    base = 10000 * s ** (44 / 42)
    assert torch.allclose(ntk, base ** (-torch.arange(0, 44, 2, dtype=torch.float64) / 44), rtol=1e-14)
    assert ntk[0] == 1.0 and ntk[-1] < theta[-1]
    rif = temporal_thetas(128, "riflex", 240, 21)
    changed = (rif != theta).nonzero().flatten().tolist()
    assert len(changed) == 1
    k = changed[0]
    assert abs(2 * math.pi / theta[k] - 21) == (2 * math.pi / theta - 21).abs().min()
    assert math.isclose(rif[k].item(), 0.9 * 2 * math.pi / 240)
    assert math.isclose(logit_scale("yarn", 240, 21), (0.1 * math.log(s) + 1) ** 2)


def test_bad_strategy_parameters():
    with pytest.raises(ValueError, match="strategy"):
        temporal_thetas(128, "linear", 100)
    with pytest.raises(ValueError, match="alpha"):
        temporal_thetas(128, "flex", 100, alpha=3.0, beta=2.5)
    with pytest.raises(ValueError, match="alpha"):
        temporal_thetas(128, "flex", 100, alpha=-0.1)
    with pytest.raises(ValueError, match="l_train"):
        temporal_thetas(128, "flex", 100, l_train=0)
    with pytest.raises(ValueError, match="length"):
        temporal_thetas(128, "flex", 0)


def complex_rope(x, thetas_t, thetas_h, thetas_w, frames, grid_h, grid_w):
    """Independent float64 complex-multiply RoPE, the way upstream Wan applies it."""
    b, t, h, d = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, t, h, d // 2, 2))
    fi, hi, wi = torch.meshgrid(frames.to(torch.float64), torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    ang = torch.cat((fi.reshape(-1, 1) * thetas_t, hi.reshape(-1, 1) * thetas_h, wi.reshape(-1, 1) * thetas_w), dim=1)
    out = xc * torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
    return torch.view_as_real(out).reshape(b, t, h, d)


@pytest.mark.parametrize("offset", [0, 20, 1023, 1_000_000])
@pytest.mark.parametrize("strategy", ["none", "flex"])
def test_reference_rope_matches_complex_multiply(offset, strategy):
    torch.manual_seed(offset)
    gh, gw, nf, d = 5, 7, 3, 64
    rope = Rope3D.for_wan(d, strategy, length=offset + nf, l_train=21)
    ft, fh, fw = rope.tables(offset, nf, gh, gw, dtype=torch.float64)
    x = torch.randn(2, nf * gh * gw, 3, d, dtype=torch.float64)
    got = reference.rope3d(x, ft, fh, fw, gh, gw)
    want = complex_rope(x, rope.thetas_t, rope.thetas_h, rope.thetas_w, torch.arange(offset, offset + nf), gh, gw)
    assert torch.allclose(got, want, atol=1e-9, rtol=0)
    # float32 tables (what kernels read) stay accurate at any frame index.
    ft32, fh32, fw32 = rope.tables(offset, nf, gh, gw)
    got32 = reference.rope3d(x, ft32, fh32, fw32, gh, gw)
    assert (got32 - want).abs().max() < 1e-6 * x.abs().max() * 4


def test_table_offset_equals_sliced_table():
    rope = Rope3D.for_wan(32, "flex", 200)
    ft, fh, fw = rope.tables(0, 10, 3, 4)
    ft5, _, _ = rope.tables(5, 3, 3, 4)
    x = torch.randn(1, 3 * 12, 2, 32)
    assert torch.equal(reference.rope3d(x, ft, fh, fw, 3, 4, frame_offset=5), reference.rope3d(x, ft5, fh, fw, 3, 4))


def test_tables_from_device_tensor_start():
    rope = Rope3D.for_wan(32, "flex", 200)
    a = rope.tables(7, 3, 2, 2)
    b = rope.tables(torch.tensor(7), 3, 2, 2)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
