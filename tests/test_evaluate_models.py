"""Model-based VBench dimensions: the aggregation formulas by hand, and each metric end to end with
randomly initialised models of the real architectures saved in the documented weight layout."""
import json

import numpy as np
import pytest
import torch

from flex.evaluate import Evaluator, MissingWeightsError
from flex.evaluate import weights as W
from flex.evaluate.aesthetic_quality import aesthetic_score
from flex.evaluate.consistency import consistency
from flex.evaluate.dynamic_degree import moves, pad_to_8, sample_interval, thresholds, top5_mean
from flex.evaluate.preprocess import clip_input, dino_input, resize_longer_at_most


# ------------------------------------------------------------------ formulas by hand


def test_consistency_by_hand():
    # frame 1: cos to previous = cos to first = 0.6 -> 0.6; frame 2: to previous 0.8, to first 0 -> 0.4
    f = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    assert consistency(f) == pytest.approx(0.5)
    assert consistency(3 * f) == pytest.approx(0.5)  # features are normalised first
    # negative similarities count as 0: frame 1 is opposite to frame 0
    assert consistency(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == 0.0
    assert consistency(torch.tensor([[0.3, 0.4]])) == 1.0
    with pytest.raises(ValueError, match="features"):
        consistency(torch.zeros(3))


def test_aesthetic_score_by_hand():
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[10.0, 20.0]]))
        head.bias.fill_(5.0)
    embeds = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # normalised: (0.6, 0.8) -> 27; (0, 1) -> 25
    assert aesthetic_score(embeds, head) == pytest.approx((2.7 + 2.5) / 2)


def test_dynamic_degree_rules_by_hand():
    assert sample_interval(16) == 2 and sample_interval(8) == 1 and sample_interval(30) == 4
    assert thresholds(480, 832, 40) == (6.0 * 480 / 256, 10)
    flow = torch.zeros(2, 10, 10)
    flow[0, 0, :5] = 3.0
    flow[1, 0, :5] = 4.0  # five pixels of magnitude 5 = the top 5% of 100
    assert top5_mean(flow) == pytest.approx(5.0)
    flow[0, 0, 4] = 0.0
    assert top5_mean(flow) == pytest.approx((4 * 5 + 4) / 5)
    assert moves([1, 9, 9], 5, 2) and not moves([1, 9, 1], 5, 2)
    assert moves([], 5, 0) is False and moves([0.0], 5, 0)  # VBench: needed 0 passes on the first pair
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    p = pad_to_8(x)
    assert p.shape == (2, 3, 8, 8)
    assert torch.equal(p[..., 1:6, 1:7], x) and torch.equal(p[..., 0, 1:7], x[..., 0, :])


def test_transforms_match_torchvision():
    tv = pytest.importorskip("torchvision.transforms")
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 120, 208, 3), dtype=np.uint8))
    x = frames.permute(0, 3, 1, 2).float()  # VBench's load_video: float 0..255, [T, C, H, W]
    dino = tv.Compose([tv.Resize(224, antialias=False), tv.Lambda(lambda t: t / 255.0),
                       tv.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    clip = tv.Compose([tv.Resize(224, interpolation=tv.InterpolationMode.BICUBIC, antialias=False),
                       tv.CenterCrop(224), tv.Lambda(lambda t: t / 255.0),
                       tv.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))])
    assert dino_input(frames).shape == (2, 3, 224, 388)
    torch.testing.assert_close(dino_input(frames), dino(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(clip_input(frames), clip(x), rtol=1e-5, atol=1e-5)
    big = torch.zeros(1, 3, 600, 1000)
    assert resize_longer_at_most(big, 512).shape == (1, 3, 307, 512)
    assert resize_longer_at_most(torch.zeros(1, 3, 300, 500), 512).shape == (1, 3, 300, 500)


# ------------------------------------------------------------------ random models in the weight layout


def _tiny_vit_config(**extra):
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=224,
                **extra)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """DINO, both CLIPs and the aesthetic head: real classes, reduced widths, random weights."""
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    ViTModel(ViTConfig(**_tiny_vit_config(patch_size=16)), add_pooling_layer=False).save_pretrained(root / W.DINO)
    CLIPModel(CLIPConfig(  # the full CLIP folder, as openai/clip-vit-base-patch32 is published
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=99, max_position_embeddings=16),
        vision_config=_tiny_vit_config(patch_size=32), projection_dim=16)).save_pretrained(root / W.CLIP_B32)
    CLIPVisionModelWithProjection(CLIPVisionConfig(**_tiny_vit_config(patch_size=14), projection_dim=768)) \
        .save_pretrained(root / W.CLIP_L14)
    (root / W.AESTHETIC_HEAD).parent.mkdir()
    torch.save(torch.nn.Linear(768, 1).state_dict(), root / W.AESTHETIC_HEAD)
    return root


