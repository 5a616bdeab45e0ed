"""The methods that change temporal positions: FLEX, infinity-RoPE, re-RoPE streaming, LoL jitter.

Each is registered in :data:`flex.methods.registry.METHODS` from here.

* ``flex`` -- the FlexConfig's own positions (the FLEX paper, arXiv 2602.14027, and the classic
  RoPE strategies of ``strategy``): the default.
* ``infinity-rope`` -- Block-Relativistic RoPE of infinity-RoPE (arXiv 2511.20649, Sec. 3,
  "Block-Relativistic RoPE"; official code github.com/yesiltepe-hidir/infinity-rope, commit
  63d7b84, ``wan/modules/causal_model.py``, ``CausalWanSelfAttention.forward`` and
  ``block_relativistic_rope``). Cached keys are stored unrotated; at every pass the resident
  frames are rotated to positions 0, 1, ... in cache order (the sink first), and the new
  block's queries sit at the end of that frame, ``max_attention_frames - n`` onwards once the
  cache is full. That is the project's ``position_policy="window"`` exactly (sink frame f at f,
  window frame f at f - (end - (sink + window))), so the method is that policy plus the rule
  that makes it bounded: sink + window <= l_train, so no position ever leaves the trained
  range however long the video. Its official settings (``configs/self_forcing_dmd.yaml``,
  ``model_kwargs``): local_attn_size 6, sink_size 1 -> sink 1 + window 5. KV Flush and RoPE
  Cut (prompt switches) are not part of it here.
* ``re-rope`` -- re-RoPE streaming as NVIDIA FlashDreams runs Self Forcing: a sink of 5 latent
  frames and a window of 7, cached keys re-rotated to their current window positions, plain
  RoPE. A preset of existing options (see ``settings``), nothing new underneath.
* ``lol-jitter`` -- multi-head RoPE jitter of LoL (arXiv 2601.16914, Sec. 4): each attention
  head h gets its own temporal RoPE base, base_h = base * (1 + strength * u_h) with u_h drawn
  uniformly from [-1, 1) by a generator seeded with ``seed``, so heads stop falling into phase
  with the sink frames together (sink collapse). Strength 0.8 on all heads is the paper's best
  setting. Its code is not released; the distribution of u_h is our reading of the text. The
  jitter multiplies whatever thetas the inner policy gives (theta_{h,m} = theta_m * (1 +
  strength * u_h)^(-2m/d_t)), so on plain RoPE it is exactly the jittered base and on FLEX it
  jitters the FLEX-modulated thetas. Per-head thetas reach the kernels as per-head tables
  ([n, H, C_t, 2]), which every backend's kernels read (C++, CUDA, Triton); under sequence
  parallel each rank takes the rows of its own heads.
"""
from __future__ import annotations

import torch

from ..rope import Rope3D, axis_planes
from .positions import Wrapped
from .registry import MethodError, MethodSpec, float_param, int_param, register


def _require_window(name: str):
    def check(config, params) -> None:
        if config.position_policy != "window":
            raise MethodError("position_policy", f"must be 'window' for method {name!r} "
                                                 f"(cached keys re-rotated to their window positions), "
                                                 f"got {config.position_policy!r}")
    return check


def _check_infinity_rope(config, params) -> None:
    _require_window("infinity-rope")(config, params)
    cap = config.sink_frames + config.window_frames
    if cap > config.l_train:
        raise MethodError("window_frames", f"sink_frames + window_frames ({cap}) must be <= l_train "
                                           f"({config.l_train}) for method 'infinity-rope': positions then "
                                           f"never leave the trained range", leads=False)


