"""The tiny Wan decoder (TAEHV, taew2_1.pth): published key layout, math against a plain
frame-by-frame float64 reference, 4F - 3 frames, streaming == whole decode, loading errors."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from flex.loading import CheckpointError
from flex.decoders.tiny import TinyVAEDecoder, TinyWanDecoderNet, load_tiny_vae_net

H, W = 4, 6  # latent size: 32 x 48 pixels, fast


def _random_net(seed=0) -> TinyWanDecoderNet:
    """Random weights scaled so that the outputs spread over [0, 1] (default init gives ~0)."""
    torch.manual_seed(seed)
    net = TinyWanDecoderNet()
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() == 4:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            else:
                p.normal_(0, 0.1)
        net.decoder[22].bias.fill_(0.5)
    return net.eval()


@pytest.fixture(scope="module")
def net():
    return _random_net()


def _latents(frames, batch=1, seed=1):
    return torch.randn(batch, frames, 16, H, W, generator=torch.Generator().manual_seed(seed))


def _save(sd, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        torch.save(sd, path)
    return path


def _published_file_dict(net):
    """The net's weights plus encoder tensors, as the published file holds both."""
    sd = dict(net.state_dict())
    sd.update({"encoder.0.weight": torch.randn(64, 3, 3, 3), "encoder.0.bias": torch.randn(64),
               "encoder.2.conv.weight": torch.randn(64, 128, 1, 1)})
    return sd


def test_parameter_names_and_shapes_are_the_published_ones(net):
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    expected = {"decoder.1.weight": (256, 16, 3, 3), "decoder.1.bias": (256,),
                "decoder.7.conv.weight": (256, 256, 1, 1),    # time upsample by 1
                "decoder.8.weight": (128, 256, 3, 3),
                "decoder.13.conv.weight": (256, 128, 1, 1),   # by 2
                "decoder.14.weight": (64, 128, 3, 3),
                "decoder.19.conv.weight": (128, 64, 1, 1),    # by 2
                "decoder.20.weight": (64, 64, 3, 3),
                "decoder.22.weight": (3, 64, 3, 3), "decoder.22.bias": (3,)}
    for stage, width in zip((3, 9, 15), (256, 128, 64)):
        for block in range(stage, stage + 3):
            expected.update({f"decoder.{block}.conv.0.weight": (width, 2 * width, 3, 3),
                             f"decoder.{block}.conv.2.weight": (width, width, 3, 3),
                             f"decoder.{block}.conv.4.weight": (width, width, 3, 3)})
            expected.update({f"decoder.{block}.conv.{i}.bias": (width,) for i in (0, 2, 4)})
    assert shapes == expected


def _reference_frames(sd, z):
    """Plain float64 decoder, one frame at a time: [T, 16, h, w] -> [4T - 3, 3, 8h, 8w] in [0, 1]."""
    sd = {k: v.double() for k, v in sd.items()}

    def conv(x, name):
        return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), padding=1)

    frames = [torch.relu(conv(3 * torch.tanh(z[t:t + 1].double() / 3), "decoder.1")) for t in range(len(z))]
    first = 3
    for stride in (1, 2, 2):
        for block in range(first, first + 3):
            name, before, out = f"decoder.{block}.conv", torch.zeros_like(frames[0]), []
            for x in frames:  # input of this block one frame earlier: zeros at the start
                y = torch.relu(conv(torch.cat([x, before], 1), f"{name}.0"))
                y = torch.relu(conv(y, f"{name}.2"))
                out.append(torch.relu(conv(y, f"{name}.4") + x))
                before = x
            frames = out
        frames = [x.repeat_interleave(2, 2).repeat_interleave(2, 3) for x in frames]  # nearest 2x
        grown = []
        for x in frames:  # 1x1 conv to stride * C channels; group j is the j-th new frame
            y = F.conv2d(x, sd[f"decoder.{first + 4}.conv.weight"])
            grown += [y[:, j * x.shape[1]:(j + 1) * x.shape[1]] for j in range(stride)]
        frames = [conv(x, f"decoder.{first + 5}") for x in grown]
        first += 6
    frames = [conv(torch.relu(x), "decoder.22") for x in frames]
    return torch.cat(frames[3:]).clamp(0, 1)


