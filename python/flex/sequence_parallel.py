"""Sequence parallel for one video: Ulysses-style attention parallelism over heads.

The N ranks of a group run the same stream (same prompt, same noise). Each rank holds 1/N of
every chunk's tokens through the whole block -- projections, cross-attention, FFN and head --
and all of the chunk's tokens for 1/N of the heads inside self-attention:

    tokens [B, T/N, H, D] --all_to_all--> heads [B, T, H/N, D]     (q, k, v in one exchange)
    qk-RMSNorm runs before it (it spans all heads of a token), RoPE + cache write + ring
    attention after it, on the rank's heads: the ring cache of every layer holds H/N heads
    out   [B, T, H/N, D]  --all_to_all--> [B, T/N, H, D]
    and once per pass the head's output tokens are gathered, so every rank returns the
    whole chunk's flow (the stream's host bookkeeping stays identical on every rank).

A rank's token shard is the same slice of every frame ([F, tpf] -> [F, tpf/N]), so the
per-frame modulation of the blocks applies to a shard unchanged. N must divide the heads and
the tokens per frame. The cross-attention text K/V stay whole on every rank (they are small:
L = 512 text tokens against T = 4,680 chunk tokens at 480x832, and sharding them would need a
third exchange per layer).

The exchanges are torch's functional collectives, which run eagerly and are traced by
torch.compile, so a compiled pass (``compile=True`` / ``"frozen"``) keeps them inside its graph.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol

from .errors import SettingsError
from .rope import head_rows


def qk_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Wan's qk RMSNorm over all H*D of each token of x [B, T, H, D], in x's dtype."""
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.flatten(2).to(dt)
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.to(dt)
    return y.to(x.dtype).view(x.shape)


