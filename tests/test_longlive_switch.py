"""Prompt switches against LongLive v1.0's own interactive inference (imported from
../shared/upstream/longlive-v1.0 at test time, never copied): a tiny random float64 model
with the LongLive preset's switch settings reproduces its latents in the cases where the
project used to differ -- an early switch (the sink re-encoded up to the local window, kept
after it), ``global_sink: false`` (the sink moves to the oldest frames of the re-cached
window) and several switch points in one chunk (one prompt per chunk).

Stubbed because a CPU cannot load them: flash-attn (LongLive's fallback attention casts to
bfloat16; the stub runs the same softmax attention in the inputs' dtype), utils.memory
(reads the CUDA device at import), einops (when missing; only imported); and, unused here,
the tokenizer, T5, VAE and infinity-model modules that utils/wan_wrapper.py imports. Wan's
RMSNorm casts to float32 before normalising; here it runs in the input's dtype (float64), as
the project's float64 path does, so the comparison is exact to rounding. LongLive's cache
shapes are hard-coded for Wan 1.3B (12 heads x 128, 512 text tokens, 30 blocks, 1560
tokens per frame): the test pipeline sizes them for the tiny model instead.
"""
from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
import torch

from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline
from flex.presets import MODEL_PRESETS

pytestmark = pytest.mark.usefixtures("one_thread")

LONGLIVE = Path(os.environ.get("FLEX_LONGLIVE_DIR", Path(__file__).resolve().parents[2] / "shared" / "upstream"
                               / "longlive-v1.0"))
HW = (2, 4)
TOKENS_PER_FRAME = 2  # a 2 x 4 latent in 1 x 2 x 2 patches


def _sdpa(q, k, v, **_):
    """LongLive's attention() / flash_attention() without flash-attn, in the inputs' dtype (its
    fallback casts to bf16; flash-attn runs only on a GPU, in half precision)."""
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).contiguous()


@pytest.fixture(scope="module")
def longlive():
    """LongLive's modules: (CausalWanModel, WanDiffusionWrapper, InteractiveCausalInferencePipeline)."""
    if not (LONGLIVE / "pipeline" / "interactive_causal_inference.py").is_file():
        pytest.skip(f"LongLive v1.0's code is not at {LONGLIVE} (set FLEX_LONGLIVE_DIR)")
    before = set(sys.modules)
    stubs = {}
    memory = types.ModuleType("utils.memory")
    memory.gpu = memory.cpu = torch.device("cpu")
    memory.get_cuda_free_memory_gb = lambda *a, **k: 0.0
    memory.DynamicSwapInstaller = memory.log_gpu_memory = memory.move_model_to_device_with_memory_preservation = None
    stubs["utils.memory"] = memory
    try:
        import einops  # noqa: F401
    except ImportError:
        stubs["einops"] = types.ModuleType("einops")
        stubs["einops"].rearrange = stubs["einops"].repeat = None
    for name in ("wan", "wan.modules", "utils", "pipeline"):  # namespaces without their heavy __init__
        package = types.ModuleType(name)
        package.__path__ = [str(LONGLIVE.joinpath(*name.split(".")))]
        stubs[name] = package
    # utils/wan_wrapper.py imports the text encoder, the VAE and the infinity model at the top; the
    # test uses none of them (prompts are given as embeddings, latents are compared before decoding).
    for name, attrs in (("wan.modules.tokenizers", ["HuggingfaceTokenizer"]), ("wan.modules.vae", ["_video_vae"]),
                        ("wan.modules.t5", ["umt5_xxl"]), ("wan.modules.causal_model_infinity", ["CausalWanModel"])):
        stubs[name] = types.ModuleType(name)
        for attr in attrs:
            setattr(stubs[name], attr, None)
    saved_path = list(sys.path)
    sys.path.insert(0, str(LONGLIVE))
    sys.modules.update(stubs)
    try:
        import wan.modules.causal_model as causal_model
        from utils.wan_wrapper import WanDiffusionWrapper
        from utils.scheduler import FlowMatchScheduler
        from pipeline.interactive_causal_inference import InteractiveCausalInferencePipeline
        import wan.modules.model as wan_model
        causal_model.attention = wan_model.flash_attention = _sdpa  # self- and cross-attention
        # Wan's RMSNorm runs in float32 whatever the input (for bf16 weights); the float64
        # comparison runs it in float64, as the project's float64 path does.
        wan_model.WanRMSNorm.forward = lambda self, x: self._norm(x) * self.weight
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:  # keep LongLive's names out of the other tests
            if name.split(".")[0] in ("wan", "utils", "pipeline", "einops"):
                del sys.modules[name]
    return causal_model.CausalWanModel, WanDiffusionWrapper, InteractiveCausalInferencePipeline, FlowMatchScheduler


