"""Record the official cache methods' self-attention on a tiny random float64 layer.

    python tests/record_upstream_cache_methods.py --rolling-sink RS --memrope MR
    # writes tests/data/upstream_cache_methods.pt

RS is a checkout of github.com/Rolling-Sink/Rolling-Sink at commit
d7fc0d9f1ebd2345256063aac95ea8add11c9ee6, MR one of github.com/YoungRaeKimm/MemRoPE at commit
b89bf5b87ca84efa2e40e1c7cc43a44fe88ab865 (only their wan/modules/ files are read). Nothing of
them is copied here: this script imports each one's ``CausalWanSelfAttention``
(wan/modules/causal_model.py) and runs it as its pipeline does, per chunk of 3 frames four
noisy passes and one clean pass, current_start = first frame * tokens per frame:
* Rolling Sink: one KV cache dict (k, v, k_original, v_original, global/local end indices),
  ``timestep`` 0 on the clean pass (where the roll happens);
* MemRoPE (configs/selfforcing/memrope_60s.yaml: local_attn_size 12, sink 3, recent 4,
  block RoPE, EMA 0.01 / 0.1): the cache dict (k, v, end indices), and after every pass the
  model's ``CausalWanModel._apply_cache_updates`` with what the layer returned (it uses no
  model state), as its ``_forward_inference`` does after all blocks; EMA rates 0.3 / 0.6
  instead of 0.01 / 0.1, so that every update shows in the outputs.

Settings that differ from the released run, and why:
* a tiny layer (dim 12, 2 heads of 6, no qk-norm, random float64 weights) on a 2 x 2 token
  grid, so ``max_attention_size`` (hard-coded as frames * 1560 tokens) is set to frames * 4
  tokens after construction, and the cache holds that many (21 and 12 frames as released);
* attention in float64 (the released ``attention`` casts to bfloat16 when flash-attn is
  absent): its ``dtype`` argument is bound to float64;
* diffusers / einops are stubbed when missing (only the model classes use them, not the
  attention layer).

The test (tests/test_methods_cache.py) runs the same inputs through flex's ops with
flex.methods.rolling_sink / flex.methods.memrope and matches the outputs to 1e-10.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).parent / "data" / "upstream_cache_methods.pt"
DIM, HEADS, GRID = 12, 2, (2, 2)
CHUNK, CHUNKS, CACHE_FRAMES = 3, 15, 21
TIMESTEPS = (1000.0, 750.0, 500.0, 250.0, 0.0)


def _stub_missing(name: str, **attrs) -> None:
    try:
        importlib.import_module(name)
    except ImportError:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
        for key, value in attrs.items():
            setattr(sys.modules[name], key, value)


def import_causal_model(repo: Path):
    """Import wan/modules/causal_model.py of ``repo`` without running wan/__init__.py."""
    _stub_missing("diffusers.configuration_utils", ConfigMixin=object, register_to_config=lambda f: f)
    _stub_missing("diffusers.models.modeling_utils", ModelMixin=torch.nn.Module)
    _stub_missing("einops", repeat=None, rearrange=None)
    for name, path in (("wan", repo / "wan"), ("wan.modules", repo / "wan" / "modules")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    module = importlib.import_module("wan.modules.causal_model")
    module.attention = functools.partial(module.attention, dtype=torch.float64)
    return module


def rope_freqs(head_dim: int) -> torch.Tensor:
    """Wan's complex RoPE table (as CausalWanModel builds it), 1024 positions."""
    def params(dim):
        angles = torch.outer(torch.arange(1024), 1.0 / torch.pow(10000, torch.arange(0, dim, 2).double() / dim))
        return torch.polar(torch.ones_like(angles), angles)
    d = head_dim
    return torch.cat((params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))), dim=1)


def _run(attn, cache_frames: int, names, step) -> dict:
    """Random weights and inputs through ``step(attn, x, t, cache, current_start)`` for every pass."""
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tpf = GRID[0] * GRID[1]
    attn.max_attention_size = cache_frames * tpf
    shape = (1, cache_frames * tpf, HEADS, DIM // HEADS)
    cache = {name: torch.zeros(shape, dtype=torch.float64) for name in names}
    cache.update(global_end_index=torch.tensor([0]), local_end_index=torch.tensor([0]))
    g = torch.Generator().manual_seed(1)
    xs, outs = [], []
    with torch.no_grad():
        for c in range(CHUNKS):
            for t in TIMESTEPS:
                x = torch.randn(1, CHUNK * tpf, DIM, generator=g, dtype=torch.float64)
                xs.append(x)
                outs.append(step(attn, x, t, cache, c * CHUNK * tpf))
    return {"weights": {k: v.clone() for k, v in attn.state_dict().items()}, "x": torch.stack(xs),
            "out": torch.stack(outs), "chunk": CHUNK, "grid": GRID, "cache_frames": cache_frames,
            "timesteps": TIMESTEPS}


def _args(x):
    return torch.tensor([x.shape[1]]), torch.tensor([[CHUNK, *GRID]]), rope_freqs(DIM // HEADS)


def record_rolling_sink(repo: Path) -> dict:
    cm = import_causal_model(repo)
    torch.manual_seed(0)
    attn = cm.CausalWanSelfAttention(DIM, HEADS, local_attn_size=-1, sink_size=0, qk_norm=False).double()

    def step(attn, x, t, cache, start):
        return attn(x, *_args(x), torch.tensor(t), None, cache, current_start=start)

    return {**_run(attn, CACHE_FRAMES, ("k", "v", "k_original", "v_original"), step),
            "commit": "d7fc0d9f1ebd2345256063aac95ea8add11c9ee6"}


def record_memrope(repo: Path, alpha_long: float, alpha_short: float) -> dict:
    cm = import_causal_model(repo)
    torch.manual_seed(0)
    attn = cm.CausalWanSelfAttention(DIM, HEADS, local_attn_size=12, sink_size=3, recent_size=4, qk_norm=False,
                                     use_block_rope=True, compression_method="ema", ema_alpha_long=alpha_long,
                                     ema_alpha_short=alpha_short).double()

    def step(attn, x, t, cache, start):
        out, update = attn(x, *_args(x), None, cache, current_start=start)
        cm.CausalWanModel._apply_cache_updates(None, [cache], [(0, update)])
        return out

    return {**_run(attn, 12, ("k", "v"), step), "sink": 3, "recent": 4, "alpha_long": alpha_long,
            "alpha_short": alpha_short, "commit": "b89bf5b87ca84efa2e40e1c7cc43a44fe88ab865"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rolling-sink", type=Path, required=True, help="checkout of Rolling-Sink/Rolling-Sink")
    parser.add_argument("--memrope", type=Path, required=True, help="checkout of YoungRaeKimm/MemRoPE")
    args = parser.parse_args()
    data = {"rolling_sink": record_rolling_sink(args.rolling_sink)}
    for name in [m for m in list(sys.modules) if m == "wan" or m.startswith("wan.")]:
        del sys.modules[name]  # the second repository has its own wan package
    data["memrope"] = record_memrope(args.memrope, 0.3, 0.6)
    assert torch.equal(data["memrope"].pop("x"), data["rolling_sink"]["x"])  # the same inputs: stored once
    data["x"] = data["rolling_sink"].pop("x")
    OUT.parent.mkdir(exist_ok=True)
    torch.save(data, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
