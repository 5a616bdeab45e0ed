"""FLEX benchmarks: op comparisons and end-to-end FPS, side by side in one run.

    python benchmarks/run.py                 # ops + end to end on the default device
    python benchmarks/run.py --quick         # smoke run (seconds)
    python benchmarks/run.py --suite ops --device cuda --compare old/results.json
    pytest benchmarks --benchmark-only            # the op suite alone, through pytest-benchmark

Writes results.json, summary.md and PNG plots under --out (default benchmarks/results/latest).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from benchmarks.progress import tqdm  # noqa: E402

from benchmarks import ops_suite, report, timing  # noqa: E402

SCHEMA_VERSION = 2


def machine_info(device: torch.device) -> dict:
    info = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
        cpu_threads=torch.get_num_threads(), device=str(device),
    )
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    import flex.ops
    info["backends"] = {name: flex.ops.backend_status(name)[1] if flex.ops.backend_status(name)[0] else "unavailable: " + flex.ops.backend_status(name)[1]
                        for name in flex.ops.BACKENDS}
    info["triton_interpret"] = os.environ.get("TRITON_INTERPRET") == "1"
    return info


def reproduce_command(argv: list[str]) -> str:
    """The command line of this run, without the machine-specific --out folder."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            kept.append(arg)
    return " ".join(["python benchmarks/run.py"] + kept)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=("ops", "e2e", "quant", "switch", "all", "accuracy"), default="all",
                   help="what to measure (default: all = ops, e2e, quant; switch: the latency of the first "
                        "chunk after a prompt switch in each switch mode, benchmarks/switch_suite.py; accuracy, "
                        "never part of all: bf16 of Self Forcing's code and of it accelerated against float64 "
                        "truth, one chunk at the 1.3B size)")
    p.add_argument("--accuracy-latent", type=_latent, default=(60, 104), metavar="HxW",
                   help="latent size of --suite accuracy (default 60x104, 480x832 video; smaller on a CPU)")
    p.add_argument("--quick", action="store_true", help="tiny shapes and few repeats: a smoke run")
    p.add_argument("--full", action="store_true",
                   help="the long horizons (up to 240 s) and the table of compile / CUDA-graph options; "
                        "the default keeps a CPU run within minutes")
    p.add_argument("--world", type=int, default=0, metavar="N",
                   help="also measure sequence parallel over N processes against one (benchmarks/distributed_suite.py)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda (default: cuda if present)")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                   help="default: bf16 on a GPU and on a CPU with native bf16 (AMX / AVX512-BF16), else fp32")
    p.add_argument("--horizons", type=_horizons, default=None, metavar="S,S,...",
                   help="end-to-end horizons in seconds of video (default: 5,30; with --full or on a GPU "
                        "5,30,60,240)")
    p.add_argument("--paths", type=_paths, default=None, metavar="P,P,...",
                   help="end-to-end paths among upstream,accelerate,off,on,fast (default: all)")
    p.add_argument("--upstream-repo", default=None, metavar="PATH",
                   help="a Self Forcing checkout: the e2e baseline is its own code, unmodified and with "
                        "flex.integrations.accelerate (default: ../shared/upstream/self-forcing beside the "
                        "repository when it exists; without one the upstream-style twin stands in)")
    p.add_argument("--no-decode", action="store_true", help="e2e without the decode measurements")
    p.add_argument("--no-options", action="store_true",
                   help="skip the table of compile / CUDA-graph options against eager")
    p.add_argument("--profile", action="store_true",
                   help="also write a torch.profiler trace of a few steady-state chunks of the FLEX path "
                        "(profile-trace.json, profile-ops.txt; benchmarks/trace_chunks.py)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "latest"), help="results folder")
    p.add_argument("--compare", default=None, metavar="RESULTS.json", help="print ratios against a previous run")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed runs per measurement; end to end: rounds of the paths in turns (default 3, "
                        "--quick 2); the median is reported with the min-max of every ratio")
    return p.parse_args(argv)


def _horizons(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--horizons must be comma-separated whole seconds, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"--horizons must be positive whole seconds, got {text!r}")
    return values


def _latent(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--accuracy-latent must be HxW (e.g. 16x28), got {text!r}") from None
    if h < 2 or w < 2 or h % 2 or w % 2:
        raise argparse.ArgumentTypeError(f"--accuracy-latent must be even sizes >= 2, got {text!r}")
    return h, w


def _paths(text: str) -> tuple[str, ...]:
    from benchmarks.e2e_suite import PATH_KEYS
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values or set(values) - set(PATH_KEYS):
        raise argparse.ArgumentTypeError(f"--paths must be a comma-separated subset of {','.join(PATH_KEYS)}, got {text!r}")
    return values


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX or AVX512-BF16), from /proc/cpuinfo."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def default_dtype(device: torch.device) -> str:
    """bf16 where the hardware runs it natively (what Self Forcing uses), else fp32."""
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def op_benchmarks(device: torch.device, dtype_name: str, quick: bool, repeats: int, out: Path) -> dict:
    """Run the pytest-benchmark op suite (benchmarks/test_ops.py) in a child process; its JSON
    (also kept as ops-benchmark.json, usable with --benchmark-compare) is the op results."""
    path = out / "ops-benchmark.json"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "benchmarks" / "test_ops.py"),
           "--benchmark-only", f"--benchmark-json={path}", "--bench-device", device.type, "--bench-dtype", dtype_name,
           "--bench-repeats", str(repeats)] + (["--bench-quick"] if quick else [])
    proc = subprocess.run(cmd, cwd=ROOT)
    if proc.returncode not in (0, 5) or not path.exists():  # 5: every case skipped
        raise SystemExit(f"the op benchmarks failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(path.read_text())


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    dtype_name = args.dtype or default_dtype(device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
        print("note: TRITON_INTERPRET=1 runs Triton kernels through the CPU interpreter: a correctness path, not a speed")
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit(f"--repeats must be >= 1, got {args.repeats}")
    repeats = args.repeats or (3 if args.quick else 10)
    rounds = args.repeats or (2 if args.quick else 3)
    full = args.full or device.type == "cuda"
    os.environ.setdefault("FLEX_CANARY", "0")  # first-use canaries stay out of the timings (flex.canary)
    if args.suite == "accuracy":
        from benchmarks import accuracy_suite
        from benchmarks.upstream_real import default_repo

        repo = Path(args.upstream_repo).resolve() if args.upstream_repo else default_repo()
        if repo is None:
            raise SystemExit("--suite accuracy needs Self Forcing's code: pass --upstream-repo PATH")
        result = accuracy_suite.run(repo, device, args.accuracy_latent)
        print(accuracy_suite.table(result))
        return result
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results = dict(schema=SCHEMA_VERSION, machine=machine_info(device), dtype=str(dtype).replace("torch.", ""),
                   quick=args.quick, command=reproduce_command(argv if argv is not None else sys.argv[1:]),
                   roofline={}, ops=[], e2e=[], e2e_options=[], e2e_notes=[], decode={}, quant={})
    steps = ["roofline"]  # every suite puts its rates next to the roofline of this run
    if args.suite in ("ops", "all"):
        steps += ["ops"]
    if args.suite in ("e2e", "all"):
        steps += ["e2e"]
    if args.suite in ("quant", "all"):
        steps += ["quant"]
    if args.suite == "switch":
        steps += ["switch"]
    with tqdm(steps, desc="benchmarks", unit="suite") as bar:
        for step in bar:
            bar.set_postfix_str(step)
            if step == "roofline":
                results["roofline"] = dict(
                    copy_gbps=timing.copy_bandwidth(device, 32 if args.quick else 256, repeats),
                    matmul_tflops=timing.matmul_tflops(device, dtype, 512 if args.quick else (8192 if device.type == "cuda" else 2048), repeats),
                )
            elif step == "ops":
                timed = op_benchmarks(device, dtype_name, args.quick, repeats, out)
                results["ops"] = ops_suite.rows_from_benchmark_json(timed, results["roofline"])
                from benchmarks import canary_cost

                results["canary"] = canary_cost.run(device, dtype, args.quick, repeats=min(repeats, 5))
            elif step == "e2e":
                from benchmarks import e2e_suite

                def save_e2e(e2e):
                    results.update(e2e=e2e["rows"], e2e_options=e2e["options"], e2e_notes=e2e["notes"],
                                   decode=e2e.get("decode", {}))
                    report.write_all(results, out)

                horizons = args.horizons or (None if full or args.quick else e2e_suite.DEFAULT_HORIZONS)
                from benchmarks.upstream_real import default_repo

                repo = Path(args.upstream_repo).resolve() if args.upstream_repo else default_repo()
                save_e2e(e2e_suite.run(device, dtype, args.quick, rounds, horizons=horizons, upstream_repo=repo,
                                       decode=not args.no_decode,
                                       paths=args.paths or e2e_suite.PATH_KEYS,
                                       options=not args.no_options and (full or args.quick), on_progress=save_e2e,
                                       matmul_tflops=results["roofline"]["matmul_tflops"]))
            elif step == "quant":
                from benchmarks import e2e_suite, quant_suite

                # The streams are 30 s with --full (and on a GPU); by default on a CPU 3 chunks and
                # 2 rounds, as int8 with dynamic activations is ~10x slower without VNNI / AMX.
                short = not (full or args.quick)
                from benchmarks.decode_suite import decoders

                tiny = decoders(device, dtype, quick=True)["tiny (TAEHV)"]  # PSNR of the decoded frames
                results["quant"] = quant_suite.run(device, dtype, args.quick, min(rounds, 2) if short else rounds,
                                                   frames=3 * e2e_suite.CHUNK if short else None, decode=tiny.decode)
            elif step == "switch":
                from benchmarks import switch_suite

                results["switch"] = switch_suite.run(device, dtype, args.quick, rounds)
                print(switch_suite.table(results["switch"]))
            # Written after every step, so a run cut short keeps what it measured.
            report.write_all(results, out)

    if args.world:  # sequence-parallel overhead: N processes (gloo on the CPU) against one
        from benchmarks import distributed_suite

        results["distributed"] = distributed_suite.suite(args.world, device, args.quick)
        report.write_all(results, out)
        print(distributed_suite.summary(results["distributed"]))
    if args.profile:
        from benchmarks import trace_chunks

        results["profile"] = trace_chunks.profile(device, dtype, args.quick, out)
        report.write_all(results, out)
        print(f"profile of {results['profile']['chunks']} steady-state chunks: {out / 'profile-trace.json'}, "
              f"{out / 'profile-ops.txt'}")
    print(report.console_table(results))
    if args.compare:
        print(report.compare(results, json.loads(Path(args.compare).read_text())))
    print(f"results written to {out}")
    return results


if __name__ == "__main__":
    main()
