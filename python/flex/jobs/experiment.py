"""``flex experiment CONFIG.toml``: generate, evaluate and tabulate a paper-style experiment.

A config names the model files, a prompt file, seeds, horizons and variants (FlexConfig fields
and generation options); see experiments/ for the paper's tables. Every (variant, horizon,
seed) is one generation job of :mod:`flex.jobs.generate` over all prompts, so a rerun skips the
videos already finished with the same settings and an interrupted experiment resumes where it
stopped. Results:

    <out>/videos/<variant>/<horizon>s/seed<S>/NNN-<prompt>.mp4            the videos
    <out>/videos/<variant>/<horizon>s/seed<S>/NNN-<prompt>.manifest.json  settings hash, seed, prompt,
                                                                            commit, timings
    <out>/eval/<variant>/<horizon>s/seed<S>/NNN-<prompt>.json             evaluation (reused when the
                                                                            video and metrics are unchanged)
    <out>/table.md, <out>/table.csv      rows = variants (x horizon), columns = metrics and drift
    <out>/curves-<horizon>s.png          each metric over time, one line per variant (mean over videos)

Every file is written atomically.
"""
from __future__ import annotations

import dataclasses
import json
import re
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..evaluate.registry import ALL_METRICS, check_metrics
from ..evaluate.segments import DEFAULT_SEGMENT_SECONDS

EXPERIMENT_KEYS = ("name", "prompts", "seeds", "horizons", "out", "metrics", "segment_seconds", "weights_dir",
                   "device")
MANAGED = ("prompts", "out", "seed", "seconds", "frames", "flex")  # set by the experiment, not [generation]
PATH_FIELDS = ("dit", "wan_dir", "lora")  # relative to the config file's folder
TUPLE_FIELDS = ("denoising_steps",)


class ExperimentError(ValueError):
    """A config that cannot work; the message names the file and the key."""


@dataclass
class Job:
    variant: str
    horizon: float
    seed: int
    settings: object  # flex.jobs.settings.GenerationSettings

    @property
    def label(self) -> str:
        return f"{self.variant} @ {self.horizon:g}s seed {self.seed}"

    @property
    def prompts(self) -> tuple[str, ...]:
        return self.settings.prompts

    @property
    def out(self) -> Path:
        return Path(self.settings.out)


@dataclass
class Experiment:
    name: str
    config: Path
    out: Path
    variants: list[str]
    horizons: list[float]
    seeds: list[int]
    metrics: tuple[str, ...]
    segment_seconds: float
    weights_dir: str | None
    device: str
    job_list: list[Job] = field(default_factory=list)

    def jobs(self) -> list[Job]:
        return list(self.job_list)


@dataclass
class ExperimentResult:
    table_md: Path
    table_csv: Path
    curves: list[Path]
    errors: list[str]


def _slug(text: str) -> str:
    """Folder name of a variant: the generation job's slug, keeping signs ("rho -0.5" -> rho-minus-0-5)."""
    from .inputs import slug

    return slug(re.sub(r"-(?=\d)", " minus ", text).replace("+", " plus "))


def _require(table: dict, where: str, allowed) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise ExperimentError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}")


