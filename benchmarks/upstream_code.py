"""Import the public upstream code beside the repository (never copied into it), for the
benchmarks and the tests.

``../shared/upstream/{self-forcing,longlive-v1.0}`` (override the folder with
FLEX_UPSTREAM_DIR) hold Self Forcing (commit 33593df) and LongLive v1.0 (commit e52d9ef).
Both name their packages ``wan``, ``utils``, ``pipeline``: :func:`import_upstream` imports the
modules asked for with the repository on sys.path, then takes its packages out of
sys.modules again, so the other repository can be imported in the same process.

What a CPU cannot load is stubbed, and only that:

* ``wan/__init__.py`` and ``wan/modules/__init__.py`` (they import xfuser, the multi-GPU
  library, and every model): the packages are entered without running them;
* ``wan.modules.t5`` calls ``torch.cuda.current_device()`` at import: a stand-in (the tests and
  benchmarks give prompt embeddings, never text);
* ``demo_utils.memory`` / ``utils.memory`` call ``torch.cuda.current_device()`` at import: a
  stand-in with the names the pipelines import;
* einops, when it is not installed, is a stand-in whose functions raise (the inference path
  never calls them);
* flash attention (flash-attn is not installable here, and upstream's cross-attention needs
  it): :func:`use_plain_attention` makes upstream's ``attention`` / ``flash_attention`` plain
  SDPA in the inputs' dtype (upstream's own fallback casts to bf16).

:func:`float64_norms` removes the one float32 rounding upstream does even in a float64 model
(``WanRMSNorm`` upcasts with ``x.float()``), for the float64 equivalence tests.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F



def _default_upstream() -> Path:
    """FLEX_UPSTREAM_DIR, else ``shared/upstream`` beside the repository (or beside a folder
    above it, for a git worktree kept in a subfolder)."""
    if os.environ.get("FLEX_UPSTREAM_DIR"):
        return Path(os.environ["FLEX_UPSTREAM_DIR"])
    repo = Path(__file__).resolve().parents[1]
    for above in repo.parents:
        if (above / "shared" / "upstream").is_dir():
            return above / "shared" / "upstream"
    return repo.parent / "shared" / "upstream"


UPSTREAM = _default_upstream()
REPOS = {"self-forcing": "Self Forcing (commit 33593df)", "longlive-v1.0": "LongLive v1.0 (commit e52d9ef)"}
PACKAGES = ("wan", "utils", "pipeline", "demo_utils", "model", "trainer")


class UpstreamMissing(FileNotFoundError):
    """The upstream repository is not there (e.g. in a user's clone)."""


def upstream_dir(repo: str | Path) -> Path:
    """The folder of upstream repository ``repo`` (a name under UPSTREAM, or a path)."""
    root = Path(repo) if Path(repo).is_absolute() or str(repo).startswith(".") else UPSTREAM / repo
    if not (root / "wan" / "modules" / "causal_model.py").is_file():
        raise UpstreamMissing(f"upstream code not found at {root} (it lives beside the repository in "
                              f"../shared/upstream; set FLEX_UPSTREAM_DIR to use another folder)")
    return root


def _raiser(name):
    def absent(*args, **kwargs):
        raise RuntimeError(f"{name} is a test stand-in (the package is not installed)")
    return absent


def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    module.__dict__.update(attrs)
    return module


def _memory_stand_in(name: str) -> types.ModuleType:
    names = ("get_cuda_free_memory_gb", "move_model_to_device_with_memory_preservation", "log_gpu_memory")
    return _stand_in(name, gpu=torch.device("cpu"), cpu=torch.device("cpu"),
                     DynamicSwapInstaller=type("DynamicSwapInstaller", (), {}),
                     **{n: _raiser(f"{name}.{n}") for n in names})


def _purge() -> None:
    for key in [k for k in sys.modules if k.split(".")[0] in PACKAGES]:
        del sys.modules[key]


@contextlib.contextmanager
def _on_path(root: Path):
    _purge()
    sys.path.insert(0, str(root))
    stubs = {"demo_utils.memory": _memory_stand_in("demo_utils.memory"),
             "utils.memory": _memory_stand_in("utils.memory")}
    # The packages entered without their __init__ (which imports every model, xfuser and T5),
    # and T5, whose module calls torch.cuda.current_device() at import (the tests and the
    # benchmarks give the prompt embeddings).
    stubs["wan"] = _stand_in("wan", __path__=[str(root / "wan")])
    stubs["wan.modules"] = _stand_in("wan.modules", __path__=[str(root / "wan" / "modules")])
    stubs["wan.modules.t5"] = _stand_in("wan.modules.t5", **{n: _raiser(f"wan.modules.t5.{n}") for n in (
        "umt5_xxl", "T5EncoderModel", "T5Encoder", "T5Decoder", "T5Model")})
    for name, attrs in (("einops", ("rearrange", "repeat")),):
        if importlib.util.find_spec(name) is None:
            stubs[name] = _stand_in(name, **{a: _raiser(f"{name}.{a}") for a in attrs})
    added = [k for k in stubs if k not in sys.modules]
    sys.modules.update({k: stubs[k] for k in added})
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in added:
            sys.modules.pop(k, None)
        _purge()


def import_upstream(repo: str | Path, *names: str) -> dict[str, types.ModuleType]:
    """Modules ``names`` of upstream repository ``repo`` (UpstreamMissing when it is absent)."""
    root = upstream_dir(repo)
    with _on_path(root):
        mods = {name: importlib.import_module(name) for name in names}
        use_plain_attention([m for k, m in sys.modules.items() if k.startswith("wan.")])
    return mods


def _sdpa(q, k, v, *args, **kwargs):
    """[B, L, H, D] attention in the inputs' dtype, without masks (what upstream's inference asks)."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2).to(q.dtype), v.transpose(1, 2).to(q.dtype))
    return out.transpose(1, 2).contiguous()


def use_plain_attention(modules) -> None:
    for mod in modules:
        for attr in ("attention", "flash_attention"):
            if hasattr(mod, attr):
                setattr(mod, attr, _sdpa)


@contextlib.contextmanager
def float64_norms(model_module: types.ModuleType):
    """Upstream's WanRMSNorm computed in the input's dtype when it is float64 (else as upstream)."""
    cls = model_module.WanRMSNorm
    original = cls.forward

    def forward(self, x):
        if x.dtype != torch.float64:
            return original(self, x)
        return self._norm(x) * self.weight

    cls.forward = forward
    try:
        yield
    finally:
        cls.forward = original


# ---------------------------------------------------------------- an upstream pipeline to run

class PromptEmbeddings(torch.nn.Module):
    """Stands in for upstream's T5 text encoder: the given embeddings [B, L, text_dim]."""

    def __init__(self, embeddings: torch.Tensor):
        super().__init__()
        self.embeddings = embeddings

    def forward(self, text_prompts):
        return {"prompt_embeds": self.embeddings}


class LatentsAsVideo(torch.nn.Module):
    """Stands in for upstream's VAE: decoding is measured elsewhere; the latents are returned."""

    def decode_to_pixel(self, latents, use_cache=False):
        return latents


def model_sized_kv_cache(pipeline, frames: int) -> None:
    """Upstream's ``_initialize_kv_cache`` at the model's own head shape (upstream writes 12 x 128,
    Wan2.1-1.3B's), ``frames`` frames of ``pipeline.frame_seq_length`` tokens unless the caller
    asks for a size (LongLive does)."""
    attn = pipeline.generator.model.blocks[0].self_attn
    layers = len(pipeline.generator.model.blocks)

    def initialize(batch_size, dtype, device, kv_cache_size_override=None):
        size = kv_cache_size_override or frames * pipeline.frame_seq_length
        shape = (batch_size, size, attn.num_heads, attn.head_dim)
        pipeline.kv_cache1 = [
            {"k": torch.zeros(shape, dtype=dtype, device=device), "v": torch.zeros(shape, dtype=dtype, device=device),
             "global_end_index": torch.tensor([0], dtype=torch.long, device=device),
             "local_end_index": torch.tensor([0], dtype=torch.long, device=device)}
            for _ in range(layers)]

    pipeline._initialize_kv_cache = initialize
    pipeline.kv_cache1 = None


def upstream_pipeline(mods, model, prompt_embeds: torch.Tensor, tokens_per_frame: int, *, local_attn_size: int = -1,
                      sink_size: int = 0, chunk: int = 3, steps=(1000, 750, 500, 250), shift: float = 5.0):
    """Upstream's own CausalInferencePipeline (and WanDiffusionWrapper) around upstream ``model``
    (a CausalWanModel of ``mods``), as its configs build it: warped steps, the given shift,
    chunks of ``chunk`` frames. Upstream hard-codes Wan2.1-1.3B's sizes (1560 tokens per
    frame, 30 blocks, 12 x 128 heads): they are set to the model's."""
    wrapper_mod = mods["utils.wan_wrapper"]
    with mock.patch.object(wrapper_mod.CausalWanModel, "from_pretrained", lambda *a, **k: model):  # no files
        generator = wrapper_mod.WanDiffusionWrapper(timestep_shift=shift, is_causal=True,
                                                    local_attn_size=local_attn_size, sink_size=sink_size)
    kwargs = types.SimpleNamespace(local_attn_size=local_attn_size, sink_size=sink_size, timestep_shift=shift)
    args = types.SimpleNamespace(denoising_step_list=list(steps), warp_denoising_step=True, num_frame_per_block=chunk,
                                 independent_first_frame=False, context_noise=0, model_kwargs=kwargs)
    pipeline = mods["pipeline.causal_inference"].CausalInferencePipeline(
        args, device=model.patch_embedding.weight.device, generator=generator,
        text_encoder=PromptEmbeddings(prompt_embeds), vae=LatentsAsVideo())
    pipeline.frame_seq_length = tokens_per_frame
    pipeline.num_transformer_blocks = len(model.blocks)
    model_sized_kv_cache(pipeline, 21 if local_attn_size == -1 else local_attn_size)
    return pipeline


def upstream_model(mods, config, **kwargs):
    """Upstream's CausalWanModel with the sizes of a flex WanConfig (t2v)."""
    return mods["wan.modules.causal_model"].CausalWanModel(
        model_type="t2v", patch_size=tuple(config.patch_size), text_len=config.text_len, in_dim=config.in_dim,
        dim=config.dim, ffn_dim=config.ffn_dim, freq_dim=config.freq_dim, text_dim=config.text_dim,
        out_dim=config.out_dim, num_heads=config.num_heads, num_layers=config.num_layers, eps=config.eps, **kwargs)
