"""Weights-free health metrics, segments and drift on synthetic videos whose values are known exactly."""
import json

import numpy as np
import pytest

from flex.evaluate import HEALTH_METRICS, Evaluator, MetricSeries, segment_bounds, segment_length
from flex.evaluate.segments import iter_segments

FPS = 4  # 1 s segments of 4 frames keep the videos small


def evaluate(frames, metrics=HEALTH_METRICS, seconds=1.0, fps=FPS):
    return Evaluator(metrics, segment_seconds=seconds).evaluate_frames(frames, fps)


def static_video(n=12, h=16, w=20, seed=0):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(img[None], n, axis=0)


def checkerboard(h, w, d):
    """Grey values 128 + d and 128 - d on a one-pixel checkerboard (R = G = B)."""
    yy, xx = np.mgrid[:h, :w]
    grey = np.where((yy + xx) % 2 == 0, 128 + d, 128 - d).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


# ------------------------------------------------------------------ segments


@pytest.mark.parametrize("n, length, expected", [
    (12, 4, [(0, 4), (4, 8), (8, 12)]),
    (12, 5, [(0, 5), (5, 10), (7, 12)]),   # the last segment borrows 3 frames from the one before
    (3, 5, [(0, 3)]),                      # shorter than one segment: one segment of all frames
    (5, 5, [(0, 5)]),
])
def test_segment_bounds(n, length, expected):
    assert segment_bounds(n, length) == expected
    frames = [np.full((2, 2, 3), i, np.uint8) for i in range(n)]
    got = [(a, b, seg[:, 0, 0, 0].tolist()) for a, b, seg in iter_segments(frames, length)]
    assert got == [(a, b, list(range(a, b))) for a, b in expected]


def test_segment_length_and_bad_values():
    assert segment_length(5.0, 16) == 80
    assert segment_length(0.01, 16) == 2  # at least one frame pair
    with pytest.raises(ValueError, match="segment_seconds"):
        segment_length(0.0, 16)
    with pytest.raises(ValueError, match="fps"):
        segment_length(5.0, float("nan"))
    with pytest.raises(ValueError, match="n_frames"):
        segment_bounds(0, 4)
    with pytest.raises(ValueError, match="no frames"):
        list(iter_segments([], 4))


def test_series_mean_and_drift():
    s = MetricSeries("x", [0.5, 0.25, 0.125])
    assert s.mean == pytest.approx(0.875 / 3)
    assert s.drift == -0.375
    assert MetricSeries("x", [0.7]).drift == 0.0


# ------------------------------------------------------------------ known videos


def test_static_video():
    r = evaluate(static_video())
    assert len(r.segments) == 3
    for name in ("temporal_flickering", "frozen_fraction"):
        assert r.metrics[name].values == [1.0, 1.0, 1.0]
    assert r.metrics["motion_energy"].values == [0.0, 0.0, 0.0]
    for name in HEALTH_METRICS:
        assert r.metrics[name].drift == 0.0


def test_independent_random_frames():
    frames = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    r = evaluate(frames, seconds=2.0)
    f = frames.astype(np.float64)
    mae = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3)).mean()  # independent reference
    assert r.metrics["motion_energy"].values[0] == pytest.approx(mae / 255, rel=1e-6)
    assert r.metrics["temporal_flickering"].values[0] == pytest.approx((255 - mae) / 255, rel=1e-6)
    # E|X - Y| of two independent uniform bytes is (256^2 - 1) / (3 * 256) = 85.33 levels
    assert mae == pytest.approx(65535 / 768, rel=0.01)
    assert r.metrics["frozen_fraction"].values == [0.0]
    high, low = f.max(-1), f.min(-1)
    sat = np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0).mean()
    assert r.metrics["saturation"].values[0] == pytest.approx(sat, rel=1e-6)


def test_fade_to_grey_contrast_and_sharpness_drift():
    d = [120 - 10 * t for t in range(12)]  # checkerboard amplitude fades from 120 to 10 levels
    frames = np.stack([checkerboard(10, 12, dt) for dt in d])
    r = evaluate(frames)
    seg_d = [d[0:4], d[4:8], d[8:12]]
    contrast = [np.mean(s) / 255 for s in seg_d]  # std of a +-d checkerboard is d
    assert r.metrics["contrast"].values == pytest.approx(contrast, rel=1e-6)
    assert r.metrics["contrast"].drift == pytest.approx((25 - 105) / 255, rel=1e-6)
    # the 4-neighbour Laplacian of a +-d checkerboard is -+8d everywhere inside
    sharp = [np.mean([(8 * x / 255) ** 2 for x in s]) for s in seg_d]
    assert r.metrics["sharpness"].values == pytest.approx(sharp, rel=1e-5)
    assert r.metrics["sharpness"].drift < 0
    assert r.metrics["saturation"].values == [0.0, 0.0, 0.0]  # grey
    # amplitude changes by 10 levels per frame: every pixel changes by exactly 10
    assert r.metrics["motion_energy"].values == pytest.approx([10 / 255] * 3, rel=1e-6)


