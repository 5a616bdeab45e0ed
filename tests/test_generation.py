"""flex.jobs (the generation job): settings checked before any model loads, the job from Python, resume and clean-up."""
import os
import sys
import threading
import time

import pytest

from tiny_assets import forbid_network, make_dit_checkpoint, make_wan_dir
from flex.config import FlexConfig
from flex.jobs import (
    MAX_LATENT_FRAMES, GenerationSettings, SettingsError, VideoResult, generate_videos, read_prompt_file,
)
from flex.video import read_comment, read_video

SMALL = dict(height=64, width=96, dtype="fp32", device="cpu")


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"wan": str(make_wan_dir(root / "wan")), "dit": str(make_dit_checkpoint(root / "self_forcing_tiny.pt"))}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    attempts = forbid_network(monkeypatch)
    yield
    assert attempts == [], f"network connections were attempted: {attempts}"


@pytest.fixture
def count_loads(monkeypatch):
    """How many times the DiT was loaded (the job loads nothing when every video is done)."""
    import flex.loading

    calls = []
    real = flex.loading.load_dit

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(flex.loading, "load_dit", counting)
    return calls


def _settings(assets, **kw):
    kw = {**SMALL, "frames": 3, **kw}
    return GenerationSettings(dit=assets["dit"], wan_dir=assets["wan"], **kw)


def _parts(folder):
    return sorted(p for p in os.listdir(folder) if p.endswith(".part"))


# ---------------------------------------------------------------- settings (no model involved)


@pytest.mark.parametrize("changes, field, message", [
    (dict(frames=0), "frames", "frames must be >= 1"),
    (dict(frames=10**12), "frames", f"at most {MAX_LATENT_FRAMES}"),
    (dict(frames=None, seconds=float("inf")), "seconds", "seconds must be at most"),
    (dict(frames=None, seconds=1e308), "seconds", "seconds must be at most"),
    (dict(frames=None, seconds=float("nan")), "seconds", "seconds must be > 0"),
    (dict(seed=2**70), "seed", "seed must be an int in [-2**63, 2**64 - 1]"),
    (dict(seed=-(2**63) - 1), "seed", "seed must be an int"),
    (dict(height=16384), "height", "up to 4096"),
    (dict(width=0), "width", "positive multiple of 16"),
    (dict(crf=52), "crf", "crf must be an int in [0, 51]"),
    (dict(lora_scale=float("inf")), "lora_scale", "lora_scale must be a finite number"),
    (dict(lora_alpha=float("nan")), "lora_alpha", "lora_alpha must be a finite number > 0"),
    (dict(denoising_steps=(1000, 750.5)), "denoising_steps", "ints in [0, 1000]"),
    (dict(denoising_steps=(1500,)), "denoising_steps", "(0, 1000]"),
    (dict(denoising_steps=()), "denoising_steps", "1 to 1000 numbers"),
    (dict(device="meta"), "device", "device must be auto, cpu, cuda or cuda:N"),
    (dict(device="nope"), "device", "is not a torch device"),
    (dict(backend="nope"), "backend", "backend must be one of"),
    (dict(dtype="fp8"), "dtype", "dtype must be one of"),
    (dict(compile="maybe"), "compile", "compile must be one of"),
    (dict(preset="nope"), "preset", "preset must be one of"),
    (dict(weights="best"), "weights", "weights must be one of"),
    (dict(cuda_graphs=True), "cuda_graphs", "cuda_graphs needs a CUDA device"),
    (dict(compile=True, flex=FlexConfig(strategy="yarn", dynamic=True)), "compile", "need a fixed softmax scale"),
    (dict(prompts=()), "prompts", "non-empty sequence"),
    (dict(prompts="a cat"), "prompts", "non-empty sequence"),
    (dict(prompts=("a cat", "  ")), "prompt", "prompt 1 is empty"),
    (dict(out="x.mp4", prompts=("a", "b")), "out", "give a folder"),
    (dict(out="video.avi"), "out", "must be a .mp4 file or a folder"),
])
def test_bad_settings_name_the_setting(assets, tmp_path, changes, field, message):
    kw = {"prompts": ("a cat",), "out": str(tmp_path / "x.mp4"), **changes}
    if not os.path.isabs(kw["out"]):
        kw["out"] = str(tmp_path / kw["out"])
    with pytest.raises(SettingsError) as err:
        _settings(assets, **kw)
    assert field in err.value.fields and message in str(err.value)
    assert os.listdir(tmp_path) == []  # nothing was created


