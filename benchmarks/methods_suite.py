"""Cost of every long-horizon method against FLEX: end-to-end streams timed in turns.

    python -m benchmarks.methods_suite [--seconds 60] [--rounds 5] [--device cpu] [--methods a,b]

Every method of the registry (flex.methods.METHODS) runs the same random DiT weights through
the Self Forcing schedule (chunk 3, 4 steps + the clean pass) with the settings its paper uses
(FlexConfig.for_method), eager, on the default backends; FLEX (the default FlexConfig) runs in
the same rounds, and so does each method's "ring" twin: the same FlexConfig with method "flex"
(its slot table and positions without its policy), which isolates what the policy itself costs.
Printed: seconds per stream (median), time / FLEX and time / twin per round as median
(min-max) -- above 1 the method costs more. On a CPU the model is reduced (head dim 128 like
Wan, one head, 2 layers, an 8 x 14 latent) so that 60 s streams fit in minutes; on a GPU it is
Wan2.1-T2V-1.3B at 480 x 832.
"""
from __future__ import annotations

import argparse
import statistics

import torch

from flex.config import FlexConfig
from flex.methods import METHODS
from flex.models.wan import CausalWanModel, wan_config
from flex.pipeline import Pipeline

from .e2e_suite import latent_frames, run_stream
from .interleave import describe, interleaved, ratio


def setup(device: torch.device) -> dict:
    if device.type == "cuda":
        return dict(model=wan_config("wan2.1-t2v-1.3b"), latent=(60, 104), dtype=torch.bfloat16)
    return dict(model=wan_config("tiny", dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_len=64,
                                 text_dim=256, freq_dim=256), latent=(8, 14), dtype=torch.float32)


TWIN = " (ring)"


def method_configs(names=None) -> dict[str, FlexConfig]:
    """{label: FlexConfig}: FLEX, then every registered method (or those named) with its paper
    settings and its twin without the method (label + TWIN)."""
    configs = {"FLEX": FlexConfig()}
    for name in names or [n for n in METHODS if n != "flex"]:
        configs[name] = FlexConfig.for_method(name)
        configs[name + TWIN] = configs[name].replace(method="flex")
    return configs


def run(device: torch.device, seconds: int, rounds: int, names=None) -> list[dict]:
    s = setup(device)
    torch.manual_seed(0)
    model = CausalWanModel(s["model"]).to(device, s["dtype"]).eval()
    text = model.encode_text(torch.randn(1, 8, s["model"].text_dim, device=device))
    frames = latent_frames(seconds)
    pipes = {label: Pipeline(model, cfg) for label, cfg in method_configs(names).items()}
    for pipe in pipes.values():  # warm-up: allocator, first-call costs
        run_stream(pipe, text, 3 * pipe.config.chunk_frames, s["latent"], device)
    times = interleaved({label: (lambda p=p: run_stream(p, text, frames, s["latent"], device))
                         for label, p in pipes.items()}, rounds)
    rows = []
    for label, t in times.items():
        if isinstance(t, Exception):
            rows.append(dict(method=label, error=f"{type(t).__name__}: {t}"))
            continue
        twin = times.get(label + TWIN)
        rows.append(dict(method=label, seconds=statistics.median(t), vs_flex=ratio(t, times["FLEX"]),
                         vs_twin=ratio(t, twin) if isinstance(twin, list) else None))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="video length in seconds at 16 fps (default 60)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the methods in turns (default 5)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    args = p.parse_args(argv)
    names = args.methods.split(",") if args.methods else None
    rows = run(torch.device(args.device), args.seconds, args.rounds, names)
    print(f"{args.seconds} s streams; time ratios: median (min-max) over {args.rounds} rounds in turns")
    print(f"{'method':<22} {'s / stream':>11}  {'vs FLEX':<20} vs its ring twin (the policy's own cost)")
    for row in rows:
        if "error" in row:
            print(f"{row['method']:<22} {'-':>11}  {row['error']}")
        else:
            print(f"{row['method']:<22} {row['seconds']:>11.2f}  {describe(row['vs_flex']):<20} "
                  f"{describe(row['vs_twin'])}")


if __name__ == "__main__":
    main()