def test_linear_pan_motion_energy():
    w = 128
    ramp = np.repeat((2 * np.arange(w)).astype(np.uint8)[None, :, None], 3, axis=-1)
    ramp = np.repeat(ramp, 8, axis=0)  # [8, 128, 3]
    frames = np.stack([np.roll(ramp, t, axis=1) for t in range(8)])  # pans 1 pixel per frame
    r = evaluate(frames, seconds=2.0)
    # 127 columns change by 2 levels, the wrapped column by 254
    assert r.metrics["motion_energy"].values == pytest.approx([(127 * 2 + 254) / w / 255], rel=1e-6)
    assert r.metrics["frozen_fraction"].values == [0.0]


def test_saturation_of_pure_colours():
    red = np.zeros((4, 6, 6, 3), np.uint8)
    red[..., 0] = 255
    pink = np.full((4, 6, 6, 3), 128, np.uint8)
    pink[..., 0] = 255
    black = np.zeros((4, 6, 6, 3), np.uint8)
    r = evaluate(np.concatenate([red, pink, black]))
    assert r.metrics["saturation"].values == pytest.approx([1.0, 127 / 255, 0.0], rel=1e-6)
    assert r.metrics["saturation"].drift == pytest.approx(-1.0)


def test_frozen_fraction_counts_pairs():
    frames = static_video(n=4, seed=3)
    frames[2] = 255 - frames[2]  # pairs (1, 2) and (2, 3) change, pair (0, 1) does not
    r = evaluate(frames)
    assert r.metrics["frozen_fraction"].values == [pytest.approx(1 / 3)]


def test_bad_frames_are_rejected():
    ev = Evaluator(HEALTH_METRICS)
    with pytest.raises(ValueError, match="uint8"):
        ev.evaluate_frames(np.zeros((4, 8, 8, 3), np.float32), FPS)
    with pytest.raises(ValueError, match="RGB"):
        ev.evaluate_frames(np.zeros((4, 8, 8), np.uint8), FPS)
    with pytest.raises(ValueError, match="metric must be one of"):
        Evaluator(["colourfulness"])
    with pytest.raises(ValueError, match="segment_seconds"):
        Evaluator(HEALTH_METRICS, segment_seconds=-1)


def test_too_small_frames_fail_only_that_metric():
    r = evaluate(static_video(n=4, h=2, w=2))
    assert "sharpness" in r.errors and "3x3" in r.errors["sharpness"]
    assert "sharpness" not in r.metrics
    assert r.metrics["motion_energy"].values == [0.0]


# ------------------------------------------------------------------ files and the command line


def _write(path, frames, fps=16):
    from flex.video import write_video

    write_video(path, frames, fps=fps)
    return path


def test_mp4_file_is_streamed_in_segments(tmp_path):
    video = _write(tmp_path / "still.mp4", static_video(n=40, h=32, w=48), fps=16)
    r = Evaluator(HEALTH_METRICS, segment_seconds=1.0).evaluate_video(video)
    assert (r.fps, r.frames, r.segments) == (16.0, 40, [(0, 16), (16, 32), (24, 40)])
    assert r.metrics["frozen_fraction"].values == [1.0, 1.0, 1.0]
    assert r.metrics["temporal_flickering"].mean == pytest.approx(1.0, abs=1e-3)
    assert r.timings["decode"] >= 0 and set(HEALTH_METRICS) <= set(r.timings)


def _parse(argv):
    import argparse

    from flex.cli import evaluate as cli

    parser = argparse.ArgumentParser(prog="flex")
    sub = parser.add_subparsers(dest="command")
    cli.add_parser(sub)
    return cli, parser.parse_args(argv)


