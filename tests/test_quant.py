"""flex.quant: torchao int8 linears of the causal Wan DiT against a fake-quantised float twin and
the unquantised model; which layers are quantised; the rules of ``quant``; compile and the benchmark."""
import importlib.util
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from flex.config import FlexConfig
from flex.models import CausalWanModel
from flex.pipeline import Pipeline
from flex.quant import QUANT_MODES, check_quant, quantize, quantized_linears

pytestmark = pytest.mark.usefixtures("one_thread")
needs_torchao = pytest.mark.skipif(importlib.util.find_spec("torchao") is None,
                                   reason="torchao is not installed (pip install torchao)")

HW = (2, 4)  # latent 2 x 4 -> 1 x 2 tokens per frame
CFG = FlexConfig(sink_frames=3, window_frames=3, chunk_frames=3)
BLOCK_LINEARS = [f"blocks.{i}.{attn}.{p}" for i in range(2) for attn in ("self_attn", "cross_attn") for p in "qkvo"] \
    + [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)]
KEPT_LINEARS = ["text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
                "head.head"]


def tiny(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return CausalWanModel("tiny").to(dtype).eval()


def text_emb(dtype=torch.float32):
    return torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1)).to(dtype)


def chunk_flow(model, seed=2):
    """Flow prediction of one 3-frame chunk at t = 937.5 on an empty ring."""
    x = torch.randn(1, 3, 16, *HW, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(x, 937.5, text_emb(model.param_dtype), model.new_cache(1, 1, 2, 0, 6), 0)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def fake_int8(t: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per row of the last dim, dequantised: step = absmax / 127.5, q in [-128, 127]
    (values times the reciprocal of the step are rounded, as torchao does: t / step can round
    the other way on an edge)."""
    scale = (t.abs().amax(dim=-1, keepdim=True) / 127.5).clamp_min(torch.finfo(torch.float32).eps)
    return (t * (1.0 / scale)).round().clamp(-128, 127) * scale


# ---------------------------------------------------------------- the rules of quant


def test_unknown_mode_names_quant_and_the_modes():
    with pytest.raises(ValueError, match=r"quant must be one of \('none', 'int8', 'int8-weight', 'fp8'\)"):
        check_quant("int4")
    with pytest.raises(ValueError, match="quant must be one of"):
        quantize(tiny(), "INT8")
    assert QUANT_MODES == ("none", "int8", "int8-weight", "fp8")


def test_none_leaves_the_model_as_it_is():
    model = tiny()
    before = chunk_flow(model)
    assert quantize(model, "none") is model
    assert quantized_linears(model) == []
    assert torch.equal(chunk_flow(model), before)


def test_missing_torchao_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # import now fails
    with pytest.raises(ValueError, match=r"quant='int8' needs torchao: pip install torchao"):
        check_quant("int8", "cpu", torch.float32)
    model = tiny()
    with pytest.raises(ValueError, match="pip install torchao"):
        quantize(model, "int8-weight")
    check_quant("none")  # "none" needs nothing


@needs_torchao
def test_fp8_refused_on_a_cpu_and_for_other_dtypes():
    with pytest.raises(ValueError, match=r"quant='fp8' needs a CUDA GPU with compute capability >= 8.9"):
        check_quant("fp8", "cpu", torch.bfloat16)
    with pytest.raises(ValueError, match=r"quant='fp8' needs a model dtype in \(bfloat16\), got float32"):
        check_quant("fp8", None, torch.float32)
    model = tiny(torch.bfloat16)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        quantize(model, "fp8")
    assert quantized_linears(model) == []  # refused before anything changed


@needs_torchao
def test_float64_and_bad_filters_refused():
    with pytest.raises(ValueError, match=r"quant='int8' needs a model dtype in \(float32, bfloat16, float16\), got float64"):
        quantize(tiny(torch.float64), "int8")
    with pytest.raises(ValueError, match="filter must be a callable"):
        quantize(tiny(), "int8", filter="blocks")
    with pytest.raises(ValueError, match="filter selected no nn.Linear"):
        quantize(tiny(), "int8", filter=lambda module, name: False)


@needs_torchao
def test_quantising_twice_is_refused():
    model = quantize(tiny(), "int8")
    with pytest.raises(ValueError, match="already quantised"):
        quantize(model, "int8-weight")


# ---------------------------------------------------------------- which layers, what they compute


@needs_torchao
@pytest.mark.parametrize("mode", ["int8", "int8-weight"])
def test_block_linears_quantised_embeddings_and_head_kept(mode):
    model = tiny()
    kept = {name: model.get_submodule(name).weight.detach().clone() for name in KEPT_LINEARS}
    assert quantize(model, mode) is model
    assert sorted(quantized_linears(model)) == sorted(BLOCK_LINEARS)
    for name, weight in kept.items():
        w = model.get_submodule(name).weight
        assert type(w) is torch.nn.Parameter and torch.equal(w, weight), name
    assert type(model.patch_embedding.weight) is torch.nn.Parameter
    # The subclass keeps the weight's dtype and shape: the model's own checks see no difference.
    q = model.blocks[0].ffn[0].weight
    assert q.dtype == torch.float32 and q.shape == (128, 64)
    assert model.param_dtype == torch.float32


@needs_torchao
def test_filter_picks_the_linears():
    model = quantize(tiny(), "int8-weight", filter=lambda module, name: name.endswith(".ffn.0") or name == "head.head")
    assert sorted(quantized_linears(model)) == ["blocks.0.ffn.0", "blocks.1.ffn.0", "head.head"]
    assert torch.isfinite(chunk_flow(model)).all()


@needs_torchao
@pytest.mark.parametrize("mode", ["int8", "int8-weight"])
def test_each_quantised_linear_computes_int8_math(mode):
    """Every quantised linear, on the inputs it gets in a real pass, gives what int8 steps give:
    the float linear of its int8-rounded weights (and int8-rounded input, for "int8"). Layer by
    layer: end to end, float rounding of the order of 1e-7 can move an activation across a
    rounding edge and change the rest of the pass by a whole int8 step."""
    model = tiny()
    plain = {name: (model.get_submodule(name).weight.detach().clone(), model.get_submodule(name).bias.detach().clone())
             for name in BLOCK_LINEARS}
    quantize(model, mode)
    seen = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = (args[0].clone(), out.clone())
        return hook

    for name in BLOCK_LINEARS:
        model.get_submodule(name).register_forward_hook(record(name))
    chunk_flow(model)
    assert sorted(seen) == sorted(BLOCK_LINEARS)
    for name, (x, out) in seen.items():
        weight, bias = plain[name]
        ref = F.linear(fake_int8(x) if mode == "int8" else x, fake_int8(weight), bias)
        assert rel_err(out, ref) < 1e-5, name
        assert rel_err(out, F.linear(x, weight, bias)) > 1e-4, name  # and int8 is not float


@needs_torchao
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["int8", "int8-weight"])
def test_flow_close_to_the_unquantised_model(mode, dtype):
    """Symmetric int8 steps are absmax / 127.5, so each rounded weight or activation is off by at
    most 0.4 % of its row's absmax and the errors of a dot product mostly cancel: a few 1e-3 of
    the output's max through the 12 quantised linears (measured ~2e-3 in float32). 5e-2 leaves
    room for bfloat16 (its own step is 0.8 %) and still fails when a layer is quantised wrong."""
    model = tiny(dtype)
    plain = chunk_flow(model)
    out = chunk_flow(quantize(model, mode))
    assert out.dtype == plain.dtype and torch.isfinite(out).all()
    assert rel_err(out, plain) < 5e-2


# ---------------------------------------------------------------- pipelines


def generate(pipe, frames=6):
    return pipe.generate(text_emb(pipe.model.param_dtype), frames, HW, generator=torch.Generator().manual_seed(3))


@needs_torchao
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generate_on_a_quantised_model_gives_finite_close_latents(dtype):
    model = tiny(dtype)
    with torch.no_grad():
        plain = generate(Pipeline(model, CFG), 9)
        out = generate(Pipeline(quantize(model, "int8"), CFG), 9)
    assert torch.isfinite(out).all() and out.shape == plain.shape
    assert rel_err(out, plain) < 5e-2


@needs_torchao
def test_inductor_compile_matches_eager():
    """The torchao weights trace through torch.compile (inductor, CPU): same latents as eager up
    to the rounding of the dynamic activation scales (a value on a rounding edge may move one
    int8 step)."""
    model = quantize(tiny(), "int8")
    with torch.no_grad():
        eager = generate(Pipeline(model, CFG, backend="cpp"))
        compiled = generate(Pipeline(model, CFG, backend="cpp", compile=True))
    assert torch.isfinite(compiled).all()
    assert rel_err(compiled, eager) < 1e-2


@needs_torchao
@pytest.mark.parametrize("mode", ["int8", "int8-weight"])
def test_bf16_traced_pass_matches_eager(mode):
    """bfloat16 through dynamo and AOT autograd (the graph inductor would compile)."""
    model = quantize(tiny(torch.bfloat16), mode)
    with torch.no_grad():
        eager = generate(Pipeline(model, CFG, backend="cpp"))
        traced = generate(Pipeline(model, CFG, backend="cpp", compile="aot_eager"))
    assert rel_err(traced, eager) < 2e-2


# ---------------------------------------------------------------- the benchmark


@needs_torchao
def test_quant_suite_quick_schema():
    from benchmarks import quant_suite

    def decode(latents):  # a stand-in decoder: latents -> uint8 frames
        return ((latents.float().clamp(-1, 1) + 1) * 127.5).to(torch.uint8)

    result = quant_suite.run(torch.device("cpu"), torch.float32, quick=True, repeats=2, decode=decode)
    modes = [row["mode"] for row in result["rows"]]
    assert modes == ["none", "int8", "int8-weight"]
    for row in result["rows"]:
        assert row["latent_fps"]["median"] > 0 and math.isfinite(row["latent_fps"]["median"])
        if row["mode"] == "none":
            assert row["max_abs_diff"] == 0 and row["speedup_vs_none"]["median"] == 1 and row["psnr_db"] is None
        else:
            assert 0 < row["mean_abs_diff"] <= row["max_abs_diff"] < 1 and row["psnr_db"] > 20
            lo, med, hi = (row["speedup_vs_none"][k] for k in ("min", "median", "max"))
            assert lo <= med <= hi
    assert "CUDA" in result["skipped"]["fp8"]
