"""Sink collapse: the weight-free RoPE phase concentration (hand cases, LoL's collapse frames for
plain RoPE, the policy interface) and the per-frame distance to the sink on synthetic videos."""
import json
import math

import numpy as np
import pytest
import torch

from flex.config import FlexConfig
from flex.evaluate import Evaluator
from flex.evaluate.phase import FlexPositions, concentration, excess, flex_phase_report, phase_report
from flex.evaluate.sink_collapse import SinkCollapseTracker, collapse_events, sink_pixel_frames
from flex.rope import STRATEGIES, temporal_thetas


class OnePlane:
    """A positions policy of one head and one plane: query at the frame, one sink key at 0."""

    def __init__(self, theta):
        self.theta = theta

    def phase_inputs(self, frame):
        return float(frame), torch.zeros(1, dtype=torch.float64), torch.tensor([self.theta], dtype=torch.float64)


def test_concentration_by_hand():
    theta = 2 * math.pi / 10  # realigns with the sink every 10 frames
    curve = concentration(OnePlane(theta), range(25))
    assert curve.tolist() == pytest.approx([math.cos(theta * f) for f in range(25)])
    report = phase_report(OnePlane(theta), 40, first_frame=5, threshold=0.5)
    assert sorted(f for f, _ in report.peaks) == [10, 20, 30]
    # excess: minus the moving mean of 21 points (a constant curve has none)
    assert excess(torch.full((30,), 0.7, dtype=torch.float64)).abs().max() < 1e-12


def test_per_head_thetas_are_averaged():
    class TwoHeads:
        def phase_inputs(self, frame):
            thetas = torch.tensor([[0.5, 0.25], [1.0, 2.0]], dtype=torch.float64)  # [H, P]
            return float(frame), torch.tensor([0.0, 1.0], dtype=torch.float64), thetas

    got = concentration(TwoHeads(), [7])
    want = np.mean([math.cos(t * (7 - s)) for t in (0.5, 0.25, 1.0, 2.0) for s in (0, 1)])
    assert float(got[0]) == pytest.approx(want)


def test_plain_rope_predicts_lols_collapse_frames():
    report = flex_phase_report(FlexConfig(strategy="none"), seconds=60)  # 240 latent frames
    assert [f for f, _ in report.peaks[:2]] == [202, 133]  # 201 / 132 frames after the middle sink frame


def test_flex_positions_follow_the_position_policy():
    cfg = FlexConfig(window_frames=9)
    q, sinks, thetas = FlexPositions(cfg, 400).phase_inputs(250)
    assert q == 250.0 and sinks.tolist() == [0.0, 1.0, 2.0]
    assert torch.equal(thetas, temporal_thetas(128, "flex", 400, 21, 0.1, 2.5))
    q, _, _ = FlexPositions(cfg.replace(position_policy="window"), 400).phase_inputs(250)
    assert q == 250 - (252 - 12)  # the chunk's end sits at sink + window
    assert FlexPositions(cfg, 400).phase_inputs(1)[1].tolist() == [0.0]  # only the sink frames already made


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_has_a_curve(strategy):
    report = flex_phase_report(FlexConfig(strategy=strategy), seconds=30)
    assert len(report.concentration) == 120 and all(e >= 0.1 for _, e in report.peaks)
    assert all(f >= 21 for f, _ in report.peaks)


def test_cli_phase_writes_json_for_every_strategy(tmp_path, capsys):
    from flex.cli import main

    assert main(["evaluate", "--phase", "--seconds", "30", "--out", str(tmp_path), "--no-plot"]) == 0
    data = json.loads((tmp_path / "phase.json").read_text())
    from flex.methods import METHODS

    assert sorted(data["policies"]) == sorted(list(STRATEGIES) + [f"method:{m}" for m in METHODS if m != "flex"])
    assert "none: predicted collapse latent frames" in capsys.readouterr().out


# ------------------------------------------------------------------ distance to the sink


def test_sink_frames_and_events_by_hand():
    assert sink_pixel_frames(3) == 9 and sink_pixel_frames(1) == 1
    d = [0.0] * 3 + [1.0] * 10 + [0.3, 0.2, 1.0, 1.0, 0.1]
    assert collapse_events(d, 3, 4) == [13, 17]


def _video_returning_to_the_sink(n=60, h=20, w=24):
    rng = np.random.default_rng(0)
    sink = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    frames = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    frames[:9] = sink
    frames[40:44] = sink  # the video snaps back to its first frames at frame 40
    return frames, sink


