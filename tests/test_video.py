"""mp4 writing (atomic, streaming) and VAE decoding (chunk-streamed == whole-video decode)."""
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from flex.video import VideoWriter, read_comment, read_video, remove_stale_parts, write_video
from flex.decoders import WanVAEDecoder, pixel_frames


def _frames(t, h=48, w=64, seed=0):
    """Smooth moving gradients: compress well, so decoded values stay close."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((t, h, w, 3), np.uint8)
    for i in range(t):
        base = rng.integers(0, 60)
        out[i, ..., 0] = (x * 255 // w + 8 * i) % 256
        out[i, ..., 1] = (y * 255 // h + base) % 256
        out[i, ..., 2] = 128
    return out


def _leftovers(folder):
    return [p for p in os.listdir(folder) if p.endswith(".part")]


@pytest.mark.parametrize("backend", ["av", "imageio"])
def test_write_read_roundtrip(tmp_path, backend):
    frames = _frames(13)
    path = write_video(tmp_path / "clip.mp4", frames, fps=16, backend=backend)
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6
    assert _leftovers(tmp_path) == []


def test_fps_is_16(tmp_path):
    av = pytest.importorskip("av")
    path = write_video(tmp_path / "clip.mp4", _frames(8))
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        assert stream.average_rate == 16
        assert stream.codec_context.name == "h264"


def test_streaming_writer_appends_chunks(tmp_path):
    frames = _frames(21)
    path = tmp_path / "sub" / "stream.mp4"  # folder is created
    with VideoWriter(path) as w:
        w.append(frames[:9])
        assert not path.exists()  # nothing visible before the end
        w.append(torch.from_numpy(frames[9:]))
    assert w.frames_written == 21
    assert read_video(path).shape == frames.shape


def test_error_mid_write_leaves_no_file(tmp_path):
    path = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path) as w:
            w.append(_frames(5))
            raise RuntimeError("boom")
    assert not path.exists()
    assert _leftovers(tmp_path) == []


def test_error_mid_write_keeps_previous_file(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, _frames(5))
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(path) as w:
            w.append(_frames(9, seed=3))
            raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_bad_frames_rejected(tmp_path):
    with VideoWriter(tmp_path / "x.mp4") as w:
        with pytest.raises(ValueError, match="uint8"):
            w.append(np.zeros((2, 16, 16, 3), np.float32))
        with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
            w.append(np.zeros((2, 16, 16), np.uint8))
        w.append(np.zeros((2, 16, 16, 3), np.uint8))
        with pytest.raises(ValueError, match="16x16"):
            w.append(np.zeros((2, 32, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="even"):
        with VideoWriter(tmp_path / "odd.mp4") as w:
            w.append(np.zeros((1, 15, 16, 3), np.uint8))
    assert not (tmp_path / "odd.mp4").exists()
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "empty.mp4"):
            pass
    assert not (tmp_path / "empty.mp4").exists()
    assert _leftovers(tmp_path) == []


def test_folder_as_video_path_rejected(tmp_path):
    with pytest.raises(ValueError, match="folder"):
        VideoWriter(tmp_path)


def _noisy_frames(t=41, h=96, w=160):
    """Hard-to-encode frames: x264's rate control and macroblock tree have real decisions to make."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 190, w).astype(np.uint8)[None, None, :, None]
    return (rng.integers(0, 64, (t, h, w, 3), dtype=np.uint8) + ramp).astype(np.uint8)


WRITE_IN_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from flex.video import write_video
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 190, 160).astype(np.uint8)[None, None, :, None]
    frames = (rng.integers(0, 64, (41, 96, 160, 3), dtype=np.uint8) + ramp).astype(np.uint8)
    write_video(sys.argv[1], frames, backend=sys.argv[2], comment="same")