def test_missing_inputs(assets, tmp_path):
    with pytest.raises(SettingsError, match="dit .*none.pt.* does not exist"):
        GenerationSettings(dit=str(tmp_path / "none.pt"), wan_dir=assets["wan"], prompts=("a",), **SMALL)
    with pytest.raises(SettingsError, match="wan_dir"):
        GenerationSettings(dit=assets["dit"], wan_dir=str(tmp_path), prompts=("a",), **SMALL)
    with pytest.raises(SettingsError, match="lora .* is not a file"):
        _settings(assets, prompts=("a",), lora=str(tmp_path), out=str(tmp_path / "x.mp4"))


def test_output_under_a_file_is_refused(assets, tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SettingsError, match="cannot be created: .*afile.* is a file") as err:
        _settings(assets, prompts=("a",), out=str(tmp_path / "afile" / "sub" / "x.mp4"))
    assert err.value.fields == ("out",)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_folder_is_refused(assets, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(SettingsError, match="cannot be written to"):
            _settings(assets, prompts=("a",), out=str(folder / "x.mp4"))
    finally:
        folder.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_output_on_a_file_system_that_refuses_files(assets):
    with pytest.raises(SettingsError, match="cannot be created"):
        _settings(assets, prompts=("a",), out="/proc/flex-test-output/x.mp4")


def test_settings_derive_paths_frames_and_device(assets, tmp_path):
    s = _settings(assets, prompts=("a red car", "  a dog!  "), out=str(tmp_path / "v"), frames=5)
    assert s.prompts == ("a red car", "a dog!")
    assert [p.name for p in s.outputs] == ["000-a-red-car.mp4", "001-a-dog.mp4"]
    assert s.latent_frames == 6 and "rounded up to 6" in s.frames_how
    assert s.torch_device.type == "cpu"
    assert not (tmp_path / "v").exists()  # checking does not create the folder
    # The record of a video changes with the prompt, the seed and any setting.
    t = _settings(assets, prompts=("a red car", "a dog!"), out=str(tmp_path / "v"), frames=5, seed=1)
    assert s.video_hash(0) != s.video_hash(1)
    assert s.video_hash(0) != t.video_hash(0)
    u = _settings(assets, prompts=("a red car", "a dog!"), out=str(tmp_path / "v"), frames=5, crf=20)
    assert s.video_hash(0) != u.video_hash(0)
    assert s.video_hash(0) == _settings(assets, prompts=("a red car",), out=str(tmp_path / "v"), frames=5).video_hash(0)


# ---------------------------------------------------------------- prompt files


def test_prompt_file_from_a_pipe(tmp_path):
    fifo = tmp_path / "prompts.fifo"
    os.mkfifo(fifo)

    def writer():
        with open(fifo, "w") as f:
            f.write("a cat\n\n  a dog  \n")

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert read_prompt_file(fifo) == ("a cat", "a dog")
    finally:
        t.join()


def test_prompt_file_from_stdin(monkeypatch):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeffa fox\n\na bird\n".encode())))
    assert read_prompt_file("-") == ("a fox", "a bird")


def test_prompt_file_errors(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        read_prompt_file(tmp_path / "none.txt")
    with pytest.raises(SettingsError, match="is a folder"):
        read_prompt_file(tmp_path)
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SettingsError, match="not UTF-8"):
        read_prompt_file(tmp_path / "bin.txt")
    (tmp_path / "blank.txt").write_text("\n \n")
    with pytest.raises(SettingsError, match="no prompts"):
        read_prompt_file(tmp_path / "blank.txt")


# ---------------------------------------------------------------- the job


def test_job_from_python_and_resume(assets, tmp_path, count_loads):
    out = tmp_path / "videos"
    lines, seen = [], []
    s = _settings(assets, prompts=("a cat runs", "a dog jumps"), out=str(out), seed=3)
    results = generate_videos(s, log=lines.append, on_video=seen.append, progress=False)
    assert [r.path.name for r in results] == ["000-a-cat-runs.mp4", "001-a-dog-jumps.mp4"]
    assert seen == results and all(isinstance(r, VideoResult) and not r.skipped for r in results)
    assert results[0].frames == 9 and read_video(results[0].path).shape == (9, 64, 96, 3)
    assert any("DiT:" in line for line in lines) and len(count_loads) == 1
    assert sorted(os.listdir(out)) == ["000-a-cat-runs.mp4", "001-a-dog-jumps.mp4"]
    assert read_comment(results[0].path) == s.video_comment(0)
    first = {p: p.read_bytes() for p in s.outputs}

    # Same settings: nothing to do, no model is loaded, the files are untouched.
    again = generate_videos(s, log=lines.append, progress=False)
    assert all(r.skipped for r in again) and len(count_loads) == 1
    assert "already generated" in lines[-1] and "skipped" in again[0].summary()
    assert {p: p.read_bytes() for p in s.outputs} == first

    # Another seed regenerates (the same seed again gives the same bytes: the run is deterministic).
    reseeded = _settings(assets, prompts=("a cat runs", "a dog jumps"), out=str(out), seed=4)
    assert not any(r.skipped for r in generate_videos(reseeded, progress=False))
    assert len(count_loads) == 2 and s.outputs[0].read_bytes() != first[s.outputs[0]]
    generate_videos(_settings(assets, prompts=("a cat runs", "a dog jumps"), out=str(out), seed=3), progress=False)
    assert {p: p.read_bytes() for p in s.outputs} == first

    # One prompt changed: only that video is made; overwrite redoes everything.
    changed = _settings(assets, prompts=("a cat runs", "a bird flies"), out=str(out), seed=3)
    results = generate_videos(changed, progress=False)
    assert [r.skipped for r in results] == [True, False]
    results = generate_videos(_settings(assets, prompts=("a cat runs",), out=str(out), seed=3, overwrite=True),
                              progress=False)
    assert [r.skipped for r in results] == [False]


def test_video_without_record_is_regenerated(assets, tmp_path):
    from flex.video import write_video
    import numpy as np

    out = tmp_path / "old.mp4"
    write_video(out, np.zeros((9, 64, 96, 3), np.uint8))  # e.g. written by an older version
    s = _settings(assets, prompts=("a cat",), out=str(out))
    assert not s.is_done(0)
    assert not generate_videos(s, progress=False)[0].skipped and s.is_done(0)
    out.write_bytes(b"not a video")  # a damaged file is not "done" either
    assert not s.is_done(0)


def test_stale_parts_of_the_outputs_are_removed(assets, tmp_path):
    out = tmp_path / "videos"
    out.mkdir()
    s = _settings(assets, prompts=("a cat",), out=str(out))
    name = s.outputs[0].name
    stale = out / f".{name}.k3j_x9Qa.part"  # what a killed writer leaves
    others = [out / f".{name}.notes.txt", out / ".other.mp4.k3j_x9Qa.part", out / f".{name}.x.mp4.k3j_x9Qa.part",
              tmp_path / f".{name}.k3j_x9Qa.part"]
    for p in [stale, *others]:
        p.write_bytes(b"partial")
    lines = []
    generate_videos(s, log=lines.append, progress=False)
    assert not stale.exists() and all(p.exists() for p in others)
    assert any("removed" in line and stale.name in line for line in lines)


def test_a_share_of_the_prompts(assets, tmp_path):
    """indices: one process's share; seeds and names are those of the whole list."""
    out = tmp_path / "v"
    whole = _settings(assets, prompts=("a cat", "a dog", "a bird"), out=str(out), seed=5)
    results = generate_videos(whole, progress=False, indices=[2, 0])
    assert [(r.path.name, r.seed) for r in results] == [("002-a-bird.mp4", 7), ("000-a-cat.mp4", 5)]
    assert sorted(os.listdir(out)) == ["000-a-cat.mp4", "002-a-bird.mp4"]
    assert [r.skipped for r in generate_videos(whole, progress=False)] == [True, False, True]
    alone = tmp_path / "alone.mp4"
    generate_videos(_settings(assets, prompts=("a bird",), out=str(alone), seed=7), progress=False)
    assert read_video(alone).tolist() == read_video(out / "002-a-bird.mp4").tolist()
    with pytest.raises(SettingsError, match="indices"):
        generate_videos(whole, progress=False, indices=[3])


def test_sigterm_becomes_terminated_only_inside(monkeypatch):
    import signal

    from flex.jobs import Terminated, terminate_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated):
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this at once
    assert signal.getsignal(signal.SIGTERM) is before
    assert issubclass(Terminated, KeyboardInterrupt)
