"""``flex generate`` end to end on CPU with tiny random models, offline, in-process."""
import argparse
import os

import pytest
import torch

from tiny_assets import forbid_network, make_dit_checkpoint, make_wan_dir
from flex import cli
from flex.video import read_video

SMALL = ["--height", "64", "--width", "96", "--dtype", "fp32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "self_forcing_tiny.pt")}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    attempts = forbid_network(monkeypatch)
    yield
    assert attempts == [], f"network connections were attempted: {attempts}"


def _run(assets, *args):
    return cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), *SMALL, *args])


def _parts(folder):
    return [p for p in os.listdir(folder) if p.endswith(".part")]


def test_generate_one_prompt(assets, tmp_path, capsys):
    out = tmp_path / "video.mp4"
    assert _run(assets, "--prompt", "a cat runs on the beach", "--frames", "5", "--out", str(out)) == 0
    video = read_video(out)
    assert video.shape == (4 * 6 - 3, 64, 96, 3)  # 5 latent frames -> 6 (two chunks of 3) -> 21 frames
    captured = capsys.readouterr()
    assert "--frames 5 rounded up to 6" in captured.err
    assert "generator_ema" in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert "21 frames" in summary and "FPS" in summary and "peak" in summary
    assert _parts(tmp_path) == []


def test_prompt_file_folder_output_and_seeds(assets, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n  a dog jumps in snow  \n\n\na red car in the city at night\n   \n")
    out = tmp_path / "videos"
    assert _run(assets, "--prompts", str(prompts), "--frames", "3", "--out", str(out), "--seed", "7") == 0
    files = sorted(os.listdir(out))
    assert files == ["000-a-dog-jumps-in-snow.mp4", "001-a-red-car-in-the-city-at-night.mp4"]
    first = read_video(out / files[0])
    assert first.shape == (9, 64, 96, 3)
    # Same seed -> same video; the second prompt (seed 8, other text) differs.
    again = tmp_path / "again.mp4"
    assert _run(assets, "--prompt", "a dog jumps in snow", "--frames", "3", "--out", str(again), "--seed", "7") == 0
    assert (read_video(again) == first).all()
    assert not (read_video(out / files[1]) == first).all()


def test_no_flex_and_other_switches(assets, tmp_path):
    out = tmp_path / "upstream.mp4"
    assert _run(assets, "--prompt", "a bird flies", "--frames", "6", "--no-flex", "--out", str(out),
                "--backend", "reference", "--denoising-steps", "1000,500") == 0
    assert read_video(out).shape[0] == 21


def test_compiled_generation_equals_eager(assets, tmp_path):
    """--compile frozen on the tiny checkpoint: the same video as the eager run, to rounding."""
    eager, compiled = tmp_path / "eager.mp4", tmp_path / "compiled.mp4"
    args = ("--prompt", "a fox in the snow", "--frames", "21", "--sink-frames", "3", "--window-frames", "6")
    assert _run(assets, *args, "--out", str(eager)) == 0
    assert _run(assets, *args, "--out", str(compiled), "--compile", "frozen") == 0
    a, b = read_video(eager).astype(int), read_video(compiled).astype(int)
    assert a.shape == b.shape and abs(a - b).mean() < 1.0  # H.264 of nearly equal latents


def test_flex_config_from_flags():
    def cfg(*argv):
        argv = ["generate", "--dit", "x", "--wan-dir", "y", "--prompt", "p", *argv]
        args = cli.build_parser().parse_args(argv)
        return cli.flex_config(args, cli._explicit(argv))

    c = cfg()
    assert (c.strategy, c.alpha, c.beta, c.l_train, c.rho, c.sink_frames, c.window_frames) == \
        ("flex", 0.1, 2.5, 21, -1.0, 3, 18)
    c = cfg("--no-flex")
    assert (c.strategy, c.rho, c.sink_frames, c.window_frames) == ("none", 0.0, 0, 21)
    c = cfg("--no-flex", "--sink-frames", "3", "--window-frames", "9")  # explicit flags still apply
    assert (c.strategy, c.sink_frames, c.window_frames) == ("none", 3, 9)
    c = cfg("--rope", "yarn", "--alpha", "1", "--beta", "15", "--l-train", "240", "--rho", "-0.5", "--dynamic")
    assert (c.strategy, c.alpha, c.beta, c.l_train, c.rho, c.dynamic) == ("yarn", 1.0, 15.0, 240, -0.5, True)
    with pytest.raises(cli.CliError, match="alpha must be < beta"):
        cfg("--alpha", "3", "--beta", "2")


@pytest.mark.parametrize("seconds, latent", [(5, 21), (10, 42), (30, 120), (60, 240), (0.1, 3)])
def test_seconds_to_latent_frames(seconds, latent):
    n, how = cli.latent_frames(argparse.Namespace(frames=None, seconds=seconds), 3)
    assert n == latent and f"{latent} latent frames" in how


def test_help_lists_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--rope {flex,none,pi,ntk,yarn,riflex}", "(default: flex)", "(default: 0.1)",
                     "(default: 2.5)", "(default: 21)", "(default: -1.0)", "(default: 480)", "(default: 832)",
                     "(default: bf16)", "--no-flex", "--lora", "--sink-frames"):
        assert expected in text


