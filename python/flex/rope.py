"""Wan's 3D rotary position embedding and the temporal length-extension strategies.

Head dims are split the way Wan splits them: of the D/2 rotation planes, the height and width
axes get C//3 each and the temporal axis the rest (D = 128 -> 22 / 21 / 21 planes, i.e. 44 /
42 / 42 real dims). Plane m of an axis with d real dims turns by theta_m = base^(-2m/d) per
position step. Pairs are interleaved: elements (2p, 2p+1) form plane p.

Only the temporal thetas are ever modified. All angles are computed in float64 from integer
positions, so tables are exact in float32 for any frame index (no 1024-frame limit).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .checks import check_choice, check_float, check_int
from .errors import SettingsError

STRATEGIES = ("none", "flex", "pi", "ntk", "yarn", "riflex")


def axis_planes(head_dim: int) -> tuple[int, int, int]:
    """Rotation planes (temporal, height, width) of a head of ``head_dim`` real dims."""
    if not isinstance(head_dim, int) or head_dim < 6 or head_dim % 2:
        raise ValueError(
            f"head_dim must be an even int >= 6 so it splits into three even parts, got {head_dim!r}"
        )
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def check_base(base, name: str = "base") -> float:
    """The RoPE base must be a finite number > 1 (else thetas are 0, 1, growing or NaN)."""
    return check_float(name, base, 1.0, low_open=True)


def check_gate(alpha, beta) -> tuple[float, float]:
    """The flex / yarn ramp: 0 <= alpha < beta, both finite (in training rotations r_m)."""
    alpha = check_float("alpha", alpha, 0.0)
    beta = check_float("beta", beta)
    if not alpha < beta:
        raise SettingsError("alpha", f"must be < beta, got alpha={alpha!r}, beta={beta!r}")
    return alpha, beta


def base_thetas(planes: int, base: float = 10000.0) -> torch.Tensor:
    """theta_m = base^(-2m/d) for an axis of d = 2 * planes real dims, float64."""
    check_base(base)
    d = 2 * planes
    return base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)


def length_scale(length: int, l_train: int) -> float:
    """S = max(1, L / L_train)."""
    return max(1.0, length / l_train)


def flex_gate(r: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """0 below alpha, 1 above beta, linear in between."""
    return ((r - alpha) / (beta - alpha)).clamp(0.0, 1.0)


def _check_common(length, l_train, alpha, beta):
    check_int("length", length, 1)
    check_int("l_train", l_train, 1)
    check_gate(alpha, beta)


def riflex_intrinsic_plane(thetas: torch.Tensor, l_train: int) -> int:
    """The plane whose period 2*pi/theta is closest to the training length."""
    periods = 2 * math.pi / thetas
    return int(torch.argmin((periods - l_train).abs()))


def temporal_thetas(
    head_dim: int,
    strategy: str = "flex",
    length: int = 21,
    l_train: int = 21,
    alpha: float = 0.1,
    beta: float = 2.5,
    base: float = 10000.0,
    riflex_plane: int | None = None,
) -> torch.Tensor:
    """Temporal thetas (float64, [C_t]) for a video of ``length`` latent frames.

    ``length <= l_train`` returns the unmodified thetas for every strategy.
    For ``yarn`` the attention temperature is separate: see :func:`logit_scale`.
    """
    check_choice("strategy", strategy, STRATEGIES)
    _check_common(length, l_train, alpha, beta)
    planes = axis_planes(head_dim)[0]
    theta = base_thetas(planes, base)
    s = length_scale(length, l_train)
    if strategy == "none" or s == 1.0:
        return theta
    if strategy == "pi":
        return theta / s
    if strategy == "ntk":
        d = 2 * planes
        return base_thetas(planes, base * s ** (d / (d - 2)))
    if strategy in ("flex", "yarn"):
        # Training exposure: how many full turns plane m made over the training horizon.
        r = l_train * theta / (2 * math.pi)
        g = flex_gate(r, alpha, beta)
        return (1 - g) * theta / s + g * theta
    # riflex: only the intrinsic-frequency plane is slowed so it does not repeat within L.
    k = riflex_intrinsic_plane(theta, l_train) if riflex_plane is None else riflex_plane
    if not 0 <= k < planes:
        raise SettingsError("riflex_plane", f"must be in [0, {planes}), got {k!r}")
    out = theta.clone()
    out[k] = 0.9 * 2 * math.pi / length
    return out


def logit_scale(strategy: str, length: int, l_train: int) -> float:
    """Multiplier of the softmax scale. YaRN: (0.1 ln S + 1)^2 (its temperature on q and k)."""
    if strategy != "yarn":
        return 1.0
    return (0.1 * math.log(length_scale(length, l_train)) + 1.0) ** 2


def head_rows(table: torch.Tensor | None, heads: slice) -> torch.Tensor | None:
    """The rows of ``heads`` of a temporal table with one row per head ([n, H, C, 2]), for a call
    on those heads alone; a table shared by every head ([n, C, 2]), or None, as it is."""
    return table[:, heads] if table is not None and table.dim() == 4 else table


def cos_sin(positions: torch.Tensor, thetas: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """[N, C, 2] table of (cos, sin) of positions * thetas, computed in float64; thetas [H, C]
    (a row per head) give [N, H, C, 2]."""
    thetas = thetas.to(positions.device, torch.float64)
    angles = positions.to(torch.float64).reshape(-1, *(1,) * thetas.dim()) * thetas[None]
    return torch.stack((angles.cos(), angles.sin()), dim=-1).to(dtype)


@dataclass
class Rope3D:
    """The three per-axis theta vectors of one model (temporal possibly FLEX-modulated, and
    possibly one row per head: thetas_t [H, C_t])."""

    thetas_t: torch.Tensor
    thetas_h: torch.Tensor
    thetas_w: torch.Tensor

    @classmethod
    def for_wan(
        cls,
        head_dim: int = 128,
        strategy: str = "none",
        length: int = 21,
        l_train: int = 21,
        alpha: float = 0.1,
        beta: float = 2.5,
        base: float = 10000.0,
        riflex_plane: int | None = None,
    ) -> "Rope3D":
        _, ch, cw = axis_planes(head_dim)
        return cls(
            temporal_thetas(head_dim, strategy, length, l_train, alpha, beta, base, riflex_plane),
            base_thetas(ch, base),
            base_thetas(cw, base),
        )

    def tables(self, frame_start, n_frames: int, grid_h: int, grid_w: int, device=None, dtype=torch.float32):
        """(freqs_t, freqs_h, freqs_w) for frames [frame_start, frame_start + n_frames).

        ``frame_start`` may be an int or a 0-d integer tensor (kept on its device: no sync).
        The temporal table then starts at the chunk, so ops take frame_offset = 0.
        """
        if isinstance(frame_start, torch.Tensor):
            device = frame_start.device if device is None else device
            pos_t = frame_start.to(device, torch.float64) + torch.arange(n_frames, device=device, dtype=torch.float64)
        else:
            pos_t = torch.arange(frame_start, frame_start + n_frames, device=device, dtype=torch.float64)
        return (
            cos_sin(pos_t, self.thetas_t, dtype),
            cos_sin(torch.arange(grid_h, device=device), self.thetas_h, dtype),
            cos_sin(torch.arange(grid_w, device=device), self.thetas_w, dtype),
        )

    def temporal_table(self, positions: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """[N, C_t, 2] temporal (cos, sin) for arbitrary positions, e.g. per cache slot."""
        return cos_sin(positions, self.thetas_t, dtype)
