"""Record ``tests/data/infinity_rope.pt`` from the official infinity-RoPE code.

Upstream: github.com/yesiltepe-hidir/infinity-rope, commit 63d7b84f043a2536ccb62d5171ed54dfadc0a721
(Apache-2.0), ``wan/modules/causal_model.py``: ``CausalWanSelfAttention.forward`` with a KV
cache (the Block-Relativistic RoPE path) and ``block_relativistic_rope``. The upstream code is
imported from a checkout given by ``INFINITY_ROPE_DIR``, never copied here.

One tiny self-attention layer in float64 (dim 24, 2 heads of 12: 2 temporal, 2 height, 2 width
rotation planes; no qk-norm: upstream's WanRMSNorm computes in float32), the official settings
local_attn_size 6 and sink_size 1 (configs/self_forcing_dmd.yaml), chunks of 3 latent frames
of 2 x 3 tokens, 8 chunks (24 frames: the cache evicts from the third chunk on), each chunk run
twice (a "noisy" pass, then a "clean" pass with other inputs, as Self Forcing's denoising and
context passes rewrite the chunk's cache entries). Two adaptations for the tiny grid, both
outside the method's logic: ``max_attention_size`` is set from the tiny frame size (upstream
hard-codes 1560 tokens per frame), and the attention call is plain float64 softmax attention
(upstream's flash-attn wrapper). The fixture holds the weights, every pass's input and the
layer's output.

Run: INFINITY_ROPE_DIR=/path/to/infinity-rope python tests/record_infinity_rope.py
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import torch

OUT = Path(__file__).parent / "data" / "infinity_rope.pt"
DIM, HEADS, GRID, CHUNK, CHUNKS, LOCAL, SINK = 24, 2, (2, 3), 3, 8, 6, 1


def _stub(name, **attrs):
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def load_upstream(root: Path):
    """wan.modules.causal_model from the checkout, with stubs for what a CPU recording cannot load."""
    for pkg in ("wan", "wan.modules"):  # empty packages: the real __init__ pulls in the whole pipeline
        _stub(pkg, __path__=[str(root / pkg.replace(".", "/"))])
    _stub("diffusers")
    _stub("diffusers.configuration_utils", ConfigMixin=object, register_to_config=lambda f: f)
    _stub("diffusers.models")
    _stub("diffusers.models.modeling_utils", ModelMixin=torch.nn.Module)
    _stub("einops", repeat=None)

    def attention(q, k, v, **_):  # [B, L, H, D], plain float64 softmax attention
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    _stub("wan.modules.attention", attention=attention, flash_attention=attention)
    spec = importlib.util.spec_from_file_location("wan.modules.causal_model", root / "wan/modules/causal_model.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    mod.attention = attention
    return mod


def main() -> None:
    root = Path(os.environ["INFINITY_ROPE_DIR"])
    cm = load_upstream(root)
    torch.manual_seed(0)
    layer = cm.CausalWanSelfAttention(DIM, HEADS, local_attn_size=LOCAL, sink_size=SINK, qk_norm=False).double()
    tpf = GRID[0] * GRID[1]
    layer.max_attention_size = LOCAL * tpf
    d = DIM // HEADS
    freqs = torch.cat([cm.rope_params(1024, d - 4 * (d // 6)), cm.rope_params(1024, 2 * (d // 6)),
                       cm.rope_params(1024, 2 * (d // 6))], dim=1)
    cache = {"k": torch.zeros(1, LOCAL * tpf, HEADS, d, dtype=torch.float64),
             "v": torch.zeros(1, LOCAL * tpf, HEADS, d, dtype=torch.float64),
             "global_end_index": torch.tensor([0]), "local_end_index": torch.tensor([0])}
    grid = torch.tensor([[CHUNK, *GRID]])
    inputs, outputs = [], []
    with torch.no_grad():
        for c in range(CHUNKS):
            for _ in range(2):
                x = torch.randn(1, CHUNK * tpf, DIM, dtype=torch.float64)
                y = layer(x, torch.tensor([CHUNK * tpf]), grid, freqs, None, kv_cache=cache,
                          current_start=c * CHUNK * tpf)
                inputs.append(x)
                outputs.append(y)
    OUT.parent.mkdir(exist_ok=True)
    torch.save({"state_dict": layer.state_dict(), "inputs": torch.stack(inputs), "outputs": torch.stack(outputs),
                "settings": dict(dim=DIM, heads=HEADS, grid=GRID, chunk=CHUNK, local_attn_size=LOCAL, sink_size=SINK),
                "upstream": "yesiltepe-hidir/infinity-rope@63d7b84f043a2536ccb62d5171ed54dfadc0a721"}, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
