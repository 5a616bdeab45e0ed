"""VBench equivalence: numbers recorded from VBench's and AMT's own code (tests/fixtures_scripts/
record_vbench.py, commits in its docstring) must come out of flex.evaluate to 1e-6; the Quality
Score and FramePack's Δdrift also on hand-computed cases."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flex.evaluate import Evaluator, MetricSeries, MissingWeightsError
from flex.evaluate import quality_score as Q
from flex.evaluate import weights as W
from flex.evaluate.aesthetic_quality import aesthetic_score
from flex.evaluate.amt import AMTS
from flex.evaluate.consistency import consistency
from flex.evaluate.dynamic_degree import thresholds, top5_mean
from flex.evaluate.motion_smoothness import build_amt, pad_amount, smoothness
from flex.evaluate.windows import window_bounds, window_frames

HERE = Path(__file__).resolve().parent
FIXTURES = torch.load(HERE / "data" / "vbench_fixtures.pt", weights_only=False)


def _recorder():
    spec = importlib.util.spec_from_file_location("record_vbench", HERE / "fixtures_scripts" / "record_vbench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


R = _recorder()


# ------------------------------------------------------------------ Quality Score


def test_quality_score_matches_vbench_cal_final_score():
    for case in FIXTURES["quality"]:
        assert Q.vbench_quality_score(case["dims"]) == pytest.approx(case["score"], abs=1e-12)


def test_quality_score_by_hand():
    top = {d: hi for d, (lo, hi) in Q.NORMALIZE.items()}
    bottom = {d: lo for d, (lo, hi) in Q.NORMALIZE.items()}
    assert Q.vbench_quality_score(top) == pytest.approx(1.0)
    assert Q.vbench_quality_score(bottom) == pytest.approx(0.0)
    # only dynamic degree at 1 (weight 0.5 of 6.5), the others at their minimum
    assert Q.vbench_quality_score({**bottom, "dynamic_degree": 1.0}) == pytest.approx(0.5 / 6.5)
    # only subject consistency half-way between its min and max
    half = {**bottom, "subject_consistency": (0.1462 + 1.0) / 2}
    assert Q.vbench_quality_score(half) == pytest.approx(0.5 / 6.5)
    assert Q.quality_mean({d: 0.1 * (k + 1) for k, d in enumerate(Q.QUALITY_DIMENSIONS)}) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="motion_smoothness"):
        Q.vbench_quality_score({d: 1.0 for d in Q.QUALITY_DIMENSIONS if d != "motion_smoothness"})


def test_quality_series_per_segment_and_video():
    values = {d: [0.9, 0.8] for d in Q.QUALITY_DIMENSIONS}
    metrics = {d: MetricSeries(d, v, 0.9, 0.8) for d, v in values.items()}
    derived = Q.derived_series(metrics)
    score = derived[Q.SCORE]
    assert score.values == [pytest.approx(Q.vbench_quality_score({d: v[k] for d, v in values.items()}))
                            for k in range(2)]
    assert score.mean == pytest.approx(Q.vbench_quality_score({d: 0.85 for d in values}))  # affine
    assert derived[Q.MEAN].values == pytest.approx([0.9, 0.8]) and derived[Q.MEAN].delta_drift == pytest.approx(0.1)
    del metrics["dynamic_degree"]
    assert Q.derived_series(metrics) == {}


# ------------------------------------------------------------------ temporal flickering


def test_temporal_flickering_matches_vbench():
    case = FIXTURES["flicker"]
    frames = R.synthetic_video(*case["video"])
    report = Evaluator(["temporal_flickering"], segment_seconds=100.0).evaluate_frames(frames, 16)
    assert abs(report.metrics["temporal_flickering"].mean - case["score"]) < 1e-6


# ------------------------------------------------------------------ VBench's loops on toy features


def _toy_input():
    frames = R.synthetic_video(*FIXTURES["consistency"]["video"])
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0


@pytest.mark.parametrize("dimension", ["subject", "background"])
def test_consistency_matches_vbench_loops(dimension):
    got = consistency(R.toy_encoder(_toy_input()))
    assert abs(got - FIXTURES["consistency"][dimension]) < 1e-6


def test_aesthetic_score_matches_vbench_loop():
    got = aesthetic_score(R.toy_encoder(_toy_input()), R.toy_head())
    assert abs(got - FIXTURES["consistency"]["aesthetic"]) < 1e-6


def test_dynamic_degree_matches_vbench(monkeypatch, tmp_path):
    from flex.evaluate import dynamic_degree as dd

    case = FIXTURES["dynamic"]

    class ToyRaft(torch.nn.Module):  # our RAFT call: frames padded, in [-1, 1]
        def forward(self, a, b, num_flow_updates):
            return [R.toy_flow((a + 1) / 2 * 255.0, (b + 1) / 2 * 255.0)]

    scores = []

    def recording_top5(flow):
        scores.append(top5_mean(flow))
        return scores[-1]

    monkeypatch.setattr(dd, "find_raft", lambda weights_dir: (tmp_path, "large"))
    monkeypatch.setattr(dd, "load_state_dict", lambda path, metric: {})
    monkeypatch.setattr(dd, "build_raft", lambda state, size: ToyRaft())
    monkeypatch.setattr(dd, "top5_mean", recording_top5)
    frames = R.synthetic_video(*case["video"])
    value = dd.load(None, torch.device("cpu"))(frames, 8)  # 8 fps: every frame is taken, as in VBench
    assert np.abs(np.array(scores) - np.array(case["scores"])).max() < 1e-6
    h, w = frames.shape[1:3]
    assert thresholds(h, w, len(frames)) == (case["params"]["thres"], case["params"]["count_num"])
    assert value == float(case["moves"])


# ------------------------------------------------------------------ AMT-S and motion smoothness


def test_amt_s_keys_shapes_and_output_match_amt_code():
    case = FIXTURES["amt"]
    model = AMTS().eval()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == case["shapes"]
    model.load_state_dict(R.seeded_state_dict(case["shapes"]))
    pair = torch.from_numpy(R.synthetic_video(*case["pair"])).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        out = model(pair[:1], pair[1:], torch.full((1, 1, 1, 1), 0.5))
    torch.testing.assert_close(out, case["imgt"], rtol=0, atol=1e-6)


@pytest.fixture(scope="module")
def amt_weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    (root / "amt").mkdir()
    state = R.seeded_state_dict(FIXTURES["amt"]["shapes"])
    torch.save({"state_dict": state}, root / W.AMT_S)  # the release file's layout
    return root


def test_motion_smoothness_matches_vbench(amt_weights):
    evaluator = Evaluator(["motion_smoothness"], weights_dir=amt_weights, segment_seconds=100.0)
    assert not evaluator.load_errors
    for case in FIXTURES["motion_smoothness"]:
        frames = R.synthetic_video(*case["video"])
        report = evaluator.evaluate_frames(frames, 16)
        assert abs(report.metrics["motion_smoothness"].mean - case["score"]) < 1e-6, case["video"]


def test_motion_smoothness_by_hand_on_a_static_video(amt_weights):
    # a static video: any interpolation of two equal frames that returns them scores 1
    class Copy(torch.nn.Module):
        def forward(self, a, b, t):
            return (a + b) / 2

    frames = np.repeat(R.synthetic_video(1, 130, 140, 0), 5, axis=0)
    assert smoothness(frames, Copy(), "cpu") == 1.0
    shifted = frames.copy()
    shifted[1] = np.clip(shifted[1].astype(int) + 10, 0, 255)  # frame 1 off by <= 10 levels
    expected = (255 - float(np.abs(shifted[1].astype(float) - frames[1]).mean()) / 2) / 255
    assert smoothness(shifted, Copy(), "cpu") == pytest.approx(expected)
    assert pad_amount(120) == (4, 4) and pad_amount(136) == (4, 4) and pad_amount(129) == (7, 8)
    with pytest.raises(ValueError, match="too small"):
        smoothness(frames[:, :100], Copy(), "cpu")
    with pytest.raises(ValueError, match="at least 3 frames"):
        smoothness(frames[:2], Copy(), "cpu")


def test_motion_smoothness_missing_or_wrong_weights(tmp_path):
    evaluator = Evaluator(["motion_smoothness"], weights_dir=tmp_path)
    assert "amt/amt-s.pth" in evaluator.load_errors["motion_smoothness"]
    with pytest.raises(MissingWeightsError, match="amt-s.pth"):
        W.weight_path(tmp_path, W.AMT_S, "motion_smoothness")
    with pytest.raises(ValueError, match="AMT-S"):
        build_amt({"conv.weight": torch.zeros(1)})


# ------------------------------------------------------------------ Δdrift (FramePack)


def test_delta_drift_windows_by_hand():
    assert window_frames(100) == 15 and window_frames(10) == 2 and window_frames(1) == 1
    assert window_bounds(100) == ((0, 15), (85, 100))
    # 40 frames: 6-frame windows; static first half, each frame +40 levels brighter than the last after
    frames = np.full((40, 8, 8, 3), 100, np.uint8)
    for t in range(20, 40):
        frames[t] = 100 + (t % 2) * 40
    report = Evaluator(["motion_energy"], segment_seconds=2.5).evaluate_frames(frames, 4)
    energy = report.metrics["motion_energy"]
    assert energy.head == 0.0 and energy.tail == pytest.approx(40 / 255)
    assert energy.delta_drift == pytest.approx(40 / 255)
    d = report.to_dict()["metrics"]["motion_energy"]
    assert d["delta_drift"] == pytest.approx(40 / 255) and d["head_15pct"] == 0.0
    back = MetricSeries.from_dict("motion_energy", json.loads(json.dumps(d)))
    assert back.delta_drift == pytest.approx(40 / 255)
    # a stream that cannot be read twice has no windows
    stream = Evaluator(["motion_energy"], segment_seconds=2.5).evaluate_frames(iter(frames), 4)
    assert math.isnan(stream.metrics["motion_energy"].delta_drift)
