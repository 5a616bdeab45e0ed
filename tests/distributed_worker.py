"""The per-rank programs of tests/test_distributed.py (run by torchrun or torch.multiprocessing).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py sequence OUT.pt
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/distributed_worker.py \\
        generate SETTINGS.json [KILL_RANK KILL_AT_VIDEO [SEQUENCE_PARALLEL]]

``sequence OUT.pt``: every case of :data:`SEQUENCE_CASES` sequence parallel over the world;
rank 0 saves {case: latents} (plus the heads its ring caches hold) to OUT.pt.

``generate``: prompt-parallel flex.jobs.distributed.job.run_generate of the GenerationSettings in a
JSON file; with KILL_RANK, that rank kills itself (SIGKILL) while writing the first frames of
its KILL_AT_VIDEO-th video (0-based), as a crashed GPU process would die ("-": nobody dies);
SEQUENCE_PARALLEL is ``--sequence-parallel``.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


# case -> (rollout_cases.CONFIGS name, backend, dtype name, prompt switch at this frame or None,
# torch.compile the pass); every case wraps the ring; dynamic_S and window_positions rotate keys
# on load. The compiled case is compared with one eager process.
SEQUENCE_CASES = {
    "off-float64": ("off", "reference", "float64", None, False),
    "off-float32": ("off", "auto", "float32", None, False),
    "flex-float64": ("flex_sink_window", "reference", "float64", None, False),
    "flex-float32-cpp": ("flex_sink_window", "cpp", "float32", None, False),
    "dynamic_S-float64": ("dynamic_S", "reference", "float64", None, False),
    "dynamic_S-float32": ("dynamic_S", "auto", "float32", None, False),
    "window_positions-float32": ("window_positions", "auto", "float32", None, False),
    "switch-recache-float64": ("flex_sink_window", "reference", "float64", 12, False),
    "flex-float32-cpp-compiled": ("flex_sink_window", "cpp", "float32", 12, True),
    # LoL jitter: per-head RoPE tables, each rank taking the rows of its own heads.
    "jitter-float64": ("jitter", "reference", "float64", None, False),
    "jitter-window-float32-cpp": ("jitter_window", "cpp", "float32", None, False),
}
# Configurations of these cases beside rollout_cases.CONFIGS (whose every entry has a recorded rollout).
EXTRA_CONFIGS = {
    "jitter": (dict(method="lol-jitter", l_train=5, sink_frames=3, window_frames=6), 21),
    "jitter_window": (dict(method="lol-jitter", l_train=5, sink_frames=3, window_frames=6, position_policy="window"), 21),
}


def sequence_case(case: str, parallel=None, compiled: bool | None = None):
    """(latents, heads held by the ring cache) of one case, sequence parallel with ``parallel``
    (``compiled``: override the case's compile switch)."""
    from rollout_cases import CONFIGS, DTYPES, HW

    from flex import FlexConfig
    from flex.models.wan import CausalWanModel
    from flex.pipeline import Pipeline

    name, backend, dtype_name, switch, compile_pass = SEQUENCE_CASES[case]
    compile_pass = compile_pass if compiled is None else compiled
    kwargs, frames = {**CONFIGS, **EXTRA_CONFIGS}[name]
    dtype = DTYPES[dtype_name]
    torch.manual_seed(0)
    model = CausalWanModel("tiny").to(dtype)
    texts = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    pipe = Pipeline(model, FlexConfig(**kwargs), backend=backend, parallel=parallel, compile=compile_pass)
    prompts = None if switch is None else [(0, texts[:1]), (switch, texts[1:])]
    out = pipe.generate(texts[:1] if prompts is None else None, frames, HW,
                        generator=torch.Generator().manual_seed(2), prompts=prompts)
    return out, pipe.cache.layers[0].k.shape[2]


def sequence(out_path) -> int:
    import torch.distributed as dist

    from flex.sequence_parallel import ParallelPlan
    from flex.jobs.distributed.launch import Launch, close_process_group, init_process_group

    torch.set_num_threads(1)
    launch = Launch.from_env()
    init_process_group(launch, torch.device("cpu"))
    plan = ParallelPlan.from_group()
    results = {case: sequence_case(case, plan) for case in SEQUENCE_CASES}
    if launch.is_main:
        torch.save({case: out for case, (out, _) in results.items()}
                   | {"heads": {case: h for case, (_, h) in results.items()}}, out_path)
    dist.barrier()
    close_process_group()
    return 0


def settings_from_json(path):
    from flex.config import FlexConfig
    from flex.jobs import GenerationSettings

    kw = json.loads(Path(path).read_text())
    kw["flex"] = FlexConfig(**kw.pop("flex", {}))
    kw["prompts"] = tuple(kw["prompts"])
    return GenerationSettings(**kw)


def kill_at(rank_to_kill: int, video: int) -> None:
    """SIGKILL this process on the first frame of its ``video``-th video, if it is ``rank_to_kill``."""
    from flex import video as video_module
    from flex.jobs.distributed.launch import Launch

    if Launch.from_env().rank != rank_to_kill:
        return
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0:
        return  # the crash happens once: the workers torchrun restarts run to the end
    started = []
    real_init, real_append = video_module.VideoWriter.__init__, video_module.VideoWriter.append

    def init(self, *args, **kwargs):
        started.append(1)
        real_init(self, *args, **kwargs)

    def append(self, frames):
        real_append(self, frames)
        if len(started) > video:
            os.kill(os.getpid(), signal.SIGKILL)

    video_module.VideoWriter.__init__, video_module.VideoWriter.append = init, append


def generate(settings_path, kill_rank="-", kill_video="-", sequence_parallel="1") -> int:
    import argparse

    from flex.jobs.distributed.job import run_generate

    torch.set_num_threads(1)
    if kill_rank != "-":
        kill_at(int(kill_rank), int(kill_video))
    args = argparse.Namespace(sequence_parallel=int(sequence_parallel))
    try:
        run_generate(settings_from_json(settings_path), args, progress_interval_s=0.5)
    except RuntimeError as err:
        print(f"rank failed: {err}", file=sys.stderr, flush=True)
        return 3
    return 0


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    sys.exit({"generate": generate, "sequence": sequence}[command](*rest))