def jitter_factors(num_heads: int, head_dim: int, strength: float, seed: int, heads: float = 1.0) -> torch.Tensor:
    """[H, C_t] float64: theta_{h,m} / theta_m when head h's temporal base is base * (1 + strength * u_h).

    u_h ~ U[-1, 1) from a CPU generator seeded with ``seed`` (the same on every device); only
    the first max(1, round(heads * H)) heads of a seeded permutation are jittered (factor 1
    elsewhere): any ``heads`` in (0, 1] jitters at least one head.
    """
    planes = axis_planes(head_dim)[0]
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(num_heads, generator=gen, dtype=torch.float64) * 2 - 1
    chosen = torch.randperm(num_heads, generator=gen)[: max(1, round(heads * num_heads))]
    scale = torch.ones(num_heads, dtype=torch.float64)
    scale[chosen] = 1 + strength * u[chosen]
    exponent = -torch.arange(0, 2 * planes, 2, dtype=torch.float64) / (2 * planes)
    return scale[:, None] ** exponent[None, :]


def jittered(rope: Rope3D, factors: torch.Tensor) -> Rope3D:
    """``rope`` with a per-head temporal factor [H, C_t] (:func:`jitter_factors`): thetas_t becomes
    [H, C_t], from a shared [C_t] or an already per-head [H, C_t]."""
    t = rope.thetas_t
    return Rope3D((t if t.dim() == 2 else t[None]) * factors.to(t.device), rope.thetas_h, rope.thetas_w)


class HeadJitter(Wrapped):
    """The inner policy's thetas with a per-head temporal factor: thetas_t becomes [H, C_t]."""

    def __init__(self, inner, factors: torch.Tensor):
        super().__init__(inner)
        self.factors = factors

    def thetas(self, rope: Rope3D) -> Rope3D:
        return jittered(rope, self.factors)


def _jitter_positions(config, params, head_dim, num_heads, inner):
    return HeadJitter(inner, jitter_factors(num_heads, head_dim, params["strength"], params["seed"], params["heads"]))


FLEX = register(MethodSpec(
    "flex", frozenset({"positions"}),
    "the FlexConfig's own temporal RoPE (FLEX, or the strategy named by --rope)",
    "FLEX, arXiv 2602.14027",
    composes_with=frozenset({"lol-jitter", "cache"}),
))

INFINITY_ROPE = register(MethodSpec(
    "infinity-rope", frozenset({"positions"}),
    "Block-Relativistic RoPE: a moving frame, cached keys rotated back, positions bounded by the window",
    "infinity-RoPE, arXiv 2511.20649, Sec. 3; github.com/yesiltepe-hidir/infinity-rope @ 63d7b84",
    settings=(("sink_frames", 1), ("window_frames", 5), ("position_policy", "window")),
    composes_with=frozenset({"lol-jitter", "cache"}),
    check=_check_infinity_rope,
))

RE_ROPE = register(MethodSpec(
    "re-rope", frozenset({"positions"}),
    "re-RoPE streaming (FlashDreams' Self Forcing): sink 5 + window 7, keys re-rotated, plain RoPE",
    "NVIDIA FlashDreams' Self Forcing streaming; a preset of existing options",
    settings=(("strategy", "none"), ("sink_frames", 5), ("window_frames", 7), ("position_policy", "window")),
    composes_with=frozenset({"lol-jitter", "cache"}),
    check=_require_window("re-rope"),
))

LOL_JITTER = register(MethodSpec(
    "lol-jitter", frozenset({"positions"}),
    "multi-head RoPE jitter: each head its own temporal RoPE base (breaks sink collapse)",
    "LoL, arXiv 2601.16914, Sec. 4 (code not released)",
    params=(
        float_param("strength", 0.8, "jitter strength sigma: base_h = base * (1 + sigma * u_h), u_h ~ U[-1, 1)",
                    0.0, 1.0, high_open=True),
        int_param("seed", 0, "seed of the per-head draws (the same jitter for the same seed)", 0, 2**63 - 1),
        float_param("heads", 1.0, "fraction of the heads jittered (1 = all, the paper's best)", 0.0, 1.0,
                    low_open=True),
    ),
    composes_with=frozenset({"flex", "infinity-rope", "re-rope", "cache"}),
    positions=_jitter_positions,
))

__all__ = ["FLEX", "HeadJitter", "INFINITY_ROPE", "LOL_JITTER", "RE_ROPE", "jitter_factors"]
