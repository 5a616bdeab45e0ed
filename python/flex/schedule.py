"""The flow-matching schedule of Wan / Self Forcing (shift 5, 4 warped DMD steps).

Self Forcing builds a 1000-entry table in float32 (``FlowMatchScheduler(shift=5,
sigma_min=0, extra_one_step=True)``, ``set_timesteps(1000, training=True)``):

    sigma_i = 1 - i / 1000                       i = 0 .. 999   (linspace(1, 0, 1001)[:-1])
    sigma'_i = shift * sigma_i / (1 + (shift - 1) * sigma_i)
    t_i = 1000 * sigma'_i

and "warps" its denoising step list [1000, 750, 500, 250] to t[1000 - step] (t = 0 for step
0), i.e. t = 1000, 937.5, 833.33, 625 with sigma = 1, .9375, .8333, .625. A timestep's sigma is
the table entry whose t is nearest (as Self Forcing looks it up), so a step list given
directly in t units works too. The model predicts the flow v; x0 = x_t - sigma v and the next
input is (1 - sigma_next) x0 + sigma_next * noise.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .checks import check_float, check_int
from .errors import SettingsError

SELF_FORCING_STEPS = (1000, 750, 500, 250)


class FlowMatchSchedule:
    """Self Forcing's shifted flow-matching table and its step warping."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        check_float("shift", shift, 0.0, low_open=True)
        check_int("num_train_timesteps", num_train_timesteps, 1)
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        sigma = torch.linspace(1.0, 0.0, num_train_timesteps + 1)[:-1]  # float32, as upstream
        self.sigmas = self.shift * sigma / (1 + (self.shift - 1) * sigma)
        self.timesteps = self.sigmas * num_train_timesteps

    def warp(self, steps: Sequence[float]) -> list[float]:
        """Self Forcing's ``warp_denoising_step``: step s -> t[num_train - s] (t = 0 at s = 0)."""
        table = torch.cat((self.timesteps, torch.zeros(1)))
        out = []
        for s in steps:
            check_float("denoising_steps", s)
            if float(s) != int(s) or not 0 <= int(s) <= self.num_train_timesteps:
                raise SettingsError("denoising_steps",
                                    f"must be ints in [0, {self.num_train_timesteps}] when warped, got {s!r}")
            out.append(float(table[self.num_train_timesteps - int(s)]))
        return out

    def sigma(self, timestep: float) -> float:
        """sigma of the table entry nearest to ``timestep`` (0 -> 0), as a Python float."""
        if timestep == 0:
            return 0.0
        i = int(torch.argmin((self.timesteps.double() - float(timestep)).abs()))
        return float(self.sigmas[i])

    def timesteps_and_sigmas(self, steps: Sequence[float] = SELF_FORCING_STEPS, warp: bool = True):
        """(timesteps, sigmas) of a denoising step list, both Python float lists."""
        steps = list(steps)
        if not steps:
            raise SettingsError("denoising_steps", "must not be empty")
        for s in steps:
            check_float("denoising_steps", s, 0.0, float(self.num_train_timesteps), low_open=True)
        ts = self.warp(steps) if warp else [float(torch.tensor(float(s), dtype=torch.float32)) for s in steps]
        return ts, [self.sigma(t) for t in ts]
