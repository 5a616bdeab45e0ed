"""flex experiment on the tiny synthetic model: config checks, kill in the middle and resume."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiny_assets import make_dit_checkpoint, make_wan_dir

from flex.config import FlexConfig
from flex.jobs.experiment import ExperimentError, load_experiment

PROMPTS = "a red car in the city\na dog runs on the beach\n"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "tiny.pt")}


def write_config(folder: Path, assets, extra: str = "", variants: str | None = None,
                 metrics: str = '["motion_energy", "contrast", "temporal_flickering"]') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "prompts.txt").write_text(PROMPTS)
    variants = variants if variants is not None else """
[[variant]]
name = "Self Forcing"
flex = { strategy = "none", rho = 0.0, sink_frames = 0, window_frames = 21 }

[[variant]]
name = "FLEX"
"""
    config = folder / "exp.toml"
    config.write_text(f"""
[experiment]
name = "tiny"
prompts = "prompts.txt"
seeds = [0]
horizons = [0.5]
out = "runs"
metrics = {metrics}
segment_seconds = 0.25
{extra}

[generation]
dit = "{assets['dit']}"
wan_dir = "{assets['wan']}"
height = 32
width = 48
dtype = "fp32"
device = "cpu"
{variants}
""")
    return config


def test_config_is_checked_before_anything_runs(tmp_path, assets):
    exp = load_experiment(write_config(tmp_path / "ok", assets))
    assert [j.label for j in exp.jobs()] == ["Self Forcing @ 0.5s seed 0", "FLEX @ 0.5s seed 0"]
    assert exp.jobs()[0].settings.flex.strategy == "none" and exp.jobs()[1].settings.flex.strategy == "flex"
    assert exp.jobs()[0].out == tmp_path / "ok" / "runs" / "videos" / "self-forcing" / "0.5s" / "seed0"
    with pytest.raises(ExperimentError, match=r"\[experiment\]: unknown key\(s\) promts"):
        load_experiment(write_config(tmp_path / "a", assets, extra='promts = "x"'))
    with pytest.raises(ExperimentError, match="rho must be"):
        load_experiment(write_config(tmp_path / "b", assets, variants='[[variant]]\nname = "x"\nflex = { rho = 2.0 }'))
    with pytest.raises(ExperimentError, match="used twice"):
        load_experiment(write_config(tmp_path / "c", assets, variants='[[variant]]\nname = "x"\n[[variant]]\nname = "x"'))
    with pytest.raises(ExperimentError, match="generation: unknown key"):
        load_experiment(write_config(tmp_path / "d", assets,
                                     variants='[[variant]]\nname = "x"\ngeneration = { seconds = 3 }'))
    with pytest.raises(ExperimentError, match="metric must be one of"):
        load_experiment(write_config(tmp_path / "e", assets, metrics='["beauty"]'))


def test_a_method_variant_takes_its_paper_settings_under_the_fields_written(tmp_path, assets):
    """The rule of --method: the method's paper settings, then the fields the variant writes."""
    variants = ('[[variant]]\nname = "inf"\nflex = { method = "infinity-rope" }\n'
                '[[variant]]\nname = "inf4"\nflex = { method = "infinity-rope", window_frames = 4 }\n'
                '[[variant]]\nname = "jit"\nflex = { method = "lol-jitter", method_params = { strength = 0.5 } }')
    exp = load_experiment(write_config(tmp_path, assets, variants=variants))
    inf, inf4, jit = (j.settings.flex for j in exp.jobs())
    assert inf == FlexConfig.for_method("infinity-rope") and (inf.sink_frames, inf.window_frames) == (1, 5)
    assert (inf4.sink_frames, inf4.window_frames, inf4.position_policy) == (1, 4, "window")
    assert jit.method == "lol-jitter" and jit.method_params == (("strength", 0.5),)
    with pytest.raises(ExperimentError, match=r"\(bad\) flex: .*method"):
        bad = '[[variant]]\nname = "bad"\nflex = { method = "nope" }'
        load_experiment(write_config(tmp_path / "bad", assets, variants=bad))


