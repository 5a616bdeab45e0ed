"""Speed options known to be slower than the default on a class of device, with measured ratios.

A "speed option" that slows a run down must say so when it is chosen: :func:`warnings_for`
gives one line per chosen setting that :data:`SLOWER` lists for the device at hand (the ratio
and how it was measured). The table is the one home of these facts; README's option tables
quote it. Add a row when a benchmark (``python benchmarks/run.py``) measures an option below
1.0x of the default on some device class.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

# Device classes: a GPU, or a CPU by the matrix instructions torch's int8 / bf16 kernels use.
DEVICE_CLASSES = {
    "cuda": "a CUDA GPU",
    "cpu-amx": "a CPU with AMX",
    "cpu-vnni": "a CPU with AVX512-VNNI (no AMX)",
    "cpu-avx2": "a CPU with AVX2 only (no VNNI / AMX)",
}


@dataclass(frozen=True)
class SlowOption:
    """``setting`` = ``value`` ran at ``ratio`` x the default's latent FPS on ``device_class``."""

    setting: str
    value: object
    device_class: str
    ratio: float
    measured: str  # how: command, date, machine, dtype, what was timed


_QUANT_RUN = ("python benchmarks/run.py --suite quant: eager FLEX path, 21 latent frames at 16x28, "
              "dim 512 x 4 layers, the modes in turns")
SLOWER = (
    SlowOption("quant", "int8", "cpu-avx2", 0.07, f"{_QUANT_RUN}, fp32, 3 rounds (0.07-0.08), AMD EPYC AVX2, "
               "2026-12-02, benchmarks/results/2026-12-02-cpu-2core-fp32"),
    SlowOption("quant", "int8", "cpu-vnni", 0.78, "reported for an AMD EPYC with AVX512-VNNI on 2026-12-07 "
               "(the project's issue 29); no results folder is recorded yet: rerun python benchmarks/run.py "
               "--suite quant there to record it"),
    SlowOption("quant", "int8-weight", "cpu-avx2", 0.97, f"{_QUANT_RUN}, fp32, 3 rounds (0.95-0.99), AMD EPYC "
               "AVX2, 2026-12-02, benchmarks/results/2026-12-02-cpu-2core-fp32"),
)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def device_class(device, cpu_flags: set[str] | None = None) -> str:
    """The class of ``device`` in DEVICE_CLASSES (a CPU's from /proc/cpuinfo unless given)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "cuda"
    if device.type != "cpu":
        raise ValueError(f"device must be a cpu or cuda device, got {device}")
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    if "amx_int8" in flags or "amx_bf16" in flags:
        return "cpu-amx"
    if "avx512_vnni" in flags or "avx_vnni" in flags:
        return "cpu-vnni"
    return "cpu-avx2"


def slower_options(settings: Mapping[str, object], device, cpu_flags: set[str] | None = None) -> list[SlowOption]:
    """The rows of SLOWER that ``settings`` ({setting name: chosen value}) hits on ``device``."""
    cls = device_class(device, cpu_flags)
    return [row for row in SLOWER if row.device_class == cls and settings.get(row.setting) == row.value]


def warnings_for(settings: Mapping[str, object], device, cpu_flags: set[str] | None = None) -> list[str]:
    """One line per chosen option known to be slower than the default on ``device``."""
    return [f"{row.setting}={row.value} runs at {row.ratio:.2f}x the default's speed on "
            f"{DEVICE_CLASSES[row.device_class]} (measured: {row.measured})"
            for row in slower_options(settings, device, cpu_flags)]
