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
        return cli.flex_config(args, cli.explicit_flags(argv))

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
    import flex.decoders.wan_vae

    calls = {"n": 0}
    real = flex.decoders.wan_vae.DecodeStream.decode

    def flaky(self, latents):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, latents)

    monkeypatch.setattr(flex.decoders.wan_vae.DecodeStream, "decode", flaky)
    out = tmp_path / "cut.mp4"
    assert _run(assets, "--prompt", "a cat", "--frames", "6", "--out", str(out)) == 130
    assert not out.exists() and _parts(tmp_path) == []
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------- hardening


def test_version(capsys):
    import subprocess
    import sys

    import flex

    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"flex {flex.__version__}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-m", "flex", "--version"], capture_output=True, text=True, env=env)
    assert run.returncode == 0 and run.stdout.strip() == f"flex {flex.__version__}"


def test_help_documents_new_flags_and_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "143 terminated" in text and "2 bad argument" in text
    assert "(default: outputs)" in text and "(default: 1000,750,500,250)" in text and "(default: 18)" in text


@pytest.mark.parametrize("args, message", [
    (["--seconds", "1e308"], "--seconds must be at most"),
    (["--frames", str(10**12)], "--frames must be at most 1000000 latent frames"),
    (["--denoising-steps", "1000,750.5"], "--denoising-steps must be ints in [0, 1000]"),
    (["--denoising-steps", "1500"], "--denoising-steps must be in (0, 1000]"),
    (["--device", "meta"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--seed", str(2**70)], "--seed must be an int in [-2**63, 2**64 - 1]"),
    (["--height", "16384"], "--height must be a positive multiple of 16 up to 4096"),
    (["--crf", "-1"], "--crf must be an int in [0, 51]"),
    (["--l-train", "0"], "(--l-train): l_train must be an int >= 1"),
    (["--chunk-frames", "0"], "(--chunk-frames): chunk_frames must be an int >= 1"),
    (["--sink-frames", "-1"], "(--sink-frames): sink_frames must be an int >= 0"),
    (["--rope", "yarn", "--alpha", "1", "--beta", "0.5"], "(--alpha): alpha must be < beta"),
    (["--preset", "nope"], "--preset must be one of"),
    (["--lora-alpha", "-1"], "--lora-alpha"),
])
def test_more_bad_arguments(assets, tmp_path, capsys, no_model_loading, args, message):
    assert _run(assets, "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), *args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["--seconds", "--alpha", "--beta", "--rho", "--lora-alpha", "--lora-scale"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_numbers_are_refused(assets, tmp_path, capsys, no_model_loading, flag, value):
    with pytest.raises(SystemExit) as exc:
        _run(assets, "--prompt", "a cat", "--out", str(tmp_path / "x.mp4"), f"{flag}={value}")
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}: must be a finite number" in err


def test_unwritable_output_is_refused_before_loading(assets, tmp_path, capsys, no_model_loading):
    (tmp_path / "afile").write_text("")
    assert _run(assets, "--prompt", "a cat", "--out", str(tmp_path / "afile" / "sub" / "x.mp4")) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "afile").read_text() == ""
    fifo = tmp_path / "fifo.mp4"
    os.mkfifo(fifo)
    assert _run(assets, "--prompt", "a cat", "--out", str(fifo)) == 2
    assert "is not a regular file" in capsys.readouterr().err


def test_config_json_holding_a_list_is_a_clean_error(assets, tmp_path, capsys):
    from tiny_assets import make_dit_folder

    folder = make_dit_folder(tmp_path / "dit", config=[1, 2, 3])
    code = cli.main(["generate", "--dit", str(folder), "--wan-dir", str(assets["wan"]), "--prompt", "a cat",
                     "--out", str(tmp_path / "x.mp4"), *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and "config.json" in err and "not a list" in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_prompts_from_a_pipe_and_from_stdin(assets, tmp_path, monkeypatch):
    import io
    import sys
    import threading

    fifo = tmp_path / "prompts"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_text("a cat\n\na dog\n"))
    feeder.start()
    try:
        assert _run(assets, "--prompts", str(fifo), "--frames", "3", "--out", str(tmp_path / "piped")) == 0
    finally:
        feeder.join()
    assert sorted(os.listdir(tmp_path / "piped")) == ["000-a-cat.mp4", "001-a-dog.mp4"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"a bird flies\n")))
    assert _run(assets, "--prompts", "-", "--frames", "3", "--out", str(tmp_path / "stdin")) == 0
    assert os.listdir(tmp_path / "stdin") == ["000-a-bird-flies.mp4"]


def test_rerun_skips_finished_videos(assets, tmp_path, capsys, monkeypatch):
    import flex.loading

    out = tmp_path / "v.mp4"
    args = ("--prompt", "a cat", "--frames", "3", "--out", str(out))
    assert _run(assets, *args) == 0
    before = out.read_bytes()
    capsys.readouterr()
    real = flex.loading.load_dit
    loads = []
    monkeypatch.setattr(flex.loading, "load_dit", lambda *a, **k: loads.append(1) or real(*a, **k))
    assert _run(assets, *args) == 0
    captured = capsys.readouterr()
    assert loads == [] and "skipped" in captured.out and out.read_bytes() == before
    assert _run(assets, *args, "--seed", "1") == 0 and loads == [1] and out.read_bytes() != before
    assert _run(assets, *args, "--seed", "1", "--overwrite") == 0 and loads == [1, 1]
    assert _run(assets, *args) == 0 and out.read_bytes() == before  # the same settings, the same bytes