def _mp4s(root: Path) -> dict:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(root.rglob("*.mp4"))}


def _cli(argv):
    import argparse

    from flex.cli import evaluate as cli

    parser = argparse.ArgumentParser(prog="flex")
    cli.add_parser(parser.add_subparsers(dest="command"))
    return cli.run(parser.parse_args(argv))


def test_killed_experiment_resumes_without_regenerating(tmp_path, assets, capsys):
    config = write_config(tmp_path, assets)
    runs = tmp_path / "runs"
    code = ("import sys, argparse; from flex.cli import evaluate as cli; p = argparse.ArgumentParser(); "
            "cli.add_parser(p.add_subparsers(dest='command')); "
            f"sys.exit(cli.run(p.parse_args(['experiment', {str(config)!r}, '--no-progress'])))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    stderr = open(tmp_path / "first-run.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:  # kill it as soon as the first video and its manifest are complete
        deadline = time.monotonic() + 300
        while not list(runs.rglob("*.manifest.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        stderr.seek(0)
        first_log = stderr.read()
        stderr.close()
    finished = _mp4s(runs)
    assert 1 <= len(finished) < 4, f"the first run must be killed in the middle; its log:\n{first_log}"
    for video in finished:
        assert json.loads(video.with_suffix(".manifest.json").read_text())["video"] == video.name

    assert _cli(["experiment", str(config), "--no-progress"]) == 0
    log = capsys.readouterr().err
    after = _mp4s(runs)
    assert len(after) == 4
    assert all(after[v] == finished[v] for v in finished)  # nothing finished was regenerated
    assert "skipped" in log or "already generated" in log
    assert not [p for p in runs.rglob("*") if p.name.endswith(".part")]  # no temporary file is left
    for video in after:
        manifest = json.loads(video.with_suffix(".manifest.json").read_text())
        assert {"settings_hash", "seed", "prompt", "commit", "timings_s", "settings"} <= set(manifest)
        assert manifest["prompt"] in PROMPTS and len(manifest["settings_hash"]) == 64
    md = (runs / "table.md").read_text().splitlines()
    assert md[0].startswith("| variant | horizon (s) | videos | motion_energy | motion_energy drift |")
    assert [line.split(" | ")[0] for line in md[2:]] == ["| Self Forcing", "| FLEX"]
    assert all(" | 2 | " in line and "n/a" not in line for line in md[2:])
    assert (runs / "table.csv").read_text().count("\n") == 3
    assert (runs / "curves-0.5s.png").read_bytes()[:4] == b"\x89PNG"

    stamps = {p: p.stat().st_mtime_ns for p in (runs / "eval").rglob("*.json")}
    assert len(stamps) == 4
    assert _cli(["experiment", str(config), "--no-progress"]) == 0  # everything done: nothing redone
    assert {p: p.stat().st_mtime_ns for p in (runs / "eval").rglob("*.json")} == stamps
    assert _mp4s(runs) == after


@pytest.mark.parametrize("name", ["table1_baselines", "table3_components", "table4_alpha_beta", "figure5_rho_sweep"])
def test_shipped_configs_are_valid(name, tmp_path, assets):
    """The example configs check out once their model files and prompt file exist."""
    text = (Path(__file__).parent.parent / "experiments" / f"{name}.toml").read_text()
    text = text.replace("../checkpoints/self_forcing_dmd.pt", str(assets["dit"]))
    text = text.replace("../wan_models/Wan2.1-T2V-1.3B-Diffusers", str(assets["wan"]))
    (tmp_path / f"{name}.toml").write_text(text)
    (tmp_path / "prompts.txt").write_text(PROMPTS)
    exp = load_experiment(tmp_path / f"{name}.toml", device="cpu")
    assert len(exp.variants) >= 4 and len(exp.jobs()) == len(exp.variants) * len(exp.horizons)
    assert len({j.settings.flex for j in exp.jobs() if j.horizon == exp.horizons[0]}) == len(exp.variants)
