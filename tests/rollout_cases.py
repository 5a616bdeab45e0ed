"""Streaming rollouts of the tiny model whose outputs were recorded before a refactor.

``tests/data/rollouts.pt`` holds the latents these cases produced on the code they were
recorded with; ``test_rollout_regression.py`` reruns them and asserts identical bits. Only
public names are used here, so the cases survive changes to the library's inner layout.
Regenerate (only when a numerical change is intended): ``python tests/rollout_cases.py``.
"""
from __future__ import annotations

from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "rollouts.pt"
HW = (2, 4)  # latent 2 x 4 -> 1 x 2 tokens per frame

# name -> (FlexConfig keyword arguments, latent frames); every case evicts and wraps the ring.
CONFIGS = {
    "off": (dict(strategy="none", rho=0.0, sink_frames=0, window_frames=6), 18),
    "flex_sink_window": (dict(l_train=5, sink_frames=3, window_frames=6), 24),
    "flex_ans_renoise": (dict(l_train=5, sink_frames=2, window_frames=4, rho=-0.5, ans_renoise=True), 18),
    "dynamic_S": (dict(l_train=5, dynamic=True, sink_frames=3, window_frames=6), 21),
    "window_positions": (dict(l_train=5, sink_frames=3, window_frames=6, position_policy="window"), 21),
    "yarn": (dict(strategy="yarn", l_train=5, sink_frames=3, window_frames=6), 18),
    "riflex_chunk2": (dict(strategy="riflex", l_train=4, sink_frames=2, window_frames=4, chunk_frames=2), 16),
}
BACKENDS = ("reference", "cpp", "sdpa")
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def needs_rotate_on_load(kwargs: dict) -> bool:
    return bool(kwargs.get("dynamic")) or kwargs.get("position_policy") == "window"


def cases():
    """(case id, config name, backend, dtype name) of every recorded rollout."""
    out = []
    for name, (kwargs, _) in CONFIGS.items():
        for backend in BACKENDS:
            if backend == "sdpa" and needs_rotate_on_load(kwargs):
                continue  # SDPA has no rotate-on-load
            for dt in DTYPES:
                out.append((f"{name}-{backend}-{dt}", name, backend, dt))
    return out


def run_case(name: str, backend: str, dtype_name: str) -> torch.Tensor:
    from flex import FlexConfig
    from flex.models.wan import CausalWanModel
    from flex.pipeline import Pipeline

    kwargs, frames = CONFIGS[name]
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = CausalWanModel("tiny").to(dtype)
    text = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    if backend == "cpp" and dtype == torch.float64:  # the C++ attention kernel has no float64
        backend = {"norm_rope_cache_write": "cpp", "ring_attention": "reference"}
    pipe = Pipeline(model, FlexConfig(**kwargs), backend=backend)
    return pipe.generate(text, frames, HW, generator=torch.Generator().manual_seed(2))


def record() -> None:
    torch.set_num_threads(1)
    out = {cid: run_case(name, be, dt) for cid, name, be, dt in cases()}
    DATA.parent.mkdir(exist_ok=True)
    torch.save(out, DATA)
    print(f"recorded {len(out)} rollouts in {DATA}")


if __name__ == "__main__":
    record()
