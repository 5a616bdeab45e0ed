"""Cost of each long-horizon method against FLEX, measured in turns (benchmarks/interleave.py).

Every method of flex.methods.METHODS (with its paper's settings, FlexConfig.for_method) and
FLEX (the default FlexConfig) stream the same video on the same model, eager, round after
round; so does each method's "ring twin": the same FlexConfig with method "flex" (its slot
table and positions without its policy), which isolates what the method's policy itself costs.
Each row is the method's time over FLEX's (and over its twin's) in the same round: median
(min-max); above 1 the method costs more. Target: no method > 1.05x FLEX at 60 s
(Participative Compression, ``deep-forcing``: <= 1.15x).

    python benchmarks/methods_suite.py [--seconds 60] [--rounds 3] [--size small|quick|cpu]
                                       [--backend auto] [--methods a,b]

Sizes: ``small`` (the default on a CPU: head dim 128 like Wan, one head, 2 layers, an 8 x 14
latent, so that 60 s streams take minutes), ``quick`` and ``cpu`` (benchmarks/e2e_suite.py's
tiny and reduced CPU models); on a GPU, Wan2.1-T2V-1.3B at 480 x 832.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import e2e_suite  # noqa: E402
from benchmarks.e2e_suite import latent_frames, run_stream  # noqa: E402
from benchmarks.interleave import describe, interleaved, ratio  # noqa: E402
from flex.config import FlexConfig  # noqa: E402
from flex.methods import METHODS  # noqa: E402
from flex.models import CausalWanModel  # noqa: E402
from flex.models.config import wan_config  # noqa: E402
from flex.pipeline import Pipeline  # noqa: E402

TWIN = " (ring)"


def setup(device: torch.device, size: str) -> dict:
    if device.type == "cuda" or size != "small":
        return e2e_suite.setup(device, size == "quick")
    return dict(model=wan_config("tiny", dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_len=64,
                                 text_dim=256, freq_dim=256), latent=(8, 14))


def configs(names=None) -> dict[str, FlexConfig]:
    """{label: FlexConfig}: FLEX, then every registered method (or those named) with its paper
    settings, each followed by its ring twin (label + TWIN)."""
    out = {"FLEX": FlexConfig()}
    for name in names or [n for n in METHODS if n != "flex"]:
        out[name] = FlexConfig.for_method(name)
        out[name + TWIN] = out[name].replace(method="flex")
    return out


def run(device, seconds: int, rounds: int, size: str, backend: str, names=None) -> list[dict]:
    s = setup(device, size)
    torch.manual_seed(0)
    model = CausalWanModel(s["model"]).to(device).eval()
    text = torch.randn(1, model.config.text_len, model.config.text_dim, device=device)
    frames = latent_frames(seconds)
    pipes = {name: Pipeline(model, cfg, backend=backend) for name, cfg in configs(names).items()}
    for pipe in pipes.values():  # warm-up: one chunk each
        run_stream(pipe, text, 3, s["latent"], device)
    times = interleaved({n: (lambda p=p: run_stream(p, text, frames, s["latent"], device)) for n, p in pipes.items()},
                        rounds)
    rows = []
    for name, t in times.items():
        if isinstance(t, Exception):
            rows.append(dict(method=name, error=f"{type(t).__name__}: {t}"))
            continue
        twin = times.get(name + TWIN)
        rows.append(dict(method=name, seconds=statistics.median(t), best=min(t),
                         cost=ratio(t, times["FLEX"]),  # method / FLEX per round: > 1 means the method is slower
                         policy_cost=ratio(t, twin) if isinstance(twin, list) else None))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60, help="video length in seconds at 16 fps (default 60)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the methods in turns (default 3)")
    p.add_argument("--size", choices=("small", "quick", "cpu"), default="small")
    p.add_argument("--backend", default="auto")
    p.add_argument("--methods", default=None, help="comma-separated method names (default: all registered)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_grad_enabled(False)
    names = args.methods.split(",") if args.methods else None
    rows = run(device, args.seconds, args.rounds, args.size, args.backend, names)
    print(f"| method | time / FLEX at {args.seconds} s, median (min-max) | time / its ring twin | median run |")
    print("|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['error']} | | |")
            continue
        print(f"| {r['method']} | {describe(r['cost'])} | {describe(r['policy_cost'])} | {r['seconds']:.2f} s |")
    return rows


if __name__ == "__main__":
    main()