def test_sink_distance_and_collapse_event():
    frames, sink = _video_returning_to_the_sink()
    report = Evaluator(["motion_energy"], segment_seconds=1.0).evaluate_frames(frames, 8)
    result = report.sink_collapse
    assert result["sink_frames"] == 9 and len(result["distance"]) == 60
    diff = (frames[20].astype(np.float64) - sink.astype(np.float64)) / 255.0
    assert result["distance"][20] == pytest.approx(float(np.sqrt((diff ** 2).mean())))
    assert result["distance"][41] == 0.0
    assert [e["frame"] for e in result["events"]] == [40]
    assert result["events"][0]["latent_frame"] == 10 and result["events"][0]["time_s"] == 5.0
    assert max(result["normalised_distance"]) == 1.0


def test_overlapping_segments_are_counted_once():
    frames, _ = _video_returning_to_the_sink(n=23)
    tracker = SinkCollapseTracker(8.0)
    tracker.update(0, torch.from_numpy(frames[:10]))
    tracker.update(5, torch.from_numpy(frames[5:20]))  # overlaps frames 5..9
    tracker.update(13, torch.from_numpy(frames[13:23]))
    whole = SinkCollapseTracker(8.0)
    whole.update(0, torch.from_numpy(frames))
    assert tracker.distances == whole.distances and len(tracker.distances) == 23


def test_cli_report_has_delta_drift_sink_distance_and_quality_columns(tmp_path, capsys):
    from flex.cli import main
    from flex.video import write_video

    frames, _ = _video_returning_to_the_sink(n=64, h=32, w=48)
    write_video(tmp_path / "v.mp4", frames, fps=8)
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "v.mp4"), "--free", "--out", str(out), "--no-progress",
                 "--segment-seconds", "2"]) == 0
    report = json.loads((out / "v.json").read_text())
    assert report["version"] == 2 and report["derived"] == {}  # no quality dimensions measured
    energy = report["metrics"]["motion_energy"]
    assert energy["delta_drift"] == pytest.approx(abs(energy["head_15pct"] - energy["tail_15pct"]))
    assert len(report["sink_collapse"]["distance"]) == 64
    assert [e["frame"] for e in report["sink_collapse"]["events"]] == [40]  # survives the mp4 round trip
    assert "sink collapse: v.mp4 frame 40" in capsys.readouterr().err
    assert "motion_energy Δdrift" in (out / "summary.csv").read_text().splitlines()[0]
    assert main(["evaluate", "--out", str(out)]) == 2  # neither videos nor --phase


def test_feature_distance_with_an_encoder():
    frames, sink = _video_returning_to_the_sink()

    def encoder(x):  # mean colour per channel, centred: a 3-d feature
        return x.double().mean((1, 2)) - 127.5

    tracker = SinkCollapseTracker(8.0, encoder=encoder)
    tracker.update(0, torch.from_numpy(frames))
    result = tracker.result()
    f = [encoder(torch.from_numpy(frames[t:t + 1]))[0] for t in (0, 20)]
    cos = float(f[0] @ f[1] / f[0].norm() / f[1].norm())
    assert result["feature_distance"][20] == pytest.approx(1 - cos)
    assert result["feature_distance"][41] == pytest.approx(0.0, abs=1e-12)
    assert len(result["normalised_feature_distance"]) == 60 and "feature_events" in result


def test_phase_covers_the_long_horizon_methods(tmp_path):
    """``flex evaluate --phase`` reports every method of flex.methods beside the --rope strategies:
    window positions keep the sink within the trained distances, and LoL's per-head jitter breaks
    the phase alignment behind the collapses that plain RoPE shows."""
    import json

    from flex import cli

    out = tmp_path / "phase"
    code = cli.main(["evaluate", "--phase", "--rope", "none", "--method", "infinity-rope,lol-jitter",
                     "--seconds", "240", "--out", str(out), "--no-plot"])
    assert code == 0
    policies = json.loads((out / "phase.json").read_text())["policies"]
    assert set(policies) == {"none", "method:infinity-rope", "method:lol-jitter"}
    assert policies["method:lol-jitter"]["config"]["method"] == "lol-jitter"
    assert policies["none"]["predicted_collapse_frames"] and not policies["method:lol-jitter"]["predicted_collapse_frames"]
