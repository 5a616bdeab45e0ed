"""Sequence parallel vs one process: seconds per chunk and the all_to_all time per layer.

    python benchmarks/distributed_suite.py --world 2            # CPU: 2 gloo processes
    python benchmarks/distributed_suite.py --world 8 --device cuda

The one-process stream runs here with one thread and with as many threads as the world has
processes (the same cores; the faster counts); the sequence-parallel stream runs under
torchrun, one thread (or one GPU) per rank,
with the same model, prompt and noise. Each rank also times the two exchanges of one layer
alone (q, k, v to heads; the output back to tokens) on the chunk's real shapes.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import timing  # noqa: E402
from flex.config import FlexConfig  # noqa: E402
from flex.models.wan import CausalWanModel, wan_config  # noqa: E402
from flex.pipeline import Pipeline  # noqa: E402

SINK, WINDOW, CHUNK = 3, 9, 3


def setup(device: torch.device, quick: bool) -> dict:
    """Model and latent size (those of benchmarks/e2e_suite.py) and the frames streamed."""
    if device.type == "cuda" and not quick:
        return dict(model=wan_config("wan2.1-t2v-1.3b"), latent=(60, 104), frames=21)
    if quick:
        return dict(model=wan_config("tiny"), latent=(4, 8), frames=9)
    return dict(model=wan_config("tiny", dim=512, ffn_dim=1024, num_heads=4, num_layers=4, text_len=64,
                                 text_dim=64, freq_dim=256), latent=(16, 28), frames=18)


def _stream_seconds_per_chunk(device, quick, parallel=None) -> float:
    cfg = setup(device, quick)
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = CausalWanModel(cfg["model"]).to(device, dtype)
    text = torch.randn(1, cfg["model"].text_len, cfg["model"].text_dim, device=device, dtype=dtype)
    pipe = Pipeline(model, FlexConfig(sink_frames=SINK, window_frames=WINDOW, chunk_frames=CHUNK),
                    parallel=parallel)
    text = pipe.encode_prompt(text)
    pipe.generate(text, CHUNK, cfg["latent"], generator=torch.Generator().manual_seed(0))  # warm-up
    timing.sync(device)
    start = time.perf_counter()
    pipe.generate(text, cfg["frames"], cfg["latent"], generator=torch.Generator().manual_seed(0))
    timing.sync(device)
    return (time.perf_counter() - start) / (cfg["frames"] // CHUNK)


def _exchange_seconds(device, quick, plan) -> float:
    """One layer's two all_to_all exchanges on a chunk's shapes."""
    cfg = setup(device, quick)
    m = cfg["model"]
    _, ph, pw = m.patch_size
    tpf = (cfg["latent"][0] // ph) * (cfg["latent"][1] // pw)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    qkv = torch.randn(3, 1, CHUNK * tpf // plan.size, m.num_heads, m.head_dim, device=device, dtype=dtype)
    out = torch.randn(1, CHUNK * tpf, m.num_heads // plan.size, m.head_dim, device=device, dtype=dtype)

    def both():
        plan.tokens_to_heads(qkv, CHUNK)
        plan.heads_to_tokens(out, CHUNK)

    return timing.measure(both, device, warmup=2, repeats=10)


def worker(out_path: str, device_name: str, quick: bool) -> None:
    """One rank of the sequence-parallel run (started by torchrun)."""
    import torch.distributed as dist

    from flex.sequence_parallel import ParallelPlan
    from flex.jobs.distributed.launch import Launch, close_process_group, init_process_group, rank_device

    launch = Launch.from_env()
    device = rank_device(launch, device_name)
    if device.type == "cpu":
        torch.set_num_threads(1)
    init_process_group(launch, device)
    plan = ParallelPlan.from_group()
    chunk_s = _stream_seconds_per_chunk(device, quick, plan)
    exchange_s = _exchange_seconds(device, quick, plan)
    if launch.is_main:
        Path(out_path).write_text(json.dumps({"chunk_s": chunk_s, "exchange_per_layer_s": exchange_s}))
    dist.barrier()
    close_process_group()


def suite(world: int, device: torch.device, quick: bool = False) -> dict:
    """One process vs ``world`` sequence-parallel processes; returns the measurements."""
    cfg = setup(device, quick)
    m = cfg["model"]
    if m.num_heads % world:
        raise ValueError(f"--world {world} must divide the benchmark model's {m.num_heads} heads")
    threads = torch.get_num_threads()
    single = {}
    try:  # on a CPU: one thread, and as many threads as the world has processes (the same cores)
        for n in ((1, world) if device.type == "cpu" else (threads,)):
            torch.set_num_threads(n)
            single[n] = _stream_seconds_per_chunk(device, quick)
    finally:
        torch.set_num_threads(threads)
    best = min(single.values())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
               __file__, "--worker", str(out), "--device", device.type] + (["--quick"] if quick else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "python"), str(ROOT),
                                                            os.environ.get("PYTHONPATH", "")])}
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if run.returncode:
            raise RuntimeError(f"the sequence-parallel run failed:\n{run.stderr[-3000:]}")
        sp = json.loads(out.read_text())
    exchanges = sp["exchange_per_layer_s"] * m.num_layers * 5  # 4 denoising passes + the clean pass
    return {
        "world": world, "device": device.type, "model": {"dim": m.dim, "heads": m.num_heads, "layers": m.num_layers},
        "latent": list(cfg["latent"]), "frames": cfg["frames"],
        "single_chunk_s_by_threads": single, "single_chunk_s": best, "parallel_chunk_s": sp["chunk_s"],
        "speedup": best / sp["chunk_s"],
        "exchange_per_layer_s": sp["exchange_per_layer_s"], "exchange_per_chunk_s": exchanges,
        "exchange_share": exchanges / sp["chunk_s"],
    }


def summary(r: dict) -> str:
    return (f"sequence parallel, {r['world']} processes on {r['device']} (dim {r['model']['dim']}, "
            f"{r['model']['heads']} heads, {r['model']['layers']} layers, latent {r['latent'][0]}x{r['latent'][1]}): "
            f"{r['single_chunk_s'] * 1e3:.1f} ms/chunk in one process (best of "
            f"{', '.join(f'{n} thread(s) {t * 1e3:.0f} ms' for n, t in r['single_chunk_s_by_threads'].items())}) "
            f"vs {r['parallel_chunk_s'] * 1e3:.1f} ms "
            f"sequence parallel ({r['speedup']:.2f}x); the all_to_all exchanges take "
            f"{r['exchange_per_layer_s'] * 1e3:.2f} ms per layer, {r['exchange_share'] * 100:.0f}% of a chunk")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--world", type=int, default=2, help="sequence-parallel processes (torchrun --nproc-per-node)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="the tiny model (seconds)")
    p.add_argument("--out", help="write the measurements as JSON here")
    p.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker, args.device, args.quick)
        return 0
    result = suite(args.world, torch.device(args.device), args.quick)
    print(summary(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