def _frames(n=4, h=48, w=64, seed=0, static=False):
    rng = np.random.default_rng(seed)
    if static:
        return np.repeat(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8), n, axis=0)
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("metric", ["subject_consistency", "background_consistency"])
def test_consistency_metrics_end_to_end(weights_dir, metric):
    ev = Evaluator([metric], weights_dir, "cpu", segment_seconds=0.25)
    assert ev.load_errors == {}
    still = ev.evaluate_frames(_frames(8, static=True), 16)
    assert still.metrics[metric].values == pytest.approx([1.0, 1.0], abs=1e-6)  # identical frames
    moving = ev.evaluate_frames(_frames(8), 16).metrics[metric].values
    assert len(moving) == 2 and all(0.0 <= v <= 1.0 for v in moving)


def test_background_consistency_uses_clip_image_features(weights_dir):
    """The projected embedding equals what CLIPModel.get_image_features gives (openai's encode_image)."""
    from transformers import CLIPModel

    from flex.evaluate.background_consistency import load

    frames = _frames(3, seed=4)
    full = CLIPModel.from_pretrained(str(weights_dir / W.CLIP_B32)).eval()
    with torch.no_grad():
        out = full.get_image_features(pixel_values=clip_input(frames))
    feats = out if isinstance(out, torch.Tensor) else out.pooler_output
    assert load(weights_dir, torch.device("cpu"))(frames, 16) == pytest.approx(consistency(feats), abs=1e-6)


def test_aesthetic_quality_end_to_end(weights_dir):
    from transformers import CLIPVisionModelWithProjection

    frames = _frames(3, seed=5)
    got = Evaluator(["aesthetic_quality"], weights_dir, "cpu").evaluate_frames(frames, 16)
    model = CLIPVisionModelWithProjection.from_pretrained(str(weights_dir / W.CLIP_L14)).eval()
    head = torch.nn.Linear(768, 1)
    head.load_state_dict(torch.load(weights_dir / W.AESTHETIC_HEAD))
    with torch.no_grad():
        expected = aesthetic_score(model(pixel_values=clip_input(frames)).image_embeds, head)
    assert got.metrics["aesthetic_quality"].values == [pytest.approx(expected, abs=1e-6)]


def test_aesthetic_head_width_must_match_clip(weights_dir, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(weights_dir / W.CLIP_L14, root / W.CLIP_L14)
    (root / W.AESTHETIC_HEAD).parent.mkdir(parents=True)
    torch.save(torch.nn.Linear(512, 1).state_dict(), root / W.AESTHETIC_HEAD)
    ev = Evaluator(["aesthetic_quality"], root, "cpu")
    assert "512-wide" in ev.load_errors["aesthetic_quality"]


def test_missing_weights_name_the_file_and_metric(weights_dir, tmp_path):
    with pytest.raises(MissingWeightsError, match="imaging_quality") as info:
        W.weight_path(tmp_path, W.MUSIQ_SPAQ, "imaging_quality")
    assert info.value.path == tmp_path / W.MUSIQ_SPAQ and "SPAQ" in str(info.value)
    (tmp_path / W.DINO).mkdir()  # a folder without config.json
    with pytest.raises(MissingWeightsError, match="config.json"):
        W.weight_path(tmp_path, W.DINO, "subject_consistency")
    ev = Evaluator(["subject_consistency", "imaging_quality", "dynamic_degree", "contrast"], weights_dir, "cpu")
    assert set(ev.load_errors) == {"imaging_quality", "dynamic_degree"}
    assert str(weights_dir / W.MUSIQ_SPAQ) in ev.load_errors["imaging_quality"]
    assert str(weights_dir / W.RAFT_LARGE) in ev.load_errors["dynamic_degree"]
    report = ev.evaluate_frames(_frames(4), 16)
    assert set(report.metrics) == {"subject_consistency", "contrast"}
    assert set(report.errors) == {"imaging_quality", "dynamic_degree"}


def test_state_dict_files_are_read_without_pickled_code(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"params": {"module.a": torch.ones(1)}}, path)
    assert list(W.load_state_dict(path, "m")) == ["a"]
    torch.save({"a": object()}, path)
    with pytest.raises(ValueError, match="m: weights"):
        W.load_state_dict(path, "m")


# ------------------------------------------------------------------ RAFT and MUSIQ (extra packages)


