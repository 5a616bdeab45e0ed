"""``flex evaluate`` and ``flex experiment``: argument parsing over flex.evaluate and flex.jobs.experiment (no logic here).

Register both in the ``flex`` parser with ``add_parser(subparsers)``; each subcommand stores its
handler, so ``run(args)`` runs whichever was chosen and returns the exit status:
0 done, 1 a metric or a video failed (the others were still evaluated), 2 bad argument (found
before any work), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _metric_list(text: str) -> tuple[str, ...]:
    return tuple(m.strip() for m in text.split(",") if m.strip())


def add_parser(subparsers) -> None:
    """Add the ``evaluate`` and ``experiment`` subcommands to an argparse subparsers object."""
    from ..rope import STRATEGIES
    from ..evaluate.registry import ALL_METRICS, HEALTH_METRICS
    from ..evaluate.segments import DEFAULT_SEGMENT_SECONDS
    from ..evaluate.weights import ENV

    ev = subparsers.add_parser(
        "evaluate", help="measure video quality over time (VBench dimensions, health metrics, drift)",
        description="Evaluate videos: every metric per segment, its mean and its drift (last segment minus "
                    "first), a JSON and a PNG of the curves per video, a CSV and a markdown table per run.",
        epilog=f"metrics: {', '.join(ALL_METRICS)}. Weights-free: {', '.join(HEALTH_METRICS)}. "
               f"exit status: 0 done, 1 a metric or video failed (the rest still ran), 2 bad argument, "
               f"130 interrupted",
    )
    ev.add_argument("inputs", nargs="*", metavar="VIDEO_OR_FOLDER", help="mp4 files or folders of them")
    ev.add_argument("--out", default="evaluation", help="results folder (default: %(default)s)")
    which = ev.add_mutually_exclusive_group()
    which.add_argument("--metrics", type=_metric_list, default=None,
                       help="comma-separated metric names (default: all)")
    which.add_argument("--free", action="store_true", help="only the weights-free health metrics")
    ev.add_argument("--segment-seconds", type=float, default=DEFAULT_SEGMENT_SECONDS,
                    help="segment length for the curves and drift (default: %(default)s, like VBench-Long)")
    ev.add_argument("--weights-dir", default=None, help=f"folder of the models' weights (default: ${ENV})")
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    ev.add_argument("--no-plot", action="store_true", help="do not write the PNG curves")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    phase = ev.add_argument_group("RoPE phase concentration (no videos, no weights: predicts sink-collapse frames)")
    phase.add_argument("--phase", action="store_true", help="write phase.json / phase.png for --rope strategies")
    phase.add_argument("--rope", type=_metric_list, default=None,
                       help=f"comma-separated strategies of flex.rope (default: all: {', '.join(STRATEGIES)})")
    phase.add_argument("--method", type=_metric_list, default=None,
                       help="comma-separated long-horizon methods of flex.methods (each with its paper settings; "
                            "default: every registered one besides the --rope strategies)")
    phase.add_argument("--seconds", type=float, default=240.0, help="video length (default: %(default)s)")
    phase.add_argument("--preset", choices=("self-forcing", "longlive"), default="self-forcing",
                       help="sink, window and L_train of the model (default: %(default)s)")
    ev.set_defaults(run=run_evaluate)

    ex = subparsers.add_parser(
        "experiment", help="generate and evaluate the videos of an experiment config (the paper's tables)",
        description="Generate every video an experiment config names (variants x horizons x seeds x prompts), "
                    "skipping those already made with the same settings, evaluate them, and write the table "
                    "(rows = variants, columns = metrics and drift), per-variant curves and a manifest per video.",
        epilog="exit status: 0 done, 1 runtime error, 2 bad config, 130 interrupted (rerun to resume)",
    )
    ex.add_argument("config", help="experiment TOML file (see experiments/)")
    ex.add_argument("--out", default=None, help="results folder (default: the config's [experiment] out)")
    ex.add_argument("--weights-dir", default=None, help=f"evaluation weights (default: config, then ${ENV})")
    ex.add_argument("--device", default=None, help="device for generation and evaluation (default: config / auto)")
    ex.add_argument("--dry-run", action="store_true", help="check the config and list the videos, generate nothing")
    ex.add_argument("--no-progress", action="store_true", help="no progress bars")
    ex.set_defaults(run=run_experiment)


def run(args: argparse.Namespace) -> int:
    """Run the subcommand ``add_parser`` registered (``args.run``)."""
    return args.run(args)


def _work(job, interrupted: str):
    """(``job()``, None), or (None, the exit status) when it was interrupted or failed (told on stderr)."""
    try:
        return job(), None
    except KeyboardInterrupt:
        _log(interrupted)
        return None, EXIT_INTERRUPTED
    except (OSError, RuntimeError, ValueError) as err:
        _log(f"error: {err}")
        return None, EXIT_FAILED


def run_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.batch import evaluate_to_folder
    from ..evaluate.evaluator import Evaluator
    from ..evaluate.frames import find_videos
    from ..evaluate.registry import ALL_METRICS, HEALTH_METRICS, check_metrics

    if args.phase:
        return run_phase(args)
    if not args.inputs:
        _log("error: give videos or folders to evaluate (or --phase)")
        return EXIT_USAGE
    metrics = HEALTH_METRICS if args.free else (args.metrics or ALL_METRICS)
    try:  # the cheap checks first, the models last
        check_metrics(metrics)
        find_videos(args.inputs)
        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise ValueError(f"--out {args.out!r} is a file, not a folder: give a folder for the results")
        evaluator = Evaluator(metrics, args.weights_dir, args.device, args.segment_seconds)
    except (OSError, ValueError) as err:
        _log(f"error: {err}")
        return EXIT_USAGE
    reports, code = _work(lambda: evaluate_to_folder(args.inputs, args.out, evaluator, plot=not args.no_plot,
                                                     progress=not args.no_progress, log=_log), "interrupted")
    if code is not None:
        return code
    _log(f"{len(reports)} video(s) evaluated; results in {args.out}/ (summary.md, summary.csv)")
    return EXIT_FAILED if any(r.errors for r in reports) else EXIT_OK


def run_phase(args: argparse.Namespace) -> int:
    """``flex evaluate --phase``: the phase concentration curve and predicted collapses per --rope
    strategy and per long-horizon method (named "method:<name>", with the model's sink and L_train)."""
    from ..config import FlexConfig
    from ..evaluate.phase import write_phase_reports
    from ..methods import METHODS
    from ..rope import STRATEGIES

    base = FlexConfig.longlive() if args.preset == "longlive" else FlexConfig()
    methods = args.method if args.method is not None else [m for m in METHODS if m != "flex"]
    try:
        configs = {s: base.replace(strategy=s) for s in (args.rope or STRATEGIES)}
        for m in methods:
            configs[f"method:{m}"] = FlexConfig.for_method(m, l_train=base.l_train)
        reports = write_phase_reports(args.out, configs, args.seconds, plot=not args.no_plot)
    except ValueError as err:
        _log(f"error: {err}")
        return EXIT_USAGE
    for name, r in reports.items():
        peaks = ", ".join(f"{f} ({e:.3f})" for f, e in r.peaks[:5]) or "none"
        print(f"{name}: predicted collapse latent frames (excess): {peaks}")
    _log(f"results in {args.out}/ (phase.json, phase.png)")
    return EXIT_OK


def run_experiment(args: argparse.Namespace) -> int:
    from ..jobs.experiment import ExperimentError, load_experiment, run_experiment as run_it

    try:
        experiment = load_experiment(args.config, out=args.out, weights_dir=args.weights_dir, device=args.device)
    except (OSError, ValueError, ExperimentError) as err:
        _log(f"error: {err}")
        return EXIT_USAGE
    if args.dry_run:
        for job in experiment.jobs():
            _log(f"{job.label}: {len(job.prompts)} video(s) -> {job.out}")
        return EXIT_OK
    result, code = _work(lambda: run_it(experiment, progress=not args.no_progress, log=_log),
                         "interrupted: finished videos are kept; rerun the same command to resume")
    if code is not None:
        return code
    _log(f"table: {result.table_md}")
    return EXIT_FAILED if result.errors else EXIT_OK