@dataclass(frozen=True)
class ParallelPlan:
    """Sequence parallel over a process group (default: the whole world) of ``size`` ranks."""

    size: int
    rank: int
    group: object = None  # a torch.distributed ProcessGroup; None = the default group

    @classmethod
    def from_group(cls, group=None) -> "ParallelPlan":
        """The plan of this process in ``group`` (torch.distributed must be initialised)."""
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("sequence parallel needs torch.distributed initialised "
                             "(see flex.jobs.distributed.launch.init_process_group)")
        return cls(dist.get_world_size(group), dist.get_rank(group), group)

    def __post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"sequence parallel size must be an int >= 1, got {self.size!r}")
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 <= self.rank < self.size:
            raise ValueError(f"rank must be an int in [0, {self.size}), got {self.rank!r}")

    # ------------------------------------------------------------ rules

    def check(self, num_heads: int, tokens_per_frame: int | None = None) -> None:
        """N must divide the head count and the tokens of a frame: a clear error otherwise."""
        if num_heads % self.size:
            raise ValueError(f"sequence parallel size {self.size} must divide the model's {num_heads} heads "
                             f"(each rank attends with num_heads / N of them)")
        if tokens_per_frame is not None and tokens_per_frame % self.size:
            raise ValueError(f"sequence parallel size {self.size} must divide the {tokens_per_frame} tokens of a "
                             f"latent frame (each rank holds the same share of every frame)")

    def local_heads(self, num_heads: int) -> int:
        return num_heads // self.size

    def own_heads(self, table: torch.Tensor | None, num_heads: int) -> torch.Tensor | None:
        """This rank's rows of a per-head RoPE table [n, H, C, 2] (rank r attends with head group r,
        see :meth:`tokens_to_heads`), made contiguous once for every layer's kernels; a table
        shared by every head [n, C, 2], or None, as it is."""
        local = self.local_heads(num_heads)
        rows = head_rows(table, slice(self.rank * local, (self.rank + 1) * local))
        return rows if rows is table else rows.contiguous()

    # ------------------------------------------------------------ token shards

    def split_tokens(self, hs: torch.Tensor, n_frames: int) -> torch.Tensor:
        """This rank's shard [B, F * tpf/N, C] of a chunk's tokens [B, F * tpf, C]."""
        b, t, c = hs.shape
        return hs.view(b, n_frames, self.size, t // (n_frames * self.size), c)[:, :, self.rank].reshape(b, -1, c)

    @property
    def process_group(self):
        return self.group if self.group is not None else dist.group.WORLD

    def gather_tokens(self, shard: torch.Tensor, n_frames: int) -> torch.Tensor:
        """The whole chunk [B, F * tpf, C] from every rank's shard [B, F * tpf/N, C]."""
        b, t, c = shard.shape
        pieces = funcol.all_gather_tensor(shard.contiguous(), 0, self.process_group)  # [N * B, T/N, C]
        pieces = pieces.view(self.size, b, n_frames, t // n_frames, c)
        return pieces.permute(1, 2, 0, 3, 4).reshape(b, -1, c)

    # ------------------------------------------------------------ the two exchanges of attention

    def attention_inputs(self, attn, q, k, v, n_frames: int, eps: float):
        """q, k, v [B, T/N, H, D] of this rank's tokens -> qk-normed q, k and v [B, T, H/N, D] of
        this rank's heads. The RMSNorm spans all heads of a token, so it runs before the exchange
        (computed in float32, float64 for float64) and the fused kernel then skips it."""
        stacked = torch.stack((qk_norm(q, attn.norm_q.weight, eps), qk_norm(k, attn.norm_k.weight, eps), v))
        q, k, v = self.tokens_to_heads(stacked, n_frames).unbind(0)
        return q.contiguous(), k.contiguous(), v.contiguous()


    def tokens_to_heads(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """[..., B, F * tpf/N, H, D] (all heads of this rank's tokens) -> [..., B, F * tpf, H/N, D]
        (all tokens of this rank's heads); leading dims (q, k, v stacked) travel together."""
        *lead, b, t, h, d = x.shape
        n = self.size
        # Send head group r to rank r: [N, ..., B, F, tpf/N, H/N, D], contiguous per destination.
        send = x.reshape(*lead, b, n_frames, t // n_frames, n, h // n, d).movedim(-3, 0).contiguous()
        recv = funcol.all_to_all_single(send, None, None, self.process_group)
        # recv[s] holds rank s's token shard: put the shards back inside their frames.
        recv = recv.movedim(0, -4)  # [..., B, F, N, tpf/N, H/N, D]
        return recv.reshape(*lead, b, t * n, h // n, d)

    def heads_to_tokens(self, x: torch.Tensor, n_frames: int) -> torch.Tensor:
        """[B, F * tpf, H/N, D] (this rank's heads) -> [B, F * tpf/N, H, D] (this rank's tokens)."""
        b, t, hl, d = x.shape
        n = self.size
        # Send token shard r (the same slice of every frame) to rank r.
        send = x.reshape(b, n_frames, n, t // (n_frames * n), hl, d).movedim(2, 0).contiguous()
        recv = funcol.all_to_all_single(send, None, None, self.process_group)
        # recv[s] holds head group s of this rank's tokens: heads in rank order.
        recv = recv.movedim(0, -3)  # [B, F, tpf/N, N, H/N, D]
        return recv.reshape(b, t // n, n * hl, d)


def check_step_options(compile=False, cuda_graphs=False) -> None:
    """Sequence parallel runs eagerly or compiled; a CUDA graph would capture its collectives,
    which is not supported yet."""
    if cuda_graphs:
        raise SettingsError("cuda_graphs", "sequence parallel does not run under cuda_graphs yet (compile works)",
                            leads=False)


def check_parallel(parallel, model, compile=False, cuda_graphs=False) -> None:
    """Pipeline(parallel=...) rules: a ParallelPlan whose size divides the model's heads, and no
    CUDA graphs (:func:`check_step_options`)."""
    if not isinstance(parallel, ParallelPlan):
        raise SettingsError("parallel", f"must be a flex.sequence_parallel.ParallelPlan or None, "
                                        f"got {type(parallel).__name__}")
    parallel.check(model.num_heads)
    check_step_options(compile, cuda_graphs)


__all__ = ["ParallelPlan", "check_parallel", "check_step_options", "qk_norm"]
