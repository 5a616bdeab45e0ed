"""flex generate with model presets, schedule switches, upstream noise and prompt schedules."""
import pytest

from tiny_assets import forbid_network, make_dit_checkpoint, make_wan_dir
from flex import cli
from flex.video import read_video

SMALL = ["--height", "32", "--width", "32", "--frames", "6", "--dtype", "fp32", "--device", "cpu", "--quiet",
         "--preset", "tiny"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return {"wan": make_wan_dir(root / "wan"), "dit": make_dit_checkpoint(root / "self_forcing_tiny.pt")}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    forbid_network(monkeypatch)


def settings(*args):
    argv = ["generate", "--dit", "x", "--wan-dir", "y", "--prompt", "p", *args]
    return cli.build_parser().parse_args(argv), cli.explicit_flags(argv)


def test_model_presets_set_schedule_and_flex(assets, tmp_path):
    base = ["--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), "--out", str(tmp_path / "a.mp4")]
    argv = ["generate", *base, "--prompt", "p", "--model", "causvid"]
    s = cli.settings_from_args(cli.build_parser().parse_args(argv), cli.explicit_flags(argv))
    p = s.model_preset
    assert (p.denoising_steps, p.warp_denoising_step, p.shift) == ((1000, 757, 522), False, 8.0)
    assert s.flex.l_train == 21 and s.flex.sink_frames == 3
    argv = ["generate", *base, "--prompt", "p", "--model", "longlive", "--no-flex"]
    s = cli.settings_from_args(cli.build_parser().parse_args(argv), cli.explicit_flags(argv))
    assert (s.flex.strategy, s.flex.sink_frames, s.flex.window_frames) == ("none", 3, 9)
    argv = ["generate", *base, "--prompt", "p", "--model", "longlive", "--sink-frames", "1"]
    s = cli.settings_from_args(cli.build_parser().parse_args(argv), cli.explicit_flags(argv))
    assert (s.flex.l_train, s.flex.alpha, s.flex.beta, s.flex.sink_frames) == (240, 1.0, 15.0, 1)
    argv = ["generate", *base, "--prompt", "p", "--no-warp", "--shift", "8", "--denoising-steps", "1000,757,522"]
    s = cli.settings_from_args(cli.build_parser().parse_args(argv), cli.explicit_flags(argv))
    assert s.model_preset.schedule()[0] == [1000.0, 757.0, 522.0]


@pytest.mark.parametrize("args,message", [
    (["--shift", "0"], "--shift"),
    (["--model", "self-forcing", "--denoising-steps", "750.5"], "--denoising-steps"),
])
def test_bad_schedule_flags(assets, tmp_path, capsys, args, message):
    rc = cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), "--prompt", "p",
                   "--out", str(tmp_path / "x.mp4"), *SMALL, *args])
    assert rc == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("text,message", [
    ("0: a cat\n3: a dog\n2: a bird\n", "line 3: 2 s must come after"),
    ("1: a cat\n", "line 1: the first prompt must start at 0 s"),
    ("0: a cat\n-1: a dog\n", "line 2: expected 'SECONDS: prompt'"),
    ("0: a cat\n5:   \n", "line 2: the prompt is empty"),
    ("0: a cat\n99: a dog\n", "past the end of the video"),
    ("0: a cat\n0.25: a dog\n0.5: a bird\n", "same 3-frame chunk"),  # latent frames 1 and 2: one chunk
    ("0: a cat\n0.25 [sink]: a dog\n", "line 2: the switch mode must be one of"),
    ('[[0, "a cat"], [1, ""]]', "entry 2: the prompt is empty"),
    ("[[0, ", "not valid JSON"),
])
def test_bad_prompt_schedules_name_the_line(assets, tmp_path, capsys, text, message):
    path = tmp_path / "schedule.txt"
    path.write_text(text)
    rc = cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]),
                   "--prompt-schedule", str(path), "--out", str(tmp_path / "x.mp4"), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err


def test_prompt_schedule_and_upstream_noise_generate(assets, tmp_path):
    sched = tmp_path / "story.txt"
    sched.write_text("0: a cat runs on the beach\n0.75: a dog jumps in snow\n")
    out = tmp_path / "story.mp4"
    assert cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]),
                     "--prompt-schedule", str(sched), "--out", str(out), "--noise", "upstream", "--recache", "all",
                     "--modulation", "bf16", *SMALL]) == 0
    frames = read_video(out)
    assert frames.shape[0] == 4 * 6 - 3
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat runs on the beach\n0: a bird flies | 0.75: a car in the city\n")
    folder = tmp_path / "many"
    assert cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]),
                     "--prompts", str(prompts), "--out", str(folder), *SMALL]) == 0
    names = sorted(p.name for p in folder.glob("*.mp4"))
    assert names == ["000-a-cat-runs-on-the-beach.mp4", "001-a-bird-flies.mp4"]


@pytest.mark.parametrize("args, flag", [
    (["--no-global-sink", "--method", "infinity-rope"], "--global-sink"),
    (["--recache", "cut", "--method", "infinity-rope"], "--recache"),
])
def test_switch_settings_the_stream_cannot_run_fail_before_any_model_loads(assets, tmp_path, capsys, monkeypatch,
                                                                         args, flag):
    import flex.loading

    monkeypatch.setattr(flex.loading, "load_dit", lambda *a, **k: pytest.fail("a model was loaded"))
    rc = cli.main(["generate", "--dit", str(assets["dit"]), "--wan-dir", str(assets["wan"]), "--prompt", "p",
                   "--out", str(tmp_path / "x.mp4"), *SMALL, *args])
    err = capsys.readouterr().err
    assert rc == 2 and flag in err and "Traceback" not in err, err