""")


@pytest.mark.parametrize("backend", ["av", "imageio"])
def test_same_frames_give_the_same_bytes(tmp_path, backend):
    """x264's SIMD macroblock-tree code made PyAV's output depend on the process's memory: several
    encodes of the same frames in one process differed (pixels by up to ~20)."""
    frames = _noisy_frames()
    assert np.array_equal(frames, _noisy_frames())
    paths = []
    for k in range(6):
        path = tmp_path / f"clip{k}.mp4"
        with VideoWriter(path, backend=backend, comment="same") as w:
            step = 1 if k % 2 else 9  # how the frames are handed over does not matter
            for start in range(0, len(frames), step):
                w.append(frames[start:start + step])
        paths.append(path)
    child = tmp_path / "child.mp4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", WRITE_IN_CHILD, str(child), backend], check=True, env=env)
    reference = paths[0].read_bytes()
    for path in paths[1:] + [child]:
        assert path.read_bytes() == reference, f"{path.name} differs from {paths[0].name}"


@pytest.mark.parametrize("backend", ["av", "imageio"])
def test_comment_metadata_roundtrip(tmp_path, backend):
    path = write_video(tmp_path / "c.mp4", _frames(3), backend=backend, comment="flex-settings-sha256:ab12")
    assert read_comment(path) == "flex-settings-sha256:ab12"
    assert read_comment(write_video(tmp_path / "none.mp4", _frames(3), backend=backend)) is None
    (tmp_path / "junk.mp4").write_bytes(b"junk")
    assert read_comment(tmp_path / "junk.mp4") is None and read_comment(tmp_path / "absent.mp4") is None
    with pytest.raises(ValueError, match="comment"):
        VideoWriter(tmp_path / "x.mp4", comment="two\nlines")


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from flex.video import VideoWriter
    w = VideoWriter(sys.argv[1])
    w.append(np.zeros((3, 16, 16, 3), np.uint8))
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_parts_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    path = tmp_path / "clip.mp4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(path)], env=env)
    assert run.returncode == -signal.SIGKILL
    left = _leftovers(tmp_path)
    assert len(left) == 1 and left[0].startswith(".clip.mp4.")  # what the killed writer left
    unrelated = [tmp_path / ".clip.mp4.notes", tmp_path / ".other.mp4.abc123.part", tmp_path / "clip.mp4.part"]
    for p in unrelated:
        p.write_bytes(b"keep me")
    with VideoWriter(path) as live:  # a writer that is still running keeps its file
        live.append(_frames(2))
        removed = remove_stale_parts(path)
        assert [p.name for p in removed] == left
        assert live._tmp.exists()
    assert path.exists() and all(p.exists() for p in unrelated)
    assert sorted(_leftovers(tmp_path)) == [".other.mp4.abc123.part", "clip.mp4.part"]


# ---------------------------------------------------------------- VAE


@pytest.fixture(scope="module")
def tiny_vae():
    from tiny_assets import make_vae
    from diffusers import AutoencoderKLWan
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        make_vae(d)
        return AutoencoderKLWan.from_pretrained(d, local_files_only=True).eval()


def test_pixel_frames():
    assert [pixel_frames(f) for f in (0, 1, 3, 21, 120)] == [0, 1, 9, 81, 477]


def test_vae_decode_shape_and_denormalisation(tiny_vae):
    dec = WanVAEDecoder(tiny_vae)
    z = torch.randn(2, 4, 16, 3, 5, generator=torch.Generator().manual_seed(0))
    frames = dec.decode(z)
    assert frames.shape == (2, pixel_frames(4), 24, 40, 3) and frames.dtype == torch.uint8
    # De-normalisation is z * std + mean per channel (diffusers: z / (1 / std) + mean).
    zv = dec.denormalize(z)
    std = torch.tensor(tiny_vae.config.latents_std).view(1, 16, 1, 1, 1)
    mean = torch.tensor(tiny_vae.config.latents_mean).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(zv, z.permute(0, 2, 1, 3, 4) * std + mean)
    ref = tiny_vae.decode(z.permute(0, 2, 1, 3, 4) / (1.0 / std) + mean, return_dict=False)[0]
    ref = (255.0 * (ref * 0.5 + 0.5).clamp(0, 1)).to(torch.uint8).permute(0, 2, 3, 4, 1)  # upstream: truncated
    assert (ref.int() - frames.int()).abs().max() <= 1


def test_vae_stream_equals_full_decode(tiny_vae):
    dec = WanVAEDecoder(tiny_vae)
    assert dec.supports_cache
    z = torch.randn(1, 7, 16, 3, 4, generator=torch.Generator().manual_seed(1))
    full = dec.decode(z)
    stream = dec.stream()
    parts = [stream.decode(z[:, :3]), stream.decode(z[:, 3:6]), stream.decode(z[:, 6:])]
    assert [p.shape[1] for p in parts] == [9, 12, 4]
    assert stream.mode == "cached" and stream.frames_out == pixel_frames(7)
    assert torch.equal(torch.cat(parts, dim=1), full)


def test_vae_stream_overlap_fallback_frame_counts(tiny_vae):
    dec = WanVAEDecoder(tiny_vae)
    dec.supports_cache = False  # as with a diffusers that hides the decoder cache
    z = torch.randn(1, 6, 16, 2, 2, generator=torch.Generator().manual_seed(2))
    stream = dec.stream(overlap=2)
    parts = [stream.decode(z[:, :3]), stream.decode(z[:, 3:])]
    assert stream.mode == "overlap"
    assert [p.shape[1] for p in parts] == [9, 12]
    # The first chunk has no context, so it is exact.
    assert torch.equal(parts[0], dec.decode(z[:, :3]))


def test_vae_rejects_bad_latents(tiny_vae):
    dec = WanVAEDecoder(tiny_vae)
    with pytest.raises(ValueError, match=r"\[B, F, 16, h, w\]"):
        dec.decode(torch.zeros(1, 16, 3, 4, 4))
