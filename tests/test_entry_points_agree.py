"""Every entry point runs the same runtime: a ``flex serve`` session streams the video that ``flex
generate`` writes for the same settings, prompt and seed, bit for bit on the CPU, for every model
preset (each has its own schedule, weights entry and FLEX settings), with Self Forcing's bf16
modulation, with upstream's noise and with long-horizon methods. Driven as users drive them: the
generate command line, and the server through its websocket (start, run to the end, save). The
server's arguments are parsed by the test, not from a command line, as a notebook would do
(flex.cli.serve.serve_in_thread): the flags count as typed where they differ from the defaults."""
import json

import numpy as np
import pytest

from tiny_assets import make_dit_checkpoint, make_wan_dir
from flex import cli
from flex.cli import serve as serve_cli
from flex.presets import MODEL_PRESETS
from flex.video import read_video
from test_serve import connect, send, serve_args, until, wait_released, ws_url

PROMPT, SEED = "a red fox runs through fresh snow", 11
COMMON = ["--frames", "6", "--preset", "tiny"]

CASES = {name: ["--model", name] for name in MODEL_PRESETS}
CASES["self-forcing, modulation bf16"] = ["--model", "self-forcing", "--modulation", "bf16"]
CASES["self-forcing, noise upstream"] = ["--model", "self-forcing", "--noise", "upstream"]
CASES["causvid, no-flex, noise upstream"] = ["--model", "causvid", "--no-flex", "--noise", "upstream"]
# Methods with their paper settings: per-head RoPE tables (LoL jitter) with keys rotated on load
# (infinity-RoPE), and a cache method.
CASES["self-forcing, infinity-rope+lol-jitter"] = ["--model", "self-forcing", "--method", "infinity-rope+lol-jitter"]
CASES["self-forcing, deep-sink"] = ["--model", "self-forcing", "--method", "deep-sink"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("agree-assets")
    # generator and generator_ema differ: a preset's weights entry shows in the video
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "tiny.pt")}


def served_video(assets, out_dir, extra) -> np.ndarray:
    args = serve_args(assets, out_dir, *COMMON, *extra)
    with serve_cli.serve_in_thread(args) as (url, app):
        server = {"ws": ws_url(url, app), "app": app}
        with connect(server) as ws:
            send(ws, type="start", prompt=PROMPT, seed=SEED)
            assert until(ws, "stopped")["reason"] == "finished"
            send(ws, type="save")
            saved = until(ws, "saved")
        wait_released(server)
    return read_video(out_dir / saved["file"])


def generated_video(assets, path, extra) -> np.ndarray:
    height, width = serve_args(assets, path.parent).height, serve_args(assets, path.parent).width
    code = cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), "--prompt", PROMPT,
                     "--seed", str(SEED), "--out", str(path), "--height", str(height), "--width", str(width),
                     "--dtype", "fp32", "--device", "cpu", "--quiet", *COMMON, *extra])
    assert code == 0
    return read_video(path)


@pytest.mark.parametrize("case", list(CASES))
def test_serve_streams_the_video_generate_writes(assets, tmp_path, case, one_thread):
    extra = CASES[case]
    made = generated_video(assets, tmp_path / "generated.mp4", extra)
    served = served_video(assets, tmp_path / "served", extra)
    assert served.shape == made.shape
    assert np.array_equal(served, made), f"{case}: max difference {np.abs(served.astype(int) - made).max()}"


def test_the_cases_differ_from_each_other(assets, tmp_path, one_thread):
    """The comparison can fail: presets and the noise mode change the video."""
    videos = {case: generated_video(assets, tmp_path / f"{i}.mp4", CASES[case])
              for i, case in enumerate(["self-forcing", "causvid", "self-forcing, noise upstream"])}
    values = list(videos.values())
    assert not np.array_equal(values[0], values[1]) and not np.array_equal(values[0], values[2])


def test_settings_hash_is_the_job_record(assets, tmp_path):
    """The settings a served video is made from are those ``flex generate`` records for it."""
    args = serve_args(assets, tmp_path, *COMMON, "--model", "causvid")
    settings = serve_cli.check_args(args)
    record = settings.video_record(0)
    assert record["model"] == "causvid" and record["shift"] == 8.0 and record["warp"] is False
    assert json.dumps(record, sort_keys=True)  # JSON-ready