def test_decode_matches_plain_reference(net):
    z = _latents(3)
    got = TinyVAEDecoder(net).decode(z)[0]                       # [9, 32, 48, 3] uint8
    ref = _reference_frames(net.state_dict(), z[0]).permute(0, 2, 3, 1)
    assert got.shape == ref.shape == (9, 8 * H, 8 * W, 3) and got.dtype == torch.uint8
    assert 0.2 < ((ref > 0) & (ref < 1)).double().mean() < 0.95  # a real spread of values
    # uint8 = 255 x truncated; fp32 vs float64 may move a value across a level boundary
    assert (got.int() - (255 * ref).floor().int()).abs().max() <= 1
    assert (got.int() == (255 * ref).floor().int()).double().mean() > 0.99


@pytest.mark.parametrize("frames", [1, 2, 5])
def test_frame_counts(net, frames):
    out = TinyVAEDecoder(net).decode(_latents(frames, batch=2))
    assert out.shape == (2, 4 * frames - 3, 8 * H, 8 * W, 3) and out.dtype == torch.uint8
    assert out.device.type == "cpu"


@pytest.mark.parametrize("chunks", [[3, 3], [1, 2, 4], [1, 1, 1]])
def test_stream_equals_whole_decode(net, chunks):
    decoder = TinyVAEDecoder(net)
    z = _latents(sum(chunks), batch=2)
    whole = decoder.decode(z)
    stream, parts, start = decoder.stream(), [], 0
    memory_shapes = None
    for i, f in enumerate(chunks):
        parts.append(stream(z[:, start:start + f]))
        start += f
        assert parts[-1].shape[1] == (4 * f - 3 if i == 0 else 4 * f)
        shapes = [tuple(m.shape) for m in stream.memory]  # one frame per memory block, whatever the length
        assert memory_shapes in (None, shapes) and len(shapes) == 9 and all(s[1] == 1 for s in shapes)
        memory_shapes = shapes
    assert torch.equal(torch.cat(parts, 1), whole)
    assert stream.latent_frames == sum(chunks) and stream.frames_out == whole.shape[1]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_and_load_in_the_published_layout(net, tmp_path, suffix):
    path = _save(_published_file_dict(net), tmp_path / f"taew2_1{suffix}")  # encoder keys dropped on load
    loaded = TinyVAEDecoder.from_pretrained(path)
    assert loaded.device.type == "cpu" and loaded.dtype == torch.float32
    z = _latents(4)
    assert torch.equal(loaded.decode(z), TinyVAEDecoder(net).decode(z))
    half = TinyVAEDecoder.from_pretrained(path, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert (half.decode(z).int() - loaded.decode(z).int()).abs().float().mean() < 8  # bf16: close, not equal


def test_keys_that_do_not_fit_are_named(net, tmp_path):
    sd = _published_file_dict(net)
    sd.pop("decoder.13.conv.weight")
    sd["decoder.23.weight"] = torch.zeros(3)
    sd["decoder.1.weight"] = torch.zeros(256, 48, 3, 3)  # a Wan 2.2 (48-channel) decoder
    path = _save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        TinyVAEDecoder.from_pretrained(path)
    text = str(err.value)
    assert str(path) in text and "missing keys: decoder.13.conv.weight" in text
    assert "unexpected keys: decoder.23.weight" in text
    assert "decoder.1.weight (checkpoint (256, 48, 3, 3), model (256, 16, 3, 3))" in text


def test_file_errors(tmp_path):
    missing = tmp_path / "nowhere" / "taew2_1.pth"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        TinyVAEDecoder.from_pretrained(missing)
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2], not_weights)
    with pytest.raises(CheckpointError, match=re.escape(str(not_weights)) + ".*not a state dict"):
        TinyVAEDecoder.from_pretrained(not_weights)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=re.escape(str(garbage))):
        TinyVAEDecoder.from_pretrained(garbage)
    with pytest.raises(ValueError, match="dtype"):
        load_tiny_vae_net(garbage, dtype=torch.int8)


def test_bad_latents(net):
    decoder = TinyVAEDecoder(net)
    for bad in (torch.zeros(1, 2, 4, H, W), torch.zeros(2, 16, H, W), torch.zeros(1, 0, 16, H, W),
                torch.zeros(1, 2, 16, H, W, dtype=torch.int64), "latents"):
        with pytest.raises(ValueError, match="latents must"):
            decoder.decode(bad)
    stream = decoder.stream()
    stream.decode(_latents(1))
    with pytest.raises(ValueError, match=r"keep batch and size \(B, h, w\)"):
        stream.decode(torch.zeros(1, 1, 16, H + 1, W))
