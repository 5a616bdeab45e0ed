"""Causal Wan2.1 DiT as Self Forcing runs it, on FLEX's ring KV cache and fused ops.

Parameter names and shapes are Wan2.1's (``WanModel``), so a Self Forcing / CausVid / LongLive
generator state dict loads with ``strict=True`` once its ``model.`` prefix is stripped (see
:func:`flex.loading.load_dit`). The numerics follow Wan:

* patchify with a Conv3d (kernel = stride = patch), tokens in (frame, row, column) order;
* timestep -> sinusoidal(freq_dim) of the raw t in [cos, sin] order (float64) ->
  time_embedding -> e; e0 = time_projection(e) in 6 chunks, one set per latent frame;
* each block: x += gate * self_attn(norm1(x) * (1 + scale) + shift);
  x += cross_attn(norm3(x), text); x += gate_ffn * ffn(norm2(x) * (1 + scale_ffn) + shift_ffn);
* qk RMSNorm over the full width (fp32), Wan's interleaved 3D RoPE (temporal / height / width
  planes = C - 2 (C // 3), C // 3, C // 3 of the C = head_dim / 2 planes);
* head: (head.modulation + e) -> shift, scale; out = head(norm(x) * (1 + scale) + shift),
  unpatchified to [B, F, out_dim, H, W].

Precision: Linear / Conv layers run in the parameters' dtype. The residual stream, the time
embedding and all modulation math run in float32 (float64 when the model is float64) with the
weights they use upcast -- original Wan's convention (it runs these under
``autocast(float32)``). ``fp32_modulation=False`` instead keeps everything in the parameter
dtype, which is what Self Forcing's all-bf16 generator does (its autocasts are commented out).

Self-attention of a chunk goes through the two ops of a pass planned by :func:`flex.ops.plan`
(qk-norm + RoPE + k/v straight into their ring slots, then attention of the chunk's queries
over every resident slot), placed by :func:`flex.positions.chunk_positions`.
:meth:`CausalWanModel.forward_full` is the dense twin (:mod:`flex.models.dense`).
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..cache import ModelKVCache, TextCache, WanKVCache  # noqa: F401  (WanKVCache: the former name)
from ..positions import ChunkPositions, chunk_positions, frame_positions
from ..rope import Rope3D
from .config import WAN_PRESETS, WanConfig, wan_config  # noqa: F401  (re-exported)
from .dense import dense_forward
from .layers import Head, WanAttentionBlock, linear_in, sinusoidal_embedding


def ring_self_attention(kernels: ops.PassKernels, positions: ChunkPositions, layer, slot_frame, q, k, v, norm_q,
                        norm_k, eps: float, grid_h: int, grid_w: int, resident_tokens: int | None,
                        observe=None) -> torch.Tensor:
    """One layer's cached self-attention of a chunk: qk-RMSNorm + 3D RoPE of the raw projections
    q, k, v [B, T, H, D] with k, v written straight into their slots of ``layer`` (a RingKVCache),
    then the chunk's queries over every resident slot. Shared by :meth:`CausalWanModel.chunk_pass`
    and the integrations that run other code's models on these ops (flex.integrations).
    ``observe(q_rot)``: a cache policy that scores the cached keys by these queries."""
    pos = positions
    q_rot = kernels.norm_rope_cache_write(q, k, v, norm_q, norm_k, eps, pos.freqs_t, pos.freqs_h, pos.freqs_w,
                                          grid_h, grid_w, 0, layer.k, layer.v, pos.slots, not pos.rotate_on_load)
    if observe is not None:
        observe(q_rot)
    return kernels.ring_attention(q_rot, layer.k, layer.v, slot_frame, grid_h * grid_w, 0, 0, pos.scale,
                                  pos.key_freqs_t, False, resident_tokens)


class CausalWanModel(nn.Module):
    """Wan2.1 T2V DiT generating chunk by chunk over a ring KV cache (Self Forcing style)."""

    def __init__(self, config: str | WanConfig = "wan2.1-t2v-1.3b", *, fp32_modulation: bool = True, **overrides):
        super().__init__()
        cfg = wan_config(config, **overrides)
        self.config = cfg
        self.fp32_modulation = fp32_modulation
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList([WanAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.head = Head(cfg)

    # -- small properties
    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def num_heads(self) -> int:
        return self.config.num_heads

    @property
    def head_dim(self) -> int:
        return self.config.head_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def eps(self) -> float:
        return self.config.eps

    @property
    def param_dtype(self) -> torch.dtype:
        return self.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.patch_embedding.weight.device

    @property
    def stream_dtype(self) -> torch.dtype:
        """dtype of the residual stream, modulation and outputs (see module docstring)."""
        wdt = self.param_dtype
        if wdt == torch.float64 or not self.fp32_modulation:
            return wdt
        return torch.float32

    @property
    def table_dtype(self) -> torch.dtype:
        """RoPE tables: float64 for a float64 model, else float32."""
        return torch.float64 if self.param_dtype == torch.float64 else torch.float32

    def default_rope(self) -> Rope3D:
        """Wan's unmodified 3D RoPE for this head size."""
        return Rope3D.for_wan(self.head_dim, "none", base=self.config.rope_base)

    # -- caches
    def new_cache(self, batch: int, grid_h: int, grid_w: int, sink_frames: int = 0, window_frames: int = 21,
                  dtype: torch.dtype | None = None, device=None, parallel=None) -> ModelKVCache:
        """Ring KV caches of every layer for a [grid_h x grid_w]-token frame grid.

        Sequence parallel (``parallel``, a flex.sequence_parallel.ParallelPlan): this rank's 1/N of the heads."""
        heads = self.num_heads if parallel is None else parallel.local_heads(self.num_heads)
        return ModelKVCache(self.num_layers, batch, heads, self.head_dim, grid_h, grid_w, sink_frames,
                          window_frames, dtype or self.param_dtype, device or self.device)

    def encode_text(self, context: torch.Tensor) -> TextCache:
        """Text embedding + every layer's cross-attention K/V of context [B, L <= text_len, text_dim].

        Like Wan, the context is zero-padded to text_len tokens and every token is attended.
        """
        cfg = self.config
        if not isinstance(context, torch.Tensor) or context.dim() != 3 or context.shape[-1] != cfg.text_dim \
                or not 1 <= context.shape[1] <= cfg.text_len:
            shape = tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__
            raise ValueError(f"text must be [B, L <= {cfg.text_len}, {cfg.text_dim}], got {shape}")
        context = context.to(self.device, self.param_dtype)
        if context.shape[1] < cfg.text_len:
            pad = context.new_zeros(context.shape[0], cfg.text_len - context.shape[1], cfg.text_dim)
            context = torch.cat((context, pad), dim=1)
        emb = self.text_embedding(context)
        return TextCache([blk.cross_attn.text_kv(emb) for blk in self.blocks], context.shape[0])

    # -- shared trunk
    def _check_latents(self, x):
        cfg = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 5 or x.shape[2] != cfg.in_dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be latents [B, F, {cfg.in_dim}, H, W], got {shape}")
        _, ph, pw = cfg.patch_size
        if x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(f"latent height/width {tuple(x.shape[3:])} must be multiples of the patch {(ph, pw)}")

    def _timesteps(self, timestep, b, n, device) -> torch.Tensor:
        """[B, F] timesteps from a scalar, [F] or [B, F] (raw t, e.g. 937.5; float32 by default)."""
        t = torch.as_tensor(timestep, device=device)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.dim() > 2:
            raise ValueError(f"timestep must be a scalar, [F] or [B, F], got shape {tuple(t.shape)}")
        try:
            return t.expand(b, n)
        except RuntimeError:
            raise ValueError(f"timestep must broadcast to [B={b}, F={n}], got shape {tuple(t.shape)}") from None

    def forward_with_attention(self, x, timestep, text, attend, parallel=None) -> torch.Tensor:
        """Patchify, time embedding, blocks, head, unpatchify, with self-attention done by
        ``attend(layer_index, self_attn_module, q, k, v) -> [B, T, H, D]`` (q, k, v are the raw
        projections). forward() and forward_full() plug their caches in here; so can callers.
        With sequence parallel (``parallel``) the blocks and the head run on this rank's shard
        of the tokens, and the output tokens are gathered from every rank after the head."""
        cfg = self.config
        b, n, c, h, w = x.shape
        if not isinstance(text, TextCache):
            text = self.encode_text(text)
        if text.batch != b or len(text) != self.num_layers:
            raise ValueError(f"text was encoded for batch {text.batch}, but x has batch {b}")
        sdt, wdt = self.stream_dtype, self.param_dtype
        t = self._timesteps(timestep, b, n, x.device)

        # Time embedding and projection in the stream dtype (float32 modulation).
        s = sinusoidal_embedding(cfg.freq_dim, t).to(sdt)
        te = self.time_embedding
        e = linear_in(te[2], F.silu(linear_in(te[0], s)))
        e0 = linear_in(self.time_projection[1], F.silu(e))
        e, e0 = e.view(b, n, cfg.dim), e0.view(b, n, 6, cfg.dim)

        tokens = self.patch_embedding(x.to(wdt).transpose(1, 2))  # [B, dim, F, gh, gw]
        _, _, _, gh, gw = tokens.shape
        hs = tokens.flatten(2).transpose(1, 2).to(sdt)
        if parallel is not None:  # sequence parallel: this rank's share of every frame's tokens
            hs = parallel.split_tokens(hs, n)
        for i, blk in enumerate(self.blocks):
            hs = blk(hs, e0, n, text.kv[i], lambda attn, q, k, v, i=i: attend(i, attn, q, k, v))
        out = self.head(hs, e, n)  # [B, T, pt*ph*pw*C]
        if parallel is not None:
            out = parallel.gather_tokens(out, n)
        pt, ph, pw = cfg.patch_size
        out = out.view(b, n, gh, gw, pt, ph, pw, cfg.out_dim).permute(0, 1, 4, 7, 2, 5, 3, 6)
        return out.reshape(b, n * pt, cfg.out_dim, gh * ph, gw * pw).to(sdt)

    # -- cached chunk step
    def check_cache(self, cache: ModelKVCache, batch: int, grid_h: int, grid_w: int, parallel=None) -> None:
        """``cache`` must be this model's cache for this batch and token grid (and, with sequence
        parallel, hold this rank's share of the heads)."""
        if parallel is not None:
            parallel.check(self.num_heads, grid_h * grid_w)
        if not isinstance(cache, ModelKVCache) or len(cache.layers) != self.num_layers:
            raise ValueError("cache must be a ModelKVCache of this model (see CausalWanModel.new_cache)")
        if (cache.grid_h, cache.grid_w, cache.batch) != (grid_h, grid_w, batch):
            raise ValueError(
                f"cache was built for batch {cache.batch} and a {cache.grid_h}x{cache.grid_w} token grid, "
                f"got batch {batch} and {grid_h}x{grid_w}")
        if cache.dtype != self.param_dtype:
            raise ValueError(f"cache dtype {cache.dtype} must equal the model's parameter dtype {self.param_dtype}")
        if cache.device != self.device:
            raise ValueError(f"cache is on {cache.device} but the model is on {self.device}")
        heads = self.num_heads if parallel is None else parallel.local_heads(self.num_heads)
        if cache.layers[0].k.shape[2] != heads:
            raise ValueError(f"cache holds {cache.layers[0].k.shape[2]} heads, the pass needs {heads} "
                             f"(sequence parallel: build it with new_cache(..., parallel=plan))")

    def _check_pass(self, x, cache: ModelKVCache, parallel) -> tuple[int, int, int]:
        """Checks shared by every cached pass; (frames, grid_h, grid_w) of latents x."""
        self._check_latents(x)
        b, n, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        self.check_cache(cache, b, h // ph, w // pw, parallel)
        return n, h // ph, w // pw

    def _planned_pass(self, x, timestep, text, cache: ModelKVCache, positions: ChunkPositions, backend, parallel):
        """Plan the pass's kernels for the cache's current state, then run it."""
        resident = cache.table.resident_prefix_tokens()
        kernels = ops.plan(backend, x.device, self.param_dtype, self.head_dim, positions.rotate_on_load,
                           resident_prefix=resident is not None)
        return self.chunk_pass(x, timestep, text, cache, positions, resident, kernels, parallel)

    def forward(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache | torch.Tensor,
        cache: ModelKVCache,
        first_frame: int,
        positions: ChunkPositions | None = None,
        backend: str | Mapping[str, str] = "auto",
        parallel=None,
    ) -> torch.Tensor:
        """Flow prediction of chunk x [B, n, C, H, W] (frames first_frame..+n) at ``timestep``.

        The chunk's k/v are written into its ring slots (overwriting whatever an earlier pass of
        the same chunk wrote) and its queries attend to every resident slot, the chunk itself
        included (bidirectional inside a chunk). ``positions`` (from
        :func:`flex.positions.chunk_positions`) defaults to Wan's absolute positions.
        ``parallel``: a flex.sequence_parallel.ParallelPlan for sequence parallel (its cache holds this
        rank's heads, see :meth:`new_cache`); None runs the whole pass in this process.
        """
        n, gh, gw = self._check_pass(x, cache, parallel)
        if not isinstance(first_frame, int) or isinstance(first_frame, bool) or first_frame < 0:
            raise ValueError(f"first_frame must be an int >= 0, got {first_frame!r}")
        if positions is None:
            positions = chunk_positions(self.default_rope(), cache.table, first_frame, n, gh, gw,
                                        dtype=self.table_dtype)
        elif positions.frames.numel() != n:
            raise ValueError(f"positions were built for {positions.frames.numel()} frames, the chunk has {n}")
        cache.table.reserve(first_frame, n)
        return self._planned_pass(x, timestep, text, cache, positions, backend, parallel)

    def recache(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache | torch.Tensor,
        cache: ModelKVCache,
        frames: Sequence[int],
        positions: ChunkPositions | None = None,
        backend: str | Mapping[str, str] = "auto",
        parallel=None,
    ) -> torch.Tensor:
        """Recompute the K/V of resident ``frames`` (their clean latents x [B, n, C, H, W], in that
        order) in one pass, e.g. under a new prompt: every one of them attends to every resident
        slot, itself and the other re-cached frames included. Returns the flow prediction."""
        n, gh, gw = self._check_pass(x, cache, parallel)
        frames = list(frames)
        resident = set(cache.table.resident_frames())
        if len(frames) != n or len(set(frames)) != n or not set(frames) <= resident:
            raise ValueError(f"frames must be {n} distinct resident frames (resident: {sorted(resident)}), got {frames}")
        if positions is None:
            positions = frame_positions(self.default_rope(), cache.table, torch.tensor(frames, device=cache.device),
                                        gh, gw, dtype=self.table_dtype)
        return self._planned_pass(x, timestep, text, cache, positions, backend, parallel)

    def chunk_pass(
        self,
        x: torch.Tensor,
        timestep,
        text: TextCache,
        cache: ModelKVCache,
        positions: ChunkPositions,
        resident_tokens: int | None,
        kernels: ops.PassKernels,
        parallel=None,
    ) -> torch.Tensor:
        """forward() without validation or host bookkeeping: device tensors in, device work only.

        The chunk's frames are recorded in the slot table, then every layer writes the chunk's
        k/v into their slots and attends over the ring; resident_tokens is the resident ring
        prefix once the chunk is written (for the unmasked backends). Nothing is read back to
        the host, so the pass can be traced whole by torch.compile and captured in a CUDA graph.
        With ``parallel`` (sequence parallel) each layer's attention runs on this rank's heads
        over all of the chunk's tokens, between two all_to_all exchanges (flex.sequence_parallel).
        """
        _, _, _, h, w = x.shape
        _, ph, pw = self.config.patch_size
        gh, gw = h // ph, w // pw
        pos = positions
        cache.table.record(pos.frames, pos.slots)
        if parallel is not None:  # per-head RoPE tables: the rows of this rank's heads
            pos = dataclasses.replace(pos, freqs_t=parallel.own_heads(pos.freqs_t, self.num_heads),
                                      key_freqs_t=parallel.own_heads(pos.key_freqs_t, self.num_heads))
        slot_frame = cache.table.slot_frame

        n = x.shape[1]

        def attend(i, attn, q, k, v):
            layer = cache.layers[i]
            norm_q, norm_k = attn.norm_q.weight, attn.norm_k.weight
            if parallel is not None:  # sequence parallel: qk-normed, all tokens of this rank's heads
                q, k, v = parallel.attention_inputs(attn, q, k, v, n, self.eps)
                norm_q = norm_k = None
            observe = None if cache.observer is None else (lambda q_rot, i=i: cache.observer(i, q_rot))
            out = ring_self_attention(kernels, pos, layer, slot_frame, q, k, v, norm_q, norm_k, self.eps, gh, gw,
                                      resident_tokens, observe)
            return out if parallel is None else parallel.heads_to_tokens(out, n)

        return self.forward_with_attention(x, timestep, text, attend, parallel)

    def forward_full(self, x, timestep, text, mask=None, rope=None, *, query_pos=None, key_pos=None, scale=None):
        """The dense twin: see :func:`flex.models.dense.dense_forward`."""
        return dense_forward(self, x, timestep, text, mask, rope, query_pos=query_pos, key_pos=key_pos, scale=scale)


__all__ = ["CausalWanModel", "ring_self_attention"]