# ---------------------------------------------------------------- bad input (fails before heavy work)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Any attempt to load a model fails the test: errors must come first."""
    import flex.loading

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(flex.loading, "load_dit", boom)


def test_empty_prompt_file(assets, tmp_path, capsys, no_model_loading):
    prompts = tmp_path / "empty.txt"
    prompts.write_text("\n   \n\n")
    assert _run(assets, "--prompts", str(prompts), "--out", str(tmp_path / "o")) == 2
    assert "empty.txt" in capsys.readouterr().err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, message", [
    (["--height", "60"], "--height must be a positive multiple of 16"),
    (["--frames", "0"], "--frames must be >= 1"),
    (["--seconds", "-1"], "--seconds must be > 0"),
    (["--rho", "2"], "rho must be in [-1, 1]"),
    (["--window-frames", "2"], "window_frames must be >= chunk_frames"),
    (["--backend", "nope"], "--backend must be one of"),
    (["--denoising-steps", "1000,x"], "--denoising-steps"),
    (["--lora", "/nonexistent/lora.pt"], "lora.pt"),
    (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--crf", "99"], ""),
    (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),  # SMALL runs on the CPU
    (["--compile", "on", "--rope", "yarn", "--dynamic"], "--compile / --cuda-graphs need a fixed softmax scale"),
])
def test_bad_arguments(assets, tmp_path, capsys, no_model_loading, args, message):
    assert _run(assets, "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), *args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_several_prompts_need_a_folder(assets, tmp_path, capsys, no_model_loading):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    assert _run(assets, "--prompts", str(prompts), "--out", str(tmp_path / "one.mp4")) == 2
    assert "give a folder" in capsys.readouterr().err


def test_missing_wan_parts(assets, tmp_path, capsys, no_model_loading):
    (tmp_path / "wan" / "tokenizer").mkdir(parents=True)
    code = cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(tmp_path / "wan"),
                     "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), *SMALL])
    err = capsys.readouterr().err
    assert code == 2 and "text_encoder/config.json" in err and "vae/config.json" in err


def test_missing_dit(assets, tmp_path, capsys, no_model_loading):
    code = cli.main(["generate", "--dit", str(tmp_path / "none.pt"), "--wan-dir", str(assets["wan"]),
                     "--prompt", "a cat", *SMALL])
    assert code == 2 and "none.pt" in capsys.readouterr().err


def test_required_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["generate", "--prompt", "a cat"])
    assert exc.value.code == 2 and "--dit" in capsys.readouterr().err


def test_corrupt_checkpoint(assets, tmp_path, capsys):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00" * 100)
    code = cli.main(["generate", "--dit", str(bad), "--wan-dir", str(assets["wan"]), "--prompt", "a cat",
                     "--out", str(tmp_path / "x.mp4"), *SMALL])
    assert code == 1 and "corrupt.pt" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_mismatched_checkpoint(assets, tmp_path, capsys):
    path = make_dit_checkpoint(tmp_path / "sf.pt")
    code = cli.main(["generate", "--dit", str(path), "--wan-dir", str(assets["wan"]), "--prompt", "a cat",
                     "--preset", "wan2.1-t2v-1.3b", "--out", str(tmp_path / "x.mp4"), *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "sf.pt" in err and "does not match" in err and "shape mismatches" in err


def test_interrupted_run_leaves_no_video(assets, tmp_path, monkeypatch, capsys):
    import flex.vae

    calls = {"n": 0}
    real = flex.vae.DecodeStream.decode

    def flaky(self, latents):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(flex.vae.DecodeStream, "decode", flaky)
    out = tmp_path / "cut.mp4"
    assert _run(assets, "--prompt", "a cat", "--frames", "6", "--out", str(out)) == 130
    assert not out.exists() and _parts(tmp_path) == []
    assert "interrupted" in capsys.readouterr().err