def longlive_pipeline(modules, ours: CausalWanModel, texts: dict, global_sink: bool):
    """LongLive's interactive pipeline around a copy of ``ours``, with its released interactive
    config (configs/longlive_interactive_inference.yaml: steps 1000/750/500/250 warped, shift 5,
    local_attn_size 12, sink_size 3, 3 frames per block, context_noise 0)."""
    LongLiveModel, Wrapper, Interactive, FlowMatchScheduler = modules
    c = ours.config
    model = LongLiveModel(patch_size=c.patch_size, text_len=c.text_len, in_dim=c.in_dim, dim=c.dim,
                          ffn_dim=c.ffn_dim, freq_dim=c.freq_dim, text_dim=c.text_dim, out_dim=c.out_dim,
                          num_heads=c.num_heads, num_layers=c.num_layers, local_attn_size=12, sink_size=3,
                          qk_norm=True, cross_attn_norm=True, eps=c.eps).to(torch.float64).eval()
    model.load_state_dict(ours.state_dict())
    generator = Wrapper.__new__(Wrapper)  # its __init__ less from_pretrained
    torch.nn.Module.__init__(generator)
    generator.model, generator.uniform_timestep, generator.seq_len = model, False, 32760
    generator.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
    generator.scheduler.set_timesteps(1000, training=True)
    generator.post_init()
    heads, head_dim = c.num_heads, c.dim // c.num_heads

    class TinyShapes(Interactive):
        def _initialize_kv_cache(self, batch_size, dtype, device, kv_cache_size_override=None):
            zeros = lambda: torch.zeros([batch_size, kv_cache_size_override, heads, head_dim], dtype=dtype)  # noqa: E731
            self.kv_cache1 = [{"k": zeros(), "v": zeros(), "global_end_index": torch.tensor([0]),
                               "local_end_index": torch.tensor([0])} for _ in range(c.num_layers)]

        def _initialize_crossattn_cache(self, batch_size, dtype, device):
            zeros = lambda: torch.zeros([batch_size, c.text_len, heads, head_dim], dtype=dtype)  # noqa: E731
            self.crossattn_cache = [{"k": zeros(), "v": zeros(), "is_init": False} for _ in range(c.num_layers)]

    args = types.SimpleNamespace(
        model_kwargs=types.SimpleNamespace(local_attn_size=12, timestep_shift=5.0, sink_size=3),
        denoising_step_list=[1000, 750, 500, 250], warp_denoising_step=True, num_frame_per_block=3,
        context_noise=0, global_sink=global_sink)
    encoder = lambda text_prompts: {"prompt_embeds": texts[text_prompts[0]]}  # noqa: E731
    vae = types.SimpleNamespace(decode_to_pixel=lambda x, use_cache=False: x)
    pipe = TinyShapes(args, torch.device("cpu"), generator=generator, text_encoder=encoder, vae=vae)
    pipe.num_transformer_blocks, pipe.frame_seq_length = c.num_layers, TOKENS_PER_FRAME
    return pipe


def emb(seed):
    return torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def draws(frames, seed=3):
    g = torch.Generator().manual_seed(seed)
    shape = (1, frames, 16, *HW)
    return torch.randn(shape, generator=g, dtype=torch.float64), [torch.randn(shape, generator=g, dtype=torch.float64)
                                                                   for _ in range(3)]


def run_longlive(modules, ours, switch_frames, frames, global_sink=True):
    """LongLive's latents for prompts 0, 1, ... switching at ``switch_frames`` (its re-noise draws
    replaced by the test's, in the order it makes them)."""
    texts = {f"p{i}": emb(10 + i) for i in range(len(switch_frames) + 1)}
    pipe = longlive_pipeline(modules, ours, texts, global_sink)
    noise, renoise = draws(frames)
    order = iter([renoise[i][:, f0:f0 + 3].flatten(0, 1) for f0 in range(0, frames, 3) for i in range(3)])
    real = torch.randn_like
    torch.randn_like = lambda x, *a, **k: next(order)
    try:
        with torch.no_grad():
            _, latents = pipe.inference(noise, text_prompts_list=[[t] for t in texts],
                                        switch_frame_indices=list(switch_frames), return_latents=True)
    finally:
        torch.randn_like = real
    return latents


def run_ours(ours, switch_frames, frames, **stream):
    preset = MODEL_PRESETS["longlive"]
    pipe = Pipeline(ours, preset.baseline_config(), **preset.pipeline_kwargs(), backend="reference")
    noise, renoise = draws(frames)
    prompts = [(0, emb(10))] + [(f, emb(11 + i)) for i, f in enumerate(switch_frames)]
    return pipe.generate(None, frames, HW, noise=noise, renoise=renoise, prompts=prompts, **stream)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CausalWanModel("tiny").to(torch.float64)


TOL = 1e-12


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("switch_frame", [3, 6, 9, 12, 13, 15, 24])
def test_early_and_late_switches_match_longlive(longlive, tiny, switch_frame):
    """LongLive re-encodes the sink with the window while the switch is within its first
    local_attn_size = 12 frames and keeps the sink's old K/V after: the "longlive" mode, the
    LongLive preset's default, does both."""
    theirs = run_longlive(longlive, tiny, [switch_frame], 30)
    ours = run_ours(tiny, [switch_frame], 30)
    assert max_diff(theirs, ours) <= TOL
    # neither of the project's earlier modes matches on both sides of frame 12
    other = run_ours(tiny, [switch_frame], 30, recache="window" if switch_frame <= 12 else "all")
    assert max_diff(theirs, other) > 1e-6


@pytest.mark.parametrize("switch_frames", [[6], [15], [15, 27]])
def test_global_sink_false_matches_longlive(longlive, tiny, switch_frames):
    """global_sink: false: after the first 12 frames a switch recomputes the last 12 frames and
    the oldest 3 of them become the sink from then on."""
    theirs = run_longlive(longlive, tiny, switch_frames, 36, global_sink=False)
    assert max_diff(theirs, run_ours(tiny, switch_frames, 36, global_sink=False)) <= TOL
    if switch_frames != [6]:  # the sink moved: keeping it differs
        assert max_diff(theirs, run_ours(tiny, switch_frames, 36)) > 1e-6


def test_two_switch_points_in_one_chunk_match_longlive(longlive, tiny):
    """LongLive advances one prompt per chunk: switch points 16 and 17 take effect at 18 and 21."""
    theirs = run_longlive(longlive, tiny, [16, 17], 27)
    assert max_diff(theirs, run_ours(tiny, [16, 17], 27)) <= TOL
    assert max_diff(theirs, run_ours(tiny, [18, 21], 27)) <= TOL
