"""Record the official cache methods' self-attention on a tiny random float64 layer.

    python tests/record_upstream_cache_methods.py --rolling-sink PATH   # writes tests/data/upstream_cache_methods.pt

PATH is a checkout of github.com/Rolling-Sink/Rolling-Sink at commit
d7fc0d9f1ebd2345256063aac95ea8add11c9ee6 (only its wan/modules/ files are read). Nothing of
it is copied here: this script imports its ``CausalWanSelfAttention`` (wan/modules/causal_model.py)
and runs it as its pipeline does: one KV cache dict per layer (k, v, k_original, v_original,
global/local end indices), per chunk of 3 frames four noisy passes and one clean pass
(``timestep`` 0, where the roll happens), current_start = first frame * tokens per frame.

Settings that differ from the released run, and why:
* a tiny layer (dim 24, 2 heads of 12, no qk-norm, random float64 weights) on a 2 x 2 token
  grid, so ``max_attention_size`` (hard-coded as 21 * 1560 tokens) is set to 21 * 4 tokens
  after construction, and the cache holds 21 * 4 tokens (the released 21 frames);
* attention in float64 (the released ``attention`` casts to bfloat16 when flash-attn is
  absent): its ``dtype`` argument is bound to float64;
* diffusers / einops are stubbed when missing (only the model classes use them, not the
  attention layer).

The test (tests/test_methods_cache.py) runs the same inputs through flex's ops with
flex.methods.rolling_sink and matches the outputs to 1e-10.
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
DIM, HEADS, GRID = 24, 2, (2, 2)
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


def record_rolling_sink(repo: Path) -> dict:
    cm = import_causal_model(repo)
    torch.manual_seed(0)
    attn = cm.CausalWanSelfAttention(DIM, HEADS, local_attn_size=-1, sink_size=0, qk_norm=False).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    tpf = GRID[0] * GRID[1]
    attn.max_attention_size = CACHE_FRAMES * tpf
    head_dim = DIM // HEADS
    shape = (1, CACHE_FRAMES * tpf, HEADS, head_dim)
    cache = {name: torch.zeros(shape, dtype=torch.float64) for name in ("k", "v", "k_original", "v_original")}
    cache.update(global_end_index=torch.tensor([0]), local_end_index=torch.tensor([0]))
    freqs = rope_freqs(head_dim)
    grid = torch.tensor([[CHUNK, *GRID]])
    g = torch.Generator().manual_seed(1)
    xs, outs = [], []
    with torch.no_grad():
        for c in range(CHUNKS):
            for t in TIMESTEPS:
                x = torch.randn(1, CHUNK * tpf, DIM, generator=g, dtype=torch.float64)
                out = attn(x, torch.tensor([CHUNK * tpf]), grid, freqs, torch.tensor(t), None, cache,
                           current_start=c * CHUNK * tpf)
                xs.append(x)
                outs.append(out)
    return {"weights": {k: v.clone() for k, v in attn.state_dict().items()}, "x": torch.stack(xs),
            "out": torch.stack(outs), "chunk": CHUNK, "grid": GRID, "cache_frames": CACHE_FRAMES,
            "timesteps": TIMESTEPS, "commit": "d7fc0d9f1ebd2345256063aac95ea8add11c9ee6"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rolling-sink", type=Path, required=True, help="checkout of Rolling-Sink/Rolling-Sink")
    args = parser.parse_args()
    data = {"rolling_sink": record_rolling_sink(args.rolling_sink)}
    OUT.parent.mkdir(exist_ok=True)
    torch.save(data, OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
