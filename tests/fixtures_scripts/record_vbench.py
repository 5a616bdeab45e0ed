"""Record tests/data/vbench_fixtures.pt from VBench's and AMT's own code (never committed here).

Upstream code, checked out beside this repository or anywhere (pass the folders):
  VBench  github.com/Vchitect/VBench   commit 45e79ec14e69a2187202c675d2dbce1a71843d53
          (scripts/constant.py, scripts/cal_final_score.py, vbench/temporal_flickering.py,
           vbench/motion_smoothness.py, vbench/third_party/amt/)
  AMT     github.com/MCG-NKU/AMT          commit 70f988fbfc0d3d458beba1ee49caf876e57968fe
          (networks/AMT-S.py, networks/blocks/, utils/)

    python tests/fixtures_scripts/record_vbench.py VBENCH_DIR AMT_DIR

Needs torch, numpy, opencv-python(-headless), omegaconf, pillow and imageio (VBench's and AMT's
imports); vbench/__init__.py and vbench/utils.py (decord, torchvision) are stubbed out, and so are
the model-loading imports (clip, torchvision, easydict) of the dimensions whose loops are run on
toy features; nothing else of theirs is changed. AMT-S gets seeded random weights from :func:`seeded_state_dict`, which
the tests call with the key names and shapes stored in the fixture, so the fixture stays small.
"""
from __future__ import annotations

import importlib
import math
import sys
import tempfile
import types
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "data" / "vbench_fixtures.pt"
# synthetic_video(n, h, w, seed) arguments. AMT-S needs both sides >= 128 after padding to 16:
# its 4th correlation level is 1/64 of the frame, and one pixel there divides by zero (NaN).
FLICKER_VIDEO = (9, 24, 40, 1)
AMT_PAIR = (2, 128, 144, 2)
SMOOTH_VIDEOS = ((5, 120, 136, 3), (4, 128, 128, 4))  # odd and even counts; 120x136 is padded
CONSISTENCY_VIDEO = (6, 32, 48, 5)
DYNAMIC_VIDEO = (9, 36, 44, 6)  # 36x44 is padded to 40x48 for RAFT


def seeded_state_dict(shapes: dict) -> dict:
    """Deterministic random weights for a state dict's key names and shapes (sorted keys, one
    generator per key): matrices uniform in +-1/sqrt(fan_in), vectors uniform in 0..0.3."""
    state = {}
    for i, key in enumerate(sorted(shapes)):
        shape = tuple(shapes[key])
        g = torch.Generator().manual_seed(1000 + i)
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        if len(shape) >= 2:
            state[key] = ((2 * u - 1) / math.sqrt(math.prod(shape[1:]))).float()
        else:
            state[key] = (0.3 * u).float()
    return state


def synthetic_video(n: int, h: int, w: int, seed: int):
    """A smooth moving pattern plus noise, uint8 [n, h, w, 3] (numpy)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    frames = []
    for t in range(n):
        base = np.stack([np.sin((xx + 2.5 * t) / 5.0), np.cos((yy - 1.5 * t) / 7.0),
                         np.sin((xx + yy + 3 * t) / 9.0)], -1)
        frames.append(np.clip(127.5 + 90 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8))
    return np.stack(frames)


def toy_encoder(x: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for DINO / CLIP image features: [N, 3, H, W] -> [N, 16] (8x8 average
    pooling, then a seeded projection), so VBench's aggregation loops can be driven exactly."""
    pooled = torch.nn.functional.adaptive_avg_pool2d(x.double(), 4).flatten(1)  # [N, 48]
    w = seeded_state_dict({"w": (48, 16)})["w"].double() * 8 - 0.5
    return (pooled @ w).float()


def toy_flow(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A fixed stand-in for RAFT's flow of frames in 0..255 ([1, 3, H, W] -> [1, 2, H, W])."""
    d = (b - a).double().mean(1, keepdim=True) / 255.0
    return torch.cat([4.6 * d, 3.45 * d.abs()], 1).float()


def toy_head() -> torch.nn.Linear:
    head = torch.nn.Linear(16, 1)
    head.load_state_dict(seeded_state_dict({"weight": (1, 16), "bias": (1,)}))
    return head.eval()


def _vbench_modules(root: Path):
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(root / "scripts"))
    package = types.ModuleType("vbench")
    package.__path__ = [str(root / "vbench")]
    sys.modules["vbench"] = package
    utils = types.ModuleType("vbench.utils")
    utils.load_dimension_info = None  # used only by the compute_* entry points, not here
    # the frames of "toy.mp4" as VBench's load_video gives them: float [T, 3, H, W] in 0..255
    utils.load_video = lambda path: torch.from_numpy(synthetic_video(*CONSISTENCY_VIDEO)).permute(0, 3, 1, 2).float()
    utils.dino_transform = utils.clip_transform = lambda size: (lambda x: x / 255.0)  # no resizing here
    utils.dino_transform_Image = None  # read_frame=True only
    sys.modules["vbench.utils"] = utils
    for name in ("clip", "torchvision", "torchvision.transforms"):  # imported, not used by the loops
        sys.modules[name] = types.ModuleType(name)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["easydict"] = types.SimpleNamespace(EasyDict=dict)
    return (importlib.import_module("cal_final_score"), importlib.import_module("vbench.temporal_flickering"),
            importlib.import_module("vbench.motion_smoothness"))


