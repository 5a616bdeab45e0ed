"""Positions policies: per chunk, the RoPE thetas, the position shift and the softmax scale.

The core asks a positions policy, once per chunk, for ``for_chunk(first_frame, n_frames,
total_frames) -> (Rope3D, shift, scale)``; :func:`flex.positions.chunk_positions` turns that into
the chunk's query table and (with rotate-on-load) every resident slot's key table: a frame f
sits at position f when it is a sink frame, else at f - shift, queries and keys alike. The
thetas' temporal part is [C_t] (every head alike) or [H, C_t] (a table per head).

:class:`RopePositions` is what a FlexConfig's own fields say (the FLEX method and every RoPE
strategy, absolute or window positions); a method's positions factory may wrap it (e.g.
:class:`HeadJitter`). Policies read the config's fields only, so this module needs no import
of :mod:`flex.config`.
"""
from __future__ import annotations

from ..rope import Rope3D, logit_scale
from .registry import MethodError, method_parts, resolved


class RopePositions:
    """The RoPE thetas, position shift and softmax scale a FlexConfig's fields give.

    With "absolute" positions the RoPE length L is the frame count (the requested total when
    static, the current end frame when dynamic); with "window" positions it is the span of
    positions actually used, min(frames, sink + window), and positions slide with the window.
    """

    def __init__(self, config, head_dim: int):
        self.config = config
        self.head_dim = head_dim
        self._rope: tuple[int, Rope3D] | None = None

    @property
    def rotate_on_load(self) -> bool:
        return self.config.rotate_on_load

    def length_and_shift(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[int, int]:
        """(length L that sets the RoPE scale S, position shift) of chunk [first_frame, +n_frames)."""
        cfg = self.config
        end = first_frame + n_frames
        cap = cfg.sink_frames + cfg.window_frames
        windowed = cfg.position_policy == "window"
        span = (lambda f: min(f, cap)) if windowed else (lambda f: f)
        length = span(end) if cfg.dynamic else span(total_frames)
        return length, (max(0, end - cap) if windowed else 0)

    def rope_for_length(self, length: int) -> Rope3D:
        """The thetas for RoPE length L (kept while L does not change)."""
        if self._rope is None or self._rope[0] != length:
            cfg = self.config
            self._rope = (length, Rope3D.for_wan(self.head_dim, cfg.strategy, length, cfg.l_train,
                                                 cfg.alpha, cfg.beta, cfg.rope_base))
        return self._rope[1]

    def for_chunk(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[Rope3D, int, float]:
        """(RoPE thetas, position shift, softmax scale) of chunk [first_frame, +n_frames)."""
        cfg = self.config
        length, shift = self.length_and_shift(first_frame, n_frames, total_frames)
        scale = self.head_dim ** -0.5 * logit_scale(cfg.strategy, length, cfg.l_train)
        return self.rope_for_length(length), shift, scale


class Wrapped:
    """A policy that changes another's thetas only: shift and scale pass through."""

    def __init__(self, inner):
        self.inner = inner
        self._cache: tuple[Rope3D, Rope3D] | None = None

    config = property(lambda self: self.inner.config)
    head_dim = property(lambda self: self.inner.head_dim)
    rotate_on_load = property(lambda self: self.inner.rotate_on_load)

    def length_and_shift(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[int, int]:
        return self.inner.length_and_shift(first_frame, n_frames, total_frames)

    def thetas(self, rope: Rope3D) -> Rope3D:
        raise NotImplementedError

    def _wrap(self, rope: Rope3D) -> Rope3D:
        # The same object while the inner thetas do not change (the fixed-buffer pass copies
        # thetas only when the object changes).
        if self._cache is None or self._cache[0] is not rope:
            self._cache = (rope, self.thetas(rope))
        return self._cache[1]

    def rope_for_length(self, length: int) -> Rope3D:
        return self._wrap(self.inner.rope_for_length(length))

    def for_chunk(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[Rope3D, int, float]:
        rope, shift, scale = self.inner.for_chunk(first_frame, n_frames, total_frames)
        return self._wrap(rope), shift, scale


def build_positions(config, head_dim: int, num_heads: int | None = None):
    """The positions policy of ``config``: its own fields' (:class:`RopePositions`), wrapped by
    the positions factory of each part of ``config.method``, left to right."""
    policy = RopePositions(config, head_dim)
    for spec in method_parts(config.method):
        if spec.positions is not None:
            if num_heads is None:
                raise MethodError("num_heads", f"method {spec.name!r} needs the model's head count (num_heads)")
            policy = spec.positions(config, resolved(spec, config.method_params), head_dim, num_heads, policy)
    return policy


__all__ = ["RopePositions", "Wrapped", "build_positions"]
