"""The causal Wan model: Wan2.1 parameter names, checkpoint loading, numerics conventions."""
import math

import pytest
import torch

from flex import reference
from flex.models import CausalWanModel, WanConfig, sinusoidal_embedding, wan_config
from flex.rope import Rope3D


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    return CausalWanModel("tiny", **kw).to(dtype)


def expected_names(layers):
    """The Wan2.1 / Self Forcing parameter names listed in FLEX.md."""
    names = ["patch_embedding.weight", "patch_embedding.bias", "head.head.weight", "head.head.bias", "head.modulation"]
    for mod in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"):
        names += [f"{mod}.weight", f"{mod}.bias"]
    for i in range(layers):
        p = f"blocks.{i}."
        names.append(p + "modulation")
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                names += [f"{p}{attn}.{lin}.weight", f"{p}{attn}.{lin}.bias"]
            names += [f"{p}{attn}.norm_q.weight", f"{p}{attn}.norm_k.weight"]
        names += [p + "norm3.weight", p + "norm3.bias"]
        names += [f"{p}ffn.{j}.{w}" for j in (0, 2) for w in ("weight", "bias")]
    return names


def test_1_3b_parameter_names_and_shapes():
    with torch.device("meta"):
        model = CausalWanModel("wan2.1-t2v-1.3b")
    sd = model.state_dict()
    assert sorted(sd) == sorted(expected_names(30))
    shapes = {
        "patch_embedding.weight": (1536, 16, 1, 2, 2), "text_embedding.0.weight": (1536, 4096),
        "time_embedding.0.weight": (1536, 256), "time_projection.1.weight": (9216, 1536),
        "blocks.0.modulation": (1, 6, 1536), "blocks.29.self_attn.norm_q.weight": (1536,),
        "blocks.3.ffn.0.weight": (8960, 1536), "blocks.3.ffn.2.weight": (1536, 8960),
        "blocks.7.norm3.weight": (1536,), "head.head.weight": (64, 1536), "head.modulation": (1, 2, 1536),
    }
    for name, shape in shapes.items():
        assert tuple(sd[name].shape) == shape, name
    assert 1.40e9 < sum(p.numel() for p in model.parameters()) < 1.45e9  # "1.3B" (Wan: 1.42e9)
    assert model.head_dim == 128 and not list(model.buffers())


def test_presets_and_unknown_preset():
    assert wan_config("tiny").head_dim == 32
    assert wan_config("tiny", num_layers=3).num_layers == 3
    with pytest.raises(ValueError, match=r"preset must be one of \['tiny', 'wan2.1-t2v-1.3b', 'wan2.1-t2v-14b'\]"):
        CausalWanModel("wan2.2")
    with pytest.raises(ValueError, match="num_heads"):
        wan_config("tiny", num_heads=3)
    with pytest.raises(ValueError, match="patch_size"):
        wan_config("tiny", patch_size=(2, 2, 2))
    cfg = WanConfig.from_dict({"_class_name": "WanModel", "model_type": "t2v", "dim": 1536, "eps": 1e-6,
                               "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "num_heads": 12,
                               "num_layers": 30, "out_dim": 16, "text_len": 512})
    assert cfg == wan_config("wan2.1-t2v-1.3b")


def test_state_dict_round_trip_strict():
    model, twin = tiny(seed=0), tiny(seed=1)
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 16, 2, 4, dtype=torch.float64)
    text = torch.randn(1, 5, 32, dtype=torch.float64)
    assert torch.equal(model.forward_full(x, 500.0, text), twin.forward_full(x, 500.0, text))

    # Parameters only (no buffers): a missing or extra key is an error.
    sd = model.state_dict()
    sd.pop("head.modulation")
    with pytest.raises(RuntimeError, match="head.modulation"):
        twin.load_state_dict(sd, strict=True)
    prefixed = {f"model.{k}": v for k, v in model.state_dict().items()}  # Self Forcing's wrapper
    with pytest.raises(RuntimeError, match="Unexpected key"):
        twin.load_state_dict(prefixed, strict=True)
    twin.load_state_dict({k.removeprefix("model."): v for k, v in prefixed.items()}, strict=True)


def test_sinusoidal_embedding_is_cos_then_sin_of_raw_t():
    t = torch.tensor([0.0, 937.5, 833.3333129882812])
    emb = sinusoidal_embedding(8, t)
    freqs = 10000.0 ** (-torch.arange(4, dtype=torch.float64) / 4)
    assert emb.dtype == torch.float64
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    angles = t.double()[1:, None] * freqs
    torch.testing.assert_close(emb[1:], torch.cat((angles.cos(), angles.sin()), 1), rtol=0, atol=1e-15)


def test_cached_chunk_equals_dense_forward():
    """One chunk through the ring cache + ops == forward_full (independent norm/RoPE code)."""
    model = tiny()
    text = model.encode_text(torch.randn(2, 7, 32, dtype=torch.float64))
    x = torch.randn(2, 3, 16, 4, 6, dtype=torch.float64)
    t = torch.tensor([[1000.0, 937.5, 625.0], [0.0, 10.0, 500.0]])
    cache = model.new_cache(2, 2, 3, sink_frames=0, window_frames=6)
    cached = model(x, t, text, cache, 0, backend="reference")
    dense = model.forward_full(x, t, text)
    torch.testing.assert_close(cached, dense, rtol=1e-12, atol=1e-12)
    assert cached.shape == x.shape and cached.dtype == torch.float64