def _amt_model(root: Path):
    sys.path.insert(0, str(root))
    return importlib.import_module("networks.AMT-S").Model(corr_radius=3, corr_lvls=4, num_flows=3).eval()


def main(vbench_dir: str, amt_dir: str) -> None:
    import cv2
    import numpy as np

    final, flicker, motion = _vbench_modules(Path(vbench_dir))
    out: dict = {}

    # VBench Quality Score: cal_final_score's normalisation and weighted quality mean
    rng = np.random.default_rng(0)
    quality = []
    for _ in range(4):
        dims = {d: float(v) for d, v in zip(final.QUALITY_LIST, rng.uniform(0.6, 1.0, len(final.QUALITY_LIST)))}
        upload = {k: 0.0 for k in final.TASK_INFO}
        upload.update(dims)
        score = final.get_quality_score(final.get_nomalized_score(upload))
        quality.append({"dims": {k.replace(" ", "_"): v for k, v in dims.items()}, "score": float(score)})
    out["quality"] = quality

    # temporal flickering: VBench's cal_score on a synthetic video (frames as cv2 would give them)
    video = synthetic_video(*FLICKER_VIDEO)
    flicker.get_frames = lambda path: [f[..., ::-1].copy() for f in video]  # BGR like cv2.VideoCapture
    out["flicker"] = {"video": FLICKER_VIDEO, "score": float(flicker.cal_score("synthetic.mp4"))}

    # AMT-S: the network of AMT's repository on one pair of frames, seeded random weights
    model = _amt_model(Path(amt_dir))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    model.load_state_dict(seeded_state_dict(shapes))
    pair = torch.from_numpy(synthetic_video(*AMT_PAIR)).permute(0, 3, 1, 2).float() / 255.0
    embt = torch.tensor(0.5).view(1, 1, 1, 1)
    with torch.no_grad():
        pred = model(pair[:1], pair[1:], embt, scale_factor=1.0, eval=True)["imgt_pred"]
    out["amt"] = {"shapes": shapes, "pair": AMT_PAIR, "imgt": pred}

    # motion smoothness: VBench's MotionSmoothness.motion_score (its vendored AMT-S, same weights)
    vb_model = importlib.import_module("vbench.third_party.amt.networks.AMT-S").Model(
        corr_radius=3, corr_lvls=4, num_flows=3).eval()
    vb_model.load_state_dict(seeded_state_dict(shapes))
    scorer = motion.MotionSmoothness.__new__(motion.MotionSmoothness)
    scorer.device, scorer.niters = "cpu", 1
    scorer.initialization()
    scorer.model = vb_model
    smooth = []
    for spec in SMOOTH_VIDEOS:
        frames = synthetic_video(*spec)
        with tempfile.TemporaryDirectory() as tmp:
            for i, f in enumerate(frames):
                cv2.imwrite(f"{tmp}/{i:03d}.png", f[..., ::-1])
            score = float(scorer.motion_score(tmp))
        smooth.append({"video": spec, "score": score})
    out["motion_smoothness"] = smooth

    # subject / background consistency and aesthetic quality: VBench's loops on toy features
    subject = importlib.import_module("vbench.subject_consistency")
    background = importlib.import_module("vbench.background_consistency")
    aesthetic = importlib.import_module("vbench.aesthetic_quality")
    clip_like = types.SimpleNamespace(encode_image=toy_encoder, eval=lambda: None)
    out["consistency"] = {
        "video": CONSISTENCY_VIDEO,
        "subject": subject.subject_consistency(toy_encoder, ["toy.mp4"], "cpu", False)[1][0]["video_results"],
        "background": background.background_consistency(clip_like, None, ["toy.mp4"], "cpu", False)[1][0][
            "video_results"],
        "aesthetic": aesthetic.laion_aesthetic(toy_head(), clip_like, ["toy.mp4"], "cpu")[1][0]["video_results"],
    }

    # dynamic degree: VBench's DynamicDegree (padding, top-5% score, thresholds, decision) on toy flows
    dynamic = importlib.import_module("vbench.dynamic_degree")
    dd = dynamic.DynamicDegree.__new__(dynamic.DynamicDegree)
    dd.device = "cpu"
    scores = []

    def fake_raft(image1, image2, iters, test_mode):
        flow = toy_flow(image1, image2)
        scores.append(dd.get_score(image1, flow))
        return None, flow

    dd.model = fake_raft
    frames = synthetic_video(*DYNAMIC_VIDEO)
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(frames):
            cv2.imwrite(f"{tmp}/{i:03d}.png", f[..., ::-1])
        moves = bool(dd.infer(tmp))
    out["dynamic"] = {"video": DYNAMIC_VIDEO, "scores": scores, "params": dict(dd.params), "moves": moves}

    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