def test_dynamic_degree_end_to_end(tmp_path):
    """torchvision's RAFT with random weights (raft_small: raft_large is too slow for a 2-core test)."""
    optical_flow = pytest.importorskip("torchvision.models.optical_flow")
    (tmp_path / "raft").mkdir()
    torch.save(optical_flow.raft_large(weights=None).state_dict(), tmp_path / W.RAFT_LARGE)
    from flex.evaluate.dynamic_degree import build_raft, find_raft

    assert find_raft(tmp_path) == (tmp_path / W.RAFT_LARGE, "large")
    build_raft(W.load_state_dict(tmp_path / W.RAFT_LARGE, "dynamic_degree"), "large")  # the layout loads
    (tmp_path / W.RAFT_LARGE).unlink()
    torch.manual_seed(0)
    torch.save(optical_flow.raft_small(weights=None).state_dict(), tmp_path / W.RAFT_SMALL)
    ev = Evaluator(["dynamic_degree"], tmp_path, "cpu")
    assert ev.load_errors == {}
    report = ev.evaluate_frames(_frames(3, h=128, w=136), 8)  # 8 fps: every frame, 2 pairs
    assert report.metrics["dynamic_degree"].values[0] in (0.0, 1.0)


def test_dynamic_degree_decision_with_a_known_flow(monkeypatch, tmp_path):
    """A stand-in flow model of known magnitude drives VBench's decision rule."""
    from flex.evaluate import dynamic_degree as dd

    seen = []

    class ConstantFlow(torch.nn.Module):
        def __init__(self, magnitude):
            super().__init__()
            self.magnitude = magnitude

        def forward(self, a, b, num_flow_updates):
            seen.append((tuple(a.shape), float(a.min()), float(a.max()), num_flow_updates))
            flow = torch.zeros(1, 2, *a.shape[-2:])
            flow[:, 0] = self.magnitude
            return [flow]

    monkeypatch.setattr(dd, "find_raft", lambda weights_dir: (tmp_path, "large"))
    monkeypatch.setattr(dd, "load_state_dict", lambda path, metric: {})
    frames = np.zeros((16, 60, 100, 3), np.uint8)
    frames[:, :, :, 0] = 255
    threshold = 6.0 * 60 / 256  # 16 frames at 16 fps -> 8 taken, 7 pairs, 2 needed
    for magnitude, expected in ((threshold * 1.01, 1.0), (threshold * 0.99, 0.0)):
        monkeypatch.setattr(dd, "build_raft", lambda state, size, m=magnitude: ConstantFlow(m))
        assert dd.load(None, torch.device("cpu"))(frames, 16) == expected
    assert len(seen) == 14 and seen[0] == ((1, 3, 64, 104), -1.0, 1.0, 20)  # padded to 8, in [-1, 1]


def test_imaging_quality_end_to_end(tmp_path):
    musiq_arch = pytest.importorskip("pyiqa.archs.musiq_arch")
    from flex.evaluate.imaging_quality import build_musiq

    torch.manual_seed(0)
    (tmp_path / "musiq").mkdir()
    torch.save(musiq_arch.MUSIQ(pretrained=False).state_dict(), tmp_path / W.MUSIQ_SPAQ)
    ev = Evaluator(["imaging_quality"], tmp_path, "cpu")
    assert ev.load_errors == {}
    frames = _frames(2, h=40, w=600, seed=2)  # longer side 600 -> resized to 512 first
    got = ev.evaluate_frames(frames, 16).metrics["imaging_quality"].values[0]
    model = build_musiq(W.load_state_dict(tmp_path / W.MUSIQ_SPAQ, "imaging_quality"))
    x = torch.nn.functional.interpolate(torch.from_numpy(frames).permute(0, 3, 1, 2).float(), size=(34, 512),
                                        mode="bilinear", align_corners=False) / 255
    with torch.no_grad():
        expected = sum(float(model(f[None])) for f in x) / 2 / 100
    assert got == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(got)


def test_cli_evaluates_model_metrics_from_the_weights_folder(weights_dir, tmp_path, monkeypatch):
    import argparse

    from flex.cli import evaluate as cli
    from flex.video import write_video

    write_video(tmp_path / "v.mp4", _frames(8, h=48, w=64, static=True), fps=16)
    monkeypatch.setenv(W.ENV, str(weights_dir))  # the folder from the environment
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["evaluate", str(tmp_path / "v.mp4"), "--metrics",
                              "subject_consistency,background_consistency,aesthetic_quality,motion_energy",
                              "--device", "cpu", "--out", str(tmp_path / "out"), "--no-progress"])
    assert cli.run(args) == 0
    report = json.loads((tmp_path / "out" / "v.json").read_text())
    assert report["errors"] == {}
    assert report["metrics"]["subject_consistency"]["mean"] == pytest.approx(1.0, abs=1e-3)


def test_weights_that_do_not_fit_the_config_are_an_error(weights_dir, tmp_path):
    import shutil

    root = tmp_path / "w"
    shutil.copytree(weights_dir / W.DINO, root / W.DINO)
    config = json.loads((root / W.DINO / "config.json").read_text())
    config["hidden_size"], config["num_attention_heads"] = 48, 2
    (root / W.DINO / "config.json").write_text(json.dumps(config))
    ev = Evaluator(["subject_consistency"], root, "cpu")
    assert "do not fit" in ev.load_errors["subject_consistency"]
