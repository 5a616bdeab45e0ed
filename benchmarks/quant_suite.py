"""End-to-end latent FPS and quality cost of the quantised linears (flex.quant), in one run.

Every mode runs the same DiT weights (random) through Pipeline(model, FlexConfig(sink 3,
window 9)), eagerly. Speed: the modes are interleaved over ``repeats`` rounds (A B C, A B C,
...), so drifts of a shared machine hit them alike; each round gives one ratio against "none".
Quality: the x0 latents of a stream of ``frames`` latent frames with the same noise, against
the unquantised model's, and with ``decode`` (latents -> uint8 frames) the PSNR of the frames.
"""
from __future__ import annotations

import copy
import math
import statistics

import torch

from flex.config import FlexConfig
from flex.models.wan import CausalWanModel
from flex.pipeline import Pipeline
from flex.quant import QUANT_MODES, check_quant, quantize, quantized_linears, torchao_config

from .e2e_suite import CHUNK, SINK, WINDOW, latent_frames, run_stream, setup, warm_up
from .interleave import interleaved, ratio


def spread(values: list[float]) -> dict:
    return dict(median=statistics.median(values), min=min(values), max=max(values))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of uint8 frames a against b (inf when they are equal)."""
    mse = (a.double() - b.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def run(device: torch.device, dtype: torch.dtype, quick: bool, repeats: int, model=None, latent=None,
        frames: int | None = None, decode=None, modes: tuple[str, ...] = QUANT_MODES) -> dict:
    """{"rows": one per mode run, "skipped": {mode: why}, "notes": [...]}.

    ``model``: a WanConfig (default: e2e_suite.setup's for the device); ``latent``: (H, W);
    ``frames``: latent frames of the quality stream (default 120 = 30 s, 6 with ``quick``), the
    timed streams are as long; ``decode``: latents [B, F, C, H, W] -> uint8 frames, for PSNR.
    """
    s = setup(device, quick)
    arch, latent = model or s["model"], tuple(latent or s["latent"])
    frames = frames or (2 * CHUNK if quick else latent_frames(30))
    torch.manual_seed(0)
    with torch.device(device):
        base = CausalWanModel(arch).to(dtype).eval()
    models, skipped = {}, {}
    for mode in ("none", *[m for m in modes if m != "none"]):
        try:
            check_quant(mode, device, dtype)
        except ValueError as err:
            skipped[mode] = str(err)
            continue
        models[mode] = base if mode == "none" else quantize(copy.deepcopy(base), mode)
    cfg = FlexConfig(sink_frames=SINK, window_frames=WINDOW, chunk_frames=CHUNK)
    pipes = {mode: Pipeline(m, cfg) for mode, m in models.items()}
    text = torch.randn(1, arch.text_len, arch.text_dim, device=device, dtype=dtype)
    with torch.no_grad():
        texts = {mode: m.encode_text(text) for mode, m in models.items()}  # excluded from timing

        # Quality: the same noise through every mode.
        latents = {mode: pipe.generate(texts[mode], frames, latent, generator=torch.Generator(device).manual_seed(0))
                   for mode, pipe in pipes.items()}
        frames_px = {mode: decode(x) for mode, x in latents.items()} if decode is not None else None

        # Speed: warm-up, then the modes interleaved round by round.
        for mode, pipe in pipes.items():
            warm_up(pipe, texts[mode], latent, device)
        seconds = interleaved({mode: (lambda pipe=pipe, mode=mode: run_stream(pipe, texts[mode], frames, latent,
                                                                            device))
                               for mode, pipe in pipes.items()}, repeats)

    rows = []
    ref = latents["none"].float()
    for mode in pipes:
        if not isinstance(seconds[mode], list):  # this mode failed to run: say why, keep the others
            rows.append(dict(mode=mode, error=f"{type(seconds[mode]).__name__}: {seconds[mode]}"[:400]))
            continue
        diff = (latents[mode].float() - ref).abs()
        row = dict(mode=mode, torchao_config=None if mode == "none" else type(torchao_config(mode)).__name__,
                   quantized_linears=len(quantized_linears(models[mode])), latent_frames=frames,
                   latent_size=list(latent), repeats=repeats,
                   model=f"dim {arch.dim}, {arch.num_layers} layers, {arch.num_heads}x{arch.head_dim}",
                   latent_fps=spread([frames / t for t in seconds[mode]]),
                   speedup_vs_none=ratio(seconds["none"], seconds[mode]),
                   max_abs_diff=diff.max().item(), mean_abs_diff=diff.mean().item())
        if frames_px is not None:
            value = psnr(frames_px[mode], frames_px["none"])
            row["psnr_db"] = None if math.isinf(value) else value  # None: identical frames
        rows.append(row)
    notes = [f"Pipeline(model, FlexConfig(sink {SINK}, window {WINDOW})), eager; text encoding excluded",
             "speed-ups: one ratio per interleaved round against 'none' (median, min, max)",
             "quality: x0 latents (and decoded frames) against the unquantised model, same noise"]
    return dict(rows=rows, skipped=skipped, notes=notes)


__all__ = ["psnr", "run", "spread"]
