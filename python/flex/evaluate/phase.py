"""RoPE phase concentration: where a positions policy will make the queries "see" the sink again.

LoL (Cui et al., "LoL: Longer than Longer, Scaling Video Generation to Hour", arXiv 2601.16914)
traces sink collapse -- the video snapping back to its first frames at fixed latent indices,
~132 and ~201 for plain RoPE with a 3-frame sink -- to the temporal RoPE phases of a query and
the sink keys realigning across planes (and heads) at once. The curve here needs no weights:

    concentration(f) = mean over heads h, temporal planes m and sink keys s of
                       cos(theta[h, m] * (q(f) - k_s(f)))

the attention logit, relative to its value at distance 0, of a query whose content equals a
sink key's and is spread evenly over the planes. Low-frequency planes make it decay slowly
with distance; collapse risk is its *excess* over that trend, concentration(f) minus its mean
over f - 10 .. f + 10 (edges repeated). Predicted collapses are the local maxima of the excess
above ``threshold`` once the query is past the sink and the first window; for Wan's thetas and
absolute positions the two largest before frame 240 are 133 and 202 (queries at 133 / 202 sit
132 / 201 frames after the middle sink frame).

A positions policy plugs in through one method (any object; no base class needed)::

    phase_inputs(frame: int) -> (query_position, sink_positions, thetas)
        query_position  float: temporal RoPE position of latent frame ``frame``'s queries
        sink_positions  float64 tensor [N]: temporal positions of the N sink keys as those
                        queries read them (after any re-indexing of the cache)
        thetas          float64 tensor [H, P] (or [P]): the temporal thetas those queries and
                        keys are rotated with, per head H (per-head jitter) and plane P

:class:`FlexPositions` implements it for every ``FlexConfig`` (every --rope strategy, absolute
or window positions, static or dynamic S) through flex.positions.PositionPolicy.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checks import check_float, check_int

TREND_HALF_WIDTH = 10  # frames each side of the local mean the excess is measured against
DEFAULT_THRESHOLD = 0.1


class FlexPositions:
    """The phase inputs of a FlexConfig's positions policy for a video of ``total_frames``."""

    def __init__(self, config, total_frames: int, head_dim: int = 128, num_heads: int = 12):
        from ..positions import PositionPolicy

        self.config = config
        self.total_frames = check_int("total_frames", total_frames, 1)
        self.policy = PositionPolicy(config, head_dim, num_heads)  # a method's per-head thetas need the heads

    def phase_inputs(self, frame: int):
        cfg = self.config
        first = frame - frame % cfg.chunk_frames
        rope, shift, _ = self.policy.for_chunk(first, min(cfg.chunk_frames, self.total_frames - first),
                                               self.total_frames)
        sinks = torch.arange(min(cfg.sink_frames, frame), dtype=torch.float64)  # sink keys keep their positions
        return float(frame - shift), sinks, rope.thetas_t


def concentration(policy, frames) -> torch.Tensor:
    """[len(frames)] float64: the phase concentration of each latent frame's queries on the sink."""
    out = []
    for f in frames:
        q, sinks, thetas = policy.phase_inputs(int(f))
        thetas = torch.as_tensor(thetas, dtype=torch.float64)
        thetas = thetas[None] if thetas.ndim == 1 else thetas
        sinks = torch.as_tensor(sinks, dtype=torch.float64)
        if sinks.numel() == 0:
            out.append(float("nan"))
            continue
        angles = (q - sinks)[:, None, None] * thetas[None]
        out.append(float(angles.cos().mean()))
    return torch.tensor(out, dtype=torch.float64)


def excess(curve: torch.Tensor, half_width: int = TREND_HALF_WIDTH) -> torch.Tensor:
    """``curve`` minus its moving mean over 2 * half_width + 1 points (edges repeated)."""
    check_int("half_width", half_width, 0)
    padded = torch.cat([curve[:1].expand(half_width), curve, curve[-1:].expand(half_width)])
    trend = padded.unfold(0, 2 * half_width + 1, 1).mean(-1)
    return curve - trend


@dataclass
class PhaseReport:
    """The curve over latent frames 0..n-1 and the predicted collapse frames (largest first)."""

    frames: list[int]
    concentration: list[float]
    excess: list[float]
    peaks: list[tuple[int, float]]

    def to_dict(self) -> dict:
        return {"frames": self.frames, "concentration": self.concentration, "excess": self.excess,
                "predicted_collapse_frames": [{"frame": f, "excess": e} for f, e in self.peaks]}


def phase_report(policy, n_frames: int, first_frame: int, threshold: float = DEFAULT_THRESHOLD) -> PhaseReport:
    """Phase concentration of frames 0..n_frames-1; peaks of its excess from ``first_frame`` on."""
    check_int("n_frames", n_frames, 2)
    check_int("first_frame", first_frame, 0)
    check_float("threshold", threshold)
    frames = list(range(n_frames))
    curve = concentration(policy, frames)
    valid = ~curve.isnan()
    ex = torch.full_like(curve, float("nan"))
    if valid.any():  # a policy without sink frames has nothing to collapse onto
        ex[valid] = excess(curve[valid])
    peaks = [(f, float(ex[f])) for f in range(max(1, first_frame), n_frames - 1)
             if ex[f] > ex[f - 1] and ex[f] >= ex[f + 1] and ex[f] >= threshold]
    peaks.sort(key=lambda p: -p[1])
    return PhaseReport(frames, curve.tolist(), ex.tolist(), peaks)


def flex_phase_report(config, seconds: float, fps: float = 16.0, threshold: float = DEFAULT_THRESHOLD,
                      head_dim: int = 128, num_heads: int = 12) -> PhaseReport:
    """The phase report of a FlexConfig for a video of ``seconds`` (Wan: 4 pixel frames per latent)."""
    check_float("seconds", seconds, 0.0, low_open=True)
    check_float("fps", fps, 0.0, low_open=True)
    n = max(2, (round(seconds * fps) + 3) // 4)
    first = config.sink_frames + config.window_frames
    return phase_report(FlexPositions(config, n, head_dim, num_heads), n, first, threshold)


def write_phase_reports(out, configs: dict, seconds: float, fps: float = 16.0,
                        threshold: float = DEFAULT_THRESHOLD, plot: bool = True) -> dict[str, PhaseReport]:
    """``<out>/phase.json`` (and ``phase.png``): the report of each named FlexConfig."""
    from pathlib import Path

    from .report import write_json

    reports = {name: flex_phase_report(cfg, seconds, fps, threshold) for name, cfg in configs.items()}
    write_json(Path(out) / "phase.json", {
        "seconds": seconds, "fps": fps, "threshold": threshold, "trend_half_width": TREND_HALF_WIDTH,
        "policies": {name: {"config": _config_dict(configs[name]), **r.to_dict()} for name, r in reports.items()}})
    if plot:
        from .plot import plot_phase

        plot_phase(Path(out) / "phase.png", reports, title=f"RoPE phase concentration on the sink, {seconds:g} s")
    return reports


def _config_dict(config) -> dict:
    from dataclasses import asdict

    return asdict(config)