def load_experiment(path, out=None, weights_dir=None, device=None) -> Experiment:
    """Read and check a config; every job's settings are checked (files, values) before anything runs."""
    import tomllib

    try:
        from ..config import FlexConfig
        from .inputs import read_prompt_file
        from .settings import GenerationSettings
    except ImportError as err:
        raise ExperimentError(f"flex experiment needs the generation job (flex.jobs): {err}") from None

    config = Path(path)
    try:
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"experiment config {str(config)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"experiment config {str(config)!r} is not valid TOML: {err}") from None
    _require(raw, str(config), ("experiment", "generation", "flex", "variant"))
    here = config.parent
    exp = raw.get("experiment", {})
    _require(exp, f"{config} [experiment]", EXPERIMENT_KEYS)

    def rel(p) -> str:
        return str(p if Path(p).is_absolute() else here / p)

    if "prompts" not in exp:
        raise ExperimentError(f"{config} [experiment]: 'prompts' (a prompt file, one prompt per line) is required")
    try:
        prompts = read_prompt_file(rel(exp["prompts"]))
    except ValueError as err:
        raise ExperimentError(f"{config} [experiment] prompts: {err}") from None
    seeds = exp.get("seeds", [0])
    horizons = exp.get("horizons", [30])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                             for s in seeds):
        raise ExperimentError(f"{config} [experiment] seeds must be a non-empty list of ints, got {seeds!r}")
    if not isinstance(horizons, list) or not horizons or not all(
            isinstance(h, (int, float)) and not isinstance(h, bool) and h > 0 for h in horizons):
        raise ExperimentError(f"{config} [experiment] horizons must be a non-empty list of seconds > 0, "
                              f"got {horizons!r}")
    metrics = exp.get("metrics", "all")
    try:
        metrics = ALL_METRICS if metrics == "all" else check_metrics(metrics)
    except ValueError as err:
        raise ExperimentError(f"{config} [experiment] metrics: {err}") from None
    segment_seconds = exp.get("segment_seconds", DEFAULT_SEGMENT_SECONDS)
    root = Path(out) if out is not None else Path(rel(exp.get("out", f"runs/{config.stem}")))
    weights = weights_dir if weights_dir is not None else (rel(exp["weights_dir"]) if "weights_dir" in exp else None)

    init_fields = [f.name for f in dataclasses.fields(GenerationSettings) if f.init]
    settable = [f for f in init_fields if f not in MANAGED]

    def generation_options(table: dict, where: str) -> dict:
        _require(table, where, settable)
        return {k: (rel(v) if k in PATH_FIELDS and v is not None else tuple(v) if k in TUPLE_FIELDS else v)
                for k, v in table.items()}

    base = generation_options(raw.get("generation", {}), f"{config} [generation]")
    if device is not None:
        base["device"] = device
    base_flex = raw.get("flex", {})
    variants = raw.get("variant", [])
    if not isinstance(variants, list) or not variants:
        raise ExperimentError(f"{config}: at least one [[variant]] is required")
    names: list[str] = []
    jobs: list[Job] = []
    for k, v in enumerate(variants):
        where = f"{config} [[variant]] {k + 1}"
        _require(v, where, ("name", "flex", "generation"))
        name = v.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ExperimentError(f"{where}: 'name' (a non-empty string) is required")
        if name in names or _slug(name) in map(_slug, names):
            raise ExperimentError(f"{where}: variant name {name!r} is used twice")
        names.append(name)
        try:
            fields = {**base_flex, **v.get("flex", {})}
            # As on the command line: a method runs with its paper's settings for the fields not written.
            flex = FlexConfig.for_method(**fields) if "method" in fields else FlexConfig(**fields)
        except (TypeError, ValueError) as err:
            raise ExperimentError(f"{where} ({name}) flex: {err}") from None
        options = {**base, **generation_options(v.get("generation", {}), f"{where} ({name}) generation")}
        for horizon in horizons:
            for seed in seeds:
                folder = root / "videos" / _slug(name) / f"{horizon:g}s" / f"seed{seed}"
                try:
                    settings = GenerationSettings(prompts=prompts, out=str(folder), seconds=float(horizon),
                                                  seed=seed, flex=flex, **options)
                except (TypeError, ValueError) as err:
                    raise ExperimentError(f"{where} ({name}), horizon {horizon:g}s, seed {seed}: {err}") from None
                jobs.append(Job(name, float(horizon), seed, settings))
    return Experiment(name=exp.get("name", config.stem), config=config, out=root, variants=names,
                      horizons=[float(h) for h in horizons], seeds=list(seeds), metrics=metrics,
                      segment_seconds=segment_seconds, weights_dir=weights, device=exp.get("device", "auto")
                      if device is None else device, job_list=jobs)


