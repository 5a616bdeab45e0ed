"""The self-attention an accelerated upstream block runs: upstream's projections and output
layer, FLEX's ops in between.

Upstream's ``CausalWanSelfAttention.forward(x, seq_lens, grid_sizes, freqs, block_mask,
kv_cache, current_start, cache_start[, sink_recache_after_switch])`` with a KV cache norms q
and k, rotates them with its complex RoPE table, shifts and writes its cache and attends over
it. Here the raw projections go to :func:`flex.models.wan.ring_self_attention` (qk-RMSNorm +
3D RoPE + k/v written into their ring slots, then ring attention) with the pass placed by
:meth:`flex.integrations.runtime.Runtime.begin_pass`; ``freqs``, ``grid_sizes`` and the index
tensors of upstream's cache dicts are not used. Without a KV cache (training, teacher
forcing) upstream's own forward runs unchanged.
"""
from __future__ import annotations

from ..models.wan import ring_self_attention
from .runtime import Runtime


def self_attention(runtime: Runtime, index: int, module, x, seq_lens, grid_sizes, freqs, block_mask,
                   kv_cache=None, current_start=0, cache_start=None, *args, **kwargs):
    """Drop-in ``forward`` of upstream self-attention module ``index`` (bound with functools.partial)."""
    if kv_cache is None or runtime.current is None:
        return type(module).forward(module, x, seq_lens, grid_sizes, freqs, block_mask, kv_cache, current_start,
                                    cache_start, *args, **kwargs)
    run = runtime.current
    b, s = x.shape[:2]
    shape = (b, s, module.num_heads, module.head_dim)
    q, k, v = module.q(x).view(shape), module.k(x).view(shape), module.v(x).view(shape)
    cache = runtime.cache
    out = ring_self_attention(run.kernels, run.positions, cache.layers[index], cache.table.slot_frame, q, k, v,
                             module.norm_q.weight, module.norm_k.weight, module.norm_q.eps, run.grid_h, run.grid_w,
                             run.resident_tokens)
    out = module.o(out.flatten(2))
    if runtime.upstream.returns_cache_update:
        # LongLive applies each block's cache update after the last block; the ring is already
        # written, so only its end indices move: (current_end, local_end_index, no update).
        end = int(current_start) + s
        return out, (end, end, None)
    return out


__all__ = ["self_attention"]
