"""Evaluation throughput: video seconds evaluated per second of wall time, per metric.

    python benchmarks/evaluate_throughput.py                      # health metrics, 5 s of 832x480
    python benchmarks/evaluate_throughput.py --models --model-seconds 1 --device cuda

The video is synthetic (a moving gradient with noise, 16 fps) and held in memory, so the metric
rows exclude decoding; the "decode" row times reading the same video back from an H.264 mp4.
Model metrics use the real architectures (DINO ViT-B/16, CLIP ViT-B/32 and ViT-L/14 + the LAION
head, MUSIQ, RAFT large) with random weights unless --weights-dir names real ones: the speed is
the same, the scores are meaningless. Prints a markdown table; --json writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))

from flex.evaluate import HEALTH_METRICS, MODEL_METRICS, Evaluator  # noqa: E402
from flex.evaluate import weights as W  # noqa: E402

FPS = 16


def synthetic_video(seconds: float, height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = max(2, round(seconds * FPS))
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        base = 127 + 100 * np.sin((xx + 4 * t) / 37.0) * np.cos((yy - 2 * t) / 29.0)
        noise = rng.normal(0, 8, (height, width, 1))
        rgb = np.concatenate([base[..., None], (base * 0.8 + 30)[..., None], (255 - base)[..., None]], -1) + noise
        frames[t] = np.clip(rgb, 0, 255).astype(np.uint8)
    return frames


def random_weights(root: Path) -> Path:
    """The real architectures with random weights, in the documented layout."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, ViTConfig, ViTModel

    ViTModel(ViTConfig(patch_size=16), add_pooling_layer=False).save_pretrained(root / W.DINO)  # ViT-B/16
    CLIPVisionModelWithProjection(CLIPVisionConfig(patch_size=32, projection_dim=512)).save_pretrained(
        root / W.CLIP_B32)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14,
        projection_dim=768)).save_pretrained(root / W.CLIP_L14)
    (root / W.AESTHETIC_HEAD).parent.mkdir(parents=True, exist_ok=True)
    torch.save(torch.nn.Linear(768, 1).state_dict(), root / W.AESTHETIC_HEAD)
    try:
        from pyiqa.archs.musiq_arch import MUSIQ

        (root / W.MUSIQ_SPAQ).parent.mkdir(parents=True, exist_ok=True)
        torch.save(MUSIQ(pretrained=False).state_dict(), root / W.MUSIQ_SPAQ)
    except ImportError:
        pass
    try:
        from torchvision.models.optical_flow import raft_large

        (root / W.RAFT_LARGE).parent.mkdir(parents=True, exist_ok=True)
        torch.save(raft_large(weights=None).state_dict(), root / W.RAFT_LARGE)
    except ImportError:
        pass
    return root


def measure(metrics, frames, weights_dir, device, segment_seconds) -> tuple[dict, dict]:
    ev = Evaluator(metrics, weights_dir, device, segment_seconds)
    report = ev.evaluate_frames(frames, FPS)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = report.seconds
    rows = {m: {"video_s": seconds, "wall_s": report.timings[m], "video_s_per_s": seconds / report.timings[m]}
            for m in report.metrics}
    return rows, dict(report.errors)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0, help="video length for the health metrics")
    p.add_argument("--models", action="store_true", help="also the model-based metrics")
    p.add_argument("--model-seconds", type=float, default=1.0, help="video length for the model metrics")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--device", default="cpu")
    p.add_argument("--weights-dir", default=None, help="real weights (default: random ones, same architectures)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)

    rows, errors = {}, {}
    frames = synthetic_video(args.seconds, args.height, args.width)
    r, e = measure(HEALTH_METRICS, frames, None, "cpu", 5.0)
    rows.update(r), errors.update(e)
    with tempfile.TemporaryDirectory() as tmp:
        from flex.video import write_video

        video = write_video(Path(tmp) / "v.mp4", frames, fps=FPS)
        t0 = time.perf_counter()
        n = sum(1 for _ in __import__("flex.evaluate.frames", fromlist=["x"]).iter_video_frames(video))
        wall = time.perf_counter() - t0
        rows["decode (H.264)"] = {"video_s": n / FPS, "wall_s": wall, "video_s_per_s": n / FPS / wall}
        if args.models:
            weights = args.weights_dir or random_weights(Path(tmp) / "weights")
            frames = synthetic_video(args.model_seconds, args.height, args.width)
            r, e = measure(MODEL_METRICS, frames, weights, args.device, args.model_seconds)
            rows.update(r), errors.update(e)

    where = f"{args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"# Evaluation throughput, {args.width}x{args.height} at {FPS} fps, {where}, torch {torch.__version__}\n")
    print("| metric | video seconds | wall seconds | video seconds / second |")
    print("|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['video_s']:.2f} | {row['wall_s']:.3f} | {row['video_s_per_s']:.3g} |")
    for name, message in errors.items():
        print(f"\nnot measured: {message}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": where, "torch": torch.__version__,
                                               "size": [args.height, args.width], "fps": FPS,
                                               "rows": rows, "errors": errors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