def test_op_rope_is_wans_complex_rope():
    """The ops' interleaved tables equal Wan's rope_apply (complex multiply, freqs split t/h/w),
    past frame 1024 too; forward_full uses Wan's form, so the cached == dense tests tie both."""
    rope = Rope3D.for_wan(32, "flex", 40, 6)
    qpos = torch.tensor([17, 1033])
    z = torch.randn(1, 2 * 4, 2, 32, dtype=torch.float64)
    ft, fh, fw = rope.tables(17, 1, 2, 2, dtype=torch.float64)
    ft2, _, _ = rope.tables(1033, 1, 2, 2, dtype=torch.float64)
    ref = torch.cat((reference.rope3d(z[:, :4], ft, fh, fw, 2, 2), reference.rope3d(z[:, 4:], ft2, fh, fw, 2, 2)), 1)
    zc = torch.view_as_complex(z.reshape(1, 8, 2, 16, 2))
    tok = torch.arange(8)
    ang = torch.cat((qpos[tok // 4, None].double() * rope.thetas_t, ((tok // 2) % 2)[:, None].double() * rope.thetas_h,
                     (tok % 2)[:, None].double() * rope.thetas_w), 1)
    wan_style = torch.view_as_real(zc * torch.polar(torch.ones_like(ang), ang)[None, :, None]).flatten(-2)
    torch.testing.assert_close(wan_style, ref, rtol=0, atol=1e-13)


def test_unpatchify_matches_wan_layout():
    model = tiny()
    out = {}
    model.head.register_forward_hook(lambda m, i, o: out.setdefault("head", o))
    x = torch.randn(1, 2, 16, 4, 6, dtype=torch.float64)
    y = model.forward_full(x, 300.0, torch.randn(1, 4, 32, dtype=torch.float64))
    # Wan: u.view(f, h, w, p, q, r, c) -> einsum('fhwpqrc->cfphqwr') -> [c, f*p, h*q, w*r]
    u = out["head"][0].view(2, 2, 3, 1, 2, 2, 16)
    wan = torch.einsum("fhwpqrc->cfphqwr", u).reshape(16, 2, 4, 6)
    assert torch.equal(y[0], wan.transpose(0, 1))


def test_modulation_is_per_frame():
    """With a diagonal mask every frame is computed alone, with its own timestep."""
    model = tiny()
    text = model.encode_text(torch.randn(1, 4, 32, dtype=torch.float64))
    x = torch.randn(1, 3, 16, 2, 4, dtype=torch.float64)
    ts = [1000.0, 625.0, 0.0]
    eye = torch.eye(3, dtype=torch.bool)
    joint = model.forward_full(x, torch.tensor(ts), text, mask=eye)
    for f, t in enumerate(ts):
        alone = model.forward_full(x[:, f:f + 1], t, text, query_pos=torch.tensor([f]))
        torch.testing.assert_close(joint[:, f:f + 1], alone, rtol=1e-13, atol=1e-13)
    assert not torch.allclose(joint[:, 0], model.forward_full(x[:, :1], 625.0, text)[:, 0])


@pytest.mark.parametrize("fp32_modulation", [True, False])
def test_bf16_model_runs_close_to_fp32(fp32_modulation):
    model32 = tiny(torch.float32)
    model16 = tiny(torch.bfloat16, fp32_modulation=fp32_modulation)
    text = torch.randn(1, 4, 32)
    x = torch.randn(1, 3, 16, 2, 4)
    ref = model32(x, 937.5, model32.encode_text(text), model32.new_cache(1, 1, 2, 0, 3), 0, backend="reference")
    out = model16(x, 937.5, model16.encode_text(text), model16.new_cache(1, 1, 2, 0, 3), 0, backend="reference")
    assert out.dtype == (torch.float32 if fp32_modulation else torch.bfloat16)
    assert torch.isfinite(out).all()
    assert (out.float() - ref).norm() / ref.norm() < 0.05


def test_bad_model_inputs():
    model = tiny(torch.float32)
    text = model.encode_text(torch.randn(1, 4, 32))
    cache = model.new_cache(1, 1, 2, 0, 3)
    x = torch.randn(1, 3, 16, 2, 4)
    with pytest.raises(ValueError, match="x must be latents"):
        model(torch.randn(1, 3, 15, 2, 4), 1.0, text, cache, 0)
    with pytest.raises(ValueError, match="multiples of the patch"):
        model(torch.randn(1, 3, 16, 3, 4), 1.0, text, cache, 0)
    with pytest.raises(ValueError, match="token grid"):
        model(torch.randn(1, 3, 16, 4, 4), 1.0, text, cache, 0)
    with pytest.raises(ValueError, match="cache overflow"):
        model(torch.randn(1, 6, 16, 2, 4), 1.0, text, cache, 0)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.ones(2, 3), text, cache, 0)
    with pytest.raises(ValueError, match="text must be"):
        model.encode_text(torch.randn(1, 17, 32))
    with pytest.raises(ValueError, match="batch"):
        model(torch.randn(2, 3, 16, 2, 4), 1.0, text, model.new_cache(2, 1, 2, 0, 3), 0)
    with pytest.raises(ValueError, match="backend must be one of"):
        model(x, 1.0, text, cache, 0, backend="tensorrt")
    with pytest.raises(ValueError, match="first_frame"):
        model(x, 1.0, text, cache, -3)
    assert math.isclose(model.head_dim ** -0.5, 32 ** -0.5)


def test_rope_split_is_wans_rope_params():
    """Wan: rope_params(1024, d - 4 (d // 6)), rope_params(1024, 2 (d // 6)) x 2 for head dim d."""
    for d in (128, 32):
        model_rope = Rope3D.for_wan(d)
        dims = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
        for thetas, dim in zip((model_rope.thetas_t, model_rope.thetas_h, model_rope.thetas_w), dims):
            wan = 1.0 / torch.pow(10000, torch.arange(0, dim, 2).to(torch.float64).div(dim))
            torch.testing.assert_close(thetas, wan, rtol=1e-15, atol=0)