def test_stale_part_of_a_killed_run_is_removed(assets, tmp_path, capsys):
    stale = tmp_path / ".v.mp4.q1w2e3r4.part"
    unrelated = tmp_path / ".w.mp4.q1w2e3r4.part"
    stale.write_bytes(b"half a video")
    unrelated.write_bytes(b"someone else's")
    assert _run(assets, "--prompt", "a cat", "--frames", "3", "--out", str(tmp_path / "v.mp4")) == 0
    assert not stale.exists() and unrelated.exists()
    assert "removed .v.mp4.q1w2e3r4.part" in capsys.readouterr().err


def test_terminated_run_leaves_no_video(assets, tmp_path, monkeypatch, capsys):
    import signal

    import flex.decoders.wan_vae

    calls = {"n": 0}
    real = flex.decoders.wan_vae.DecodeStream.decode

    def terminated_midway(self, latents):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, latents)

    monkeypatch.setattr(flex.decoders.wan_vae.DecodeStream, "decode", terminated_midway)
    out = tmp_path / "cut.mp4"
    previous = signal.getsignal(signal.SIGTERM)
    assert _run(assets, "--prompt", "a cat", "--frames", "6", "--out", str(out)) == 143
    assert not out.exists() and _parts(tmp_path) == []
    assert "terminated" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is only installed while running


# ---------------------------------------------------------------- the tiny decoder


def test_tiny_vae_decodes_the_generated_latents(assets, tmp_path):
    """--vae tiny: the video is the TAEHV decoding of the same latents the Wan VAE run decodes."""
    from flex.config import FlexConfig
    from flex.jobs import GenerationSettings
    from flex.loading import load_dit
    from flex.pipeline import Pipeline
    from flex.text import WanTextEncoder
    from flex.decoders.tiny import TinyVAEDecoder, TinyWanDecoderNet

    torch.manual_seed(3)
    net = TinyWanDecoderNet()
    for p in net.parameters():  # spread the outputs over [0, 1]
        p.data.mul_(0.5)
    weights = tmp_path / "taew2_1.pth"
    torch.save(net.state_dict(), weights)
    out = tmp_path / "tiny.mp4"
    assert _run(assets, "--prompt", "a cat", "--frames", "3", "--seed", "5", "--vae", "tiny",
                "--vae-weights", str(weights), "--crf", "0", "--out", str(out)) == 0
    got = read_video(out).astype(int)
    # The reference: the same seed's latents, decoded by the tiny decoder directly.
    settings = GenerationSettings(dit=str(assets["dit"]), wan_dir=str(assets["wan"]), prompts=("a cat",), frames=3,
                                  height=64, width=96, dtype="fp32", device="cpu", out=str(tmp_path / "x.mp4"))
    model, _ = load_dit(settings.dit, use_ema=True)
    text = WanTextEncoder.from_pretrained(settings.wan_dir, torch.device("cpu"), torch.float32,
                                          text_len=model.config.text_len).encode(["a cat"])
    pipe = Pipeline(model, FlexConfig(), **settings.model_preset.pipeline_kwargs())
    latents = pipe.generate(text, 3, (8, 12), generator=torch.Generator().manual_seed(5))
    want = TinyVAEDecoder(net).decode(latents)[0].numpy().astype(int)
    assert got.shape == want.shape == (9, 64, 96, 3)
    assert abs(got - want).mean() < 2  # crf 0: only the yuv420 round trip between them


def test_tiny_vae_needs_its_weights(assets, tmp_path, capsys, no_model_loading):
    assert _run(assets, "--prompt", "a", "--vae", "tiny", "--out", str(tmp_path / "a.mp4")) == 2
    assert "--vae-weights" in capsys.readouterr().err
    assert _run(assets, "--prompt", "a", "--vae-weights", str(tmp_path), "--out", str(tmp_path / "a.mp4")) == 2
    assert "needs vae tiny" in capsys.readouterr().err


def test_quantised_generation(assets, tmp_path, capsys):
    """--quant int8-weight: the video is made from a quantised DiT (logged), and is another video."""
    pytest.importorskip("torchao")
    out = tmp_path / "q.mp4"
    assert _run(assets, "--prompt", "a cat", "--frames", "3", "--quant", "int8-weight", "--out", str(out)) == 0
    assert "linear layers of the DiT to int8-weight" in capsys.readouterr().err
    assert read_video(out).shape == (9, 64, 96, 3)


def test_quant_rules_name_the_flag(assets, tmp_path, capsys, no_model_loading):
    assert _run(assets, "--prompt", "a", "--quant", "fp8", "--out", str(tmp_path / "a.mp4")) == 2
    assert "--quant" in capsys.readouterr().err