def test_cli_free_on_a_folder(tmp_path, capsys):
    videos = tmp_path / "videos"
    _write(videos / "a.mp4", static_video(n=24, h=32, w=48))
    frames = np.stack([checkerboard(32, 48, 100 - 4 * t) for t in range(24)])
    _write(videos / "b.mp4", frames)
    out = tmp_path / "eval"
    cli, args = _parse(["evaluate", str(videos), "--free", "--out", str(out), "--segment-seconds", "0.5",
                        "--no-progress"])
    assert cli.run(args) == 0
    a = json.loads((out / "a.json").read_text())
    b = json.loads((out / "b.json").read_text())
    assert set(a["metrics"]) == set(HEALTH_METRICS) and a["errors"] == {}
    assert len(a["segments"]) == 3 and a["segment_seconds"] == 0.5
    assert b["metrics"]["contrast"]["drift"] < 0
    assert (out / "a.png").stat().st_size > 0 and (out / "b.png").read_bytes()[:4] == b"\x89PNG"
    csv_lines = (out / "summary.csv").read_text().splitlines()
    assert csv_lines[0].startswith("video,motion_energy,motion_energy drift,")
    assert [line.split(",")[0] for line in csv_lines[1:]] == ["a.mp4", "b.mp4"]
    drift_col = csv_lines[0].split(",").index("contrast drift")
    assert float(csv_lines[2].split(",")[drift_col]) == pytest.approx(b["metrics"]["contrast"]["drift"])
    md = (out / "summary.md").read_text()
    assert md.startswith("| video | motion_energy | motion_energy drift |") and "| b.mp4 |" in md
    assert not list(out.glob(".*part"))  # atomic writes leave no temporary file


def test_cli_missing_weights_name_file_and_metric_others_still_run(tmp_path, capsys):
    video = _write(tmp_path / "a.mp4", static_video(n=8, h=32, w=48))
    weights = tmp_path / "weights"
    weights.mkdir()
    cli, args = _parse(["evaluate", str(video), "--metrics", "subject_consistency,motion_energy",
                        "--weights-dir", str(weights), "--out", str(tmp_path / "eval"), "--no-progress",
                        "--no-plot"])
    assert cli.run(args) == 1  # a requested metric could not run
    err = capsys.readouterr().err
    assert "subject_consistency" in err and str(weights / "dino_vitb16") in err
    report = json.loads((tmp_path / "eval" / "a.json").read_text())
    assert report["metrics"]["motion_energy"]["segments"] == [0.0]
    assert "dino_vitb16" in report["errors"]["subject_consistency"]


def test_cli_bad_arguments(tmp_path, capsys):
    cli, args = _parse(["evaluate", str(tmp_path / "nothing.mp4"), "--free", "--no-progress"])
    assert cli.run(args) == 2
    assert "does not exist" in capsys.readouterr().err
    cli, args = _parse(["evaluate", str(tmp_path), "--metrics", "beauty", "--no-progress"])
    assert cli.run(args) == 2
    assert "metric must be one of" in capsys.readouterr().err


def test_cli_goes_on_past_an_unreadable_video(tmp_path, capsys):
    """A corrupt video before good ones is reported; the others are evaluated and summarised; exit 1."""
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a_corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    _write(videos / "b.mp4", static_video(n=8, h=32, w=48))
    out = tmp_path / "eval"
    cli, args = _parse(["evaluate", str(videos), "--free", "--out", str(out), "--no-progress", "--no-plot"])
    assert cli.run(args) == 1
    err = capsys.readouterr().err
    assert "a_corrupt.mp4" in err and "cannot be read" in err
    assert set(json.loads((out / "b.json").read_text())["metrics"]) == set(HEALTH_METRICS)
    assert "cannot be read" in json.loads((out / "a_corrupt.json").read_text())["errors"]["video"]
    rows = [line.split(",")[0] for line in (out / "summary.csv").read_text().splitlines()[1:]]
    assert rows == ["a_corrupt.mp4", "b.mp4"]


def test_cli_out_that_is_a_file_names_the_flag(tmp_path, capsys):
    video = _write(tmp_path / "a.mp4", static_video(n=8, h=32, w=48))
    (tmp_path / "results").write_text("not a folder")
    cli, args = _parse(["evaluate", str(video), "--free", "--out", str(tmp_path / "results"), "--no-progress"])
    assert cli.run(args) == 2
    assert "--out" in (err := capsys.readouterr().err) and "is a file, not a folder" in err


def test_weights_dir_from_environment(tmp_path, monkeypatch):
    from flex.evaluate.weights import ENV, weights_root

    monkeypatch.setenv(ENV, str(tmp_path))
    assert weights_root() == tmp_path
    assert weights_root(tmp_path / "other") == tmp_path / "other"
    monkeypatch.delenv(ENV)
    assert weights_root() is None