def source_commit() -> str | None:
    """The git commit of the flex sources in use (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def manifest_path(video: Path) -> Path:
    return video.with_suffix(".manifest.json")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_experiment(exp: Experiment, *, progress: bool = True, log: Callable[[str], None] = print) -> ExperimentResult:
    """Generate what is missing, evaluate what is new, write the table and the curves."""
    from .. import __version__
    from ..evaluate.evaluator import REPORT_VERSION, Evaluator, VideoReport
    from ..evaluate.plot import plot_curves
    from ..evaluate.quality_score import derived_series
    from ..evaluate.report import write_json, write_tables
    from ..evaluate.series import mean_series
    from .generate import generate_videos
    from .interrupt import terminate_as_interrupt

    commit = source_commit()

    def write_manifest(job: Job, i: int, generate_s: float | None) -> None:
        video = job.settings.outputs[i]
        path = manifest_path(video)
        digest = job.settings.video_hash(i)
        old = _read_json(path)
        if generate_s is None and old is not None and old.get("settings_hash") == digest:
            return  # already recorded with these settings
        write_json(path, {
            "video": video.name, "variant": job.variant, "horizon_s": job.horizon, "prompt": job.prompts[i],
            "seed": job.seed + i, "settings_hash": digest, "settings": job.settings.video_record(i),
            "commit": commit, "flex_version": __version__,
            "timings_s": {"generate": generate_s},
        })

    with terminate_as_interrupt():
        for n, job in enumerate(exp.jobs()):
            log(f"[{n + 1}/{len(exp.job_list)}] generate {job.label}: {len(job.prompts)} video(s)")
            index = {p: i for i, p in enumerate(job.settings.outputs)}
            generate_videos(job.settings, log=log, progress=progress,
                            on_video=lambda r, job=job, index=index: write_manifest(
                                job, index[Path(r.path)], None if r.skipped else r.seconds))

        evaluator = None
        errors: list[str] = []
        reports: dict[tuple[str, float], list[VideoReport]] = {}
        speeds: dict[tuple[str, float], list[float]] = {}
        for job in exp.jobs():
            for i, video in enumerate(job.settings.outputs):
                digest = job.settings.video_hash(i)
                eval_path = exp.out / "eval" / video.relative_to(exp.out / "videos").with_suffix(".json")
                cached = _read_json(eval_path)
                if (cached is not None and cached.get("settings_hash") == digest
                        and cached.get("version") == REPORT_VERSION
                        and cached.get("metrics_requested") == list(exp.metrics)
                        and cached.get("segment_seconds") == exp.segment_seconds):
                    report = VideoReport.from_dict(cached)
                else:
                    if evaluator is None:
                        evaluator = Evaluator(exp.metrics, exp.weights_dir, exp.device, exp.segment_seconds)
                        errors += list(evaluator.load_errors.values())
                        for message in evaluator.load_errors.values():
                            log(f"error: {message}")
                    log(f"evaluate {video}")
                    t0 = time.perf_counter()
                    report = evaluator.evaluate_video(video)
                    write_json(eval_path, {**report.to_dict(), "settings_hash": digest,
                                           "metrics_requested": list(exp.metrics)})
                    manifest = _read_json(manifest_path(video)) or {}
                    manifest.setdefault("timings_s", {})["evaluate"] = time.perf_counter() - t0
                    write_json(manifest_path(video), manifest)
                errors += [m for k, m in report.errors.items() if m not in errors]
                reports.setdefault((job.variant, job.horizon), []).append(report)
                seconds = ((_read_json(manifest_path(video)) or {}).get("timings_s") or {}).get("generate")
                if seconds:  # latent frames per second of generation (text encoding and decode included)
                    speeds.setdefault((job.variant, job.horizon), []).append(job.settings.latent_frames / seconds)

    rows, curves = [], []
    for horizon in exp.horizons:
        lines, times = {}, {}
        for variant in exp.variants:
            group = reports.get((variant, horizon), [])
            names = sorted({m for r in group for m in r.metrics})
            series = {m: mean_series(m, [r.metrics[m] for r in group if m in r.metrics]) for m in names}
            series.update(derived_series(series))  # affine in the dimensions: the score of the means
            fps = speeds.get((variant, horizon))
            rows.append({"labels": {"variant": variant, "horizon (s)": f"{horizon:g}", "videos": len(group)},
                         "metrics": series,
                         "after": {"latent FPS": f"{statistics.median(fps):.2f}" if fps else "n/a"}})
            if group and series:
                lines[variant], times[variant] = series, group[0].segment_centres()
        if lines:
            curves.append(plot_curves(exp.out / f"curves-{horizon:g}s.png", lines, times,
                                      title=f"{exp.name}: {horizon:g} s"))
    csv_path, md_path = write_tables(exp.out, rows, stem="table")
    return ExperimentResult(table_md=md_path, table_csv=csv_path, curves=curves, errors=errors)
