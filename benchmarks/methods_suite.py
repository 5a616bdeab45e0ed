"""Cost of each long-horizon method against FLEX, measured in turns (benchmarks/interleave.py).

Every method of flex.methods.METHODS (with its paper's settings) and FLEX (the default
FlexConfig) stream the same video on the same model, round after round; each method's row is
its time over FLEX's in the same round: median (min-max). Target: no method > 1.05x at 60 s.

    python benchmarks/methods_suite.py [--seconds 60] [--rounds 3] [--size quick|cpu] [--backend auto]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.e2e_suite import latent_frames, run_stream, setup  # noqa: E402
from benchmarks.interleave import describe, interleaved, ratio  # noqa: E402
from flex.config import FlexConfig  # noqa: E402
from flex.methods import METHODS  # noqa: E402
from flex.models import CausalWanModel  # noqa: E402
from flex.pipeline import Pipeline  # noqa: E402


def configs() -> dict[str, FlexConfig]:
    out = {"FLEX": FlexConfig()}
    out.update({name: FlexConfig.for_method(name) for name in METHODS if name != "flex"})
    return out


def run(device, seconds: int, rounds: int, size: str, backend: str) -> list[dict]:
    s = setup(device, size == "quick")
    torch.manual_seed(0)
    model = CausalWanModel(s["model"]).to(device).eval()
    text = torch.randn(1, model.config.text_len, model.config.text_dim, device=device)
    frames = latent_frames(seconds)
    pipes = {name: Pipeline(model, cfg, backend=backend) for name, cfg in configs().items()}
    for pipe in pipes.values():  # warm-up: one chunk each
        run_stream(pipe, text, 3, s["latent"], device)
    times = interleaved({n: (lambda p=p: run_stream(p, text, frames, s["latent"], device)) for n, p in pipes.items()},
                        rounds)
    rows = []
    for name, t in times.items():
        if isinstance(t, Exception):
            rows.append(dict(method=name, error=str(t)))
            continue
        stats = ratio(t, times["FLEX"])  # FLEX / method: < 1 means the method is slower
        cost = {k: 1 / stats[k] for k in ("median", "min", "max")}
        rows.append(dict(method=name, seconds=min(t), cost=dict(median=cost["median"], min=cost["max"],
                                                                 max=cost["min"], rounds=stats["rounds"],
                                                                 wide=stats["wide"], spread=stats["spread"])))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", choices=("quick", "cpu"), default="quick")
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_grad_enabled(False)
    rows = run(device, args.seconds, args.rounds, args.size, args.backend)
    print(f"| method | time / FLEX at {args.seconds} s, median (min-max) | best run |")
    print("|---|---|---|")
    for r in rows:
        cost = describe(r["cost"]) if "cost" in r else r["error"]
        print(f"| {r['method']} | {cost} | {r.get('seconds', float('nan')):.2f} s |")
    return rows


if __name__ == "__main__":
    main()
