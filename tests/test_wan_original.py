"""The ORIGINAL Wan2.1 download as --wan-dir: Wan's T5 / VAE files mapped onto transformers / diffusers.

Every mapped model is compared with a direct implementation of Wan's own layout
(wan_original_reference), on random weights in Wan's key layout saved under the original
file names, loaded strictly (no missing, no unexpected keys).
"""
from __future__ import annotations

import inspect
import os
import re

import pytest
import torch

from original_assets import (
    T5_FILE, T5_SIZES, TOKENIZER_DIR, VAE_FILE, make_original_wan_dir, original_t5_weights, original_vae_weights,
)
from tiny_assets import TEXT_DIM, forbid_network, make_wan_dir
import wan_original_reference as ref
from flex.loading import CheckpointError, check_wan_dir, load_dit, load_wan_t5, load_wan_vae, locate_wan_part
from flex.loading.wan_t5 import umt5_config, wan_t5_to_umt5
from flex.loading.wan_vae import LATENTS_MEAN, LATENTS_STD, vae_config, wan_vae_to_diffusers
from flex.text import WanTextEncoder
from flex.decoders import WanVAEDecoder

FP32 = dict(atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory):
    return make_original_wan_dir(tmp_path_factory.mktemp("Wan2.1-T2V-1.3B"))


def _saved(folder, name):
    return torch.load(folder / name, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- T5 encoder


def test_t5_keys_map_one_to_one_onto_umt5():
    from transformers import UMT5EncoderModel

    sd = original_t5_weights()
    mapped = wan_t5_to_umt5(sd, "t5")
    model = UMT5EncoderModel(umt5_config(sd, "t5"))
    assert set(mapped) == set(model.state_dict())  # nothing missing, nothing unexpected
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    used = {id(v) for v in mapped.values()}
    assert all(id(v) in used for v in sd.values())  # every original tensor is used


def test_t5_matches_wan_on_random_ids(tmp_path):
    sd = original_t5_weights(seed=3)
    torch.save(sd, tmp_path / T5_FILE)
    model = load_wan_t5(tmp_path / T5_FILE)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, T5_SIZES["vocab"], (3, 45), generator=gen)  # 45 > max_exact: log buckets are used
    mask = torch.ones_like(ids)
    mask[0, 20:] = 0
    mask[1, 1:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    expected = ref.t5_encode(sd, ids, mask)
    torch.testing.assert_close(out, expected, **FP32)
    assert expected.abs().max() > 1  # not a trivially small output


def test_text_encoder_from_original_folder_matches_wan(original_dir):
    enc = WanTextEncoder.from_pretrained(original_dir, text_len=40)
    assert enc.d_model == TEXT_DIM
    prompts = ["a cat runs on the beach", "the red car in the city at night " * 5]  # the 2nd is truncated
    ids, mask = enc.tokenize(prompts)
    emb = enc.encode(prompts)
    expected = ref.t5_encode(_saved(original_dir, T5_FILE), ids, mask)
    lengths = mask.sum(1)
    assert lengths.tolist() == [7, 40]
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(emb[i, :n], expected[i, :n], **FP32)
        assert emb[i, n:].abs().sum() == 0  # zeros past the prompt, as Self Forcing pads Wan's output


def test_bf16_t5_file_like_the_released_one(tmp_path):
    """The released file is bf16: loading it as fp32 computes Wan's function of the bf16 weights exactly."""
    sd = {k: v.to(torch.bfloat16) for k, v in original_t5_weights(seed=5).items()}
    torch.save(sd, tmp_path / T5_FILE)
    model = load_wan_t5(tmp_path / T5_FILE, dtype=torch.float32)
    assert next(model.parameters()).dtype == torch.float32
    ids = torch.randint(0, T5_SIZES["vocab"], (2, 17), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out, ref.t5_encode({k: v.float() for k, v in sd.items()}, ids, mask), **FP32)
    assert load_wan_t5(tmp_path / T5_FILE).shared.weight.dtype == torch.bfloat16  # dtype None keeps the file's


def test_t5_embedding_is_one_tied_parameter(original_dir):
    model = load_wan_t5(original_dir / T5_FILE)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert not any(p.is_meta for p in model.parameters())


# ---------------------------------------------------------------- VAE

VAE_VARIANTS = {
    "wan2.1-structure": {},  # dim_mult [1, 2, 4, 4], 2 residual blocks, time resampling in stages 2 and 3
    "other-sizes": dict(dim=6, dim_mult=[1, 2, 2, 3], num_res_blocks=1, temperal_downsample=[True, False, True]),
}


@pytest.mark.parametrize("variant", VAE_VARIANTS)
def test_vae_keys_map_one_to_one_onto_autoencoder(variant):
    from diffusers import AutoencoderKLWan

    sd = original_vae_weights(**VAE_VARIANTS[variant])
    config = vae_config(sd, "vae")
    sizes = {**dict(dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True]),
             **VAE_VARIANTS[variant]}
    assert (config["base_dim"], config["dim_mult"], config["num_res_blocks"], config["temperal_downsample"]) == (
        sizes["dim"], sizes["dim_mult"], sizes["num_res_blocks"], sizes["temperal_downsample"])
    mapped = wan_vae_to_diffusers(sd, "vae", config["num_res_blocks"])
    expected = AutoencoderKLWan(**config).state_dict()
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert len(mapped) == len(sd)


@pytest.mark.parametrize("variant", VAE_VARIANTS)
def test_vae_decoder_and_encoder_match_wan(tmp_path, variant):
    sd = original_vae_weights(seed=2, **VAE_VARIANTS[variant])
    torch.save(sd, tmp_path / VAE_FILE)
    vae = load_wan_vae(tmp_path / VAE_FILE)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(2, 16, 4, 3, 2, generator=gen)
    with torch.no_grad():
        video = vae.decode(z, return_dict=False)[0]
    expected = ref.vae_decode(sd, z)
    assert video.shape == expected.shape
    torch.testing.assert_close(video, expected, **FP32)
    assert (expected.abs() < 1).float().mean() > 0.9 and expected.std() > 0.05  # the clamp hides little
    frames = 1 + 4 * 2  # the encoder takes 1 + 4k frames
    clip = torch.rand(1, 3, frames, *expected.shape[-2:], generator=gen) * 2 - 1
    with torch.no_grad():
        mean = vae.encode(clip).latent_dist.mean
    torch.testing.assert_close(mean, ref.vae_encode_mean(sd, clip), **FP32)


def test_vae_decoder_from_original_folder_denormalises_like_wan(original_dir):
    """WanVAEDecoder on DiT-space latents [B, F, 16, h, w] == Wan's decode(z * std + mean), whole and streamed."""
    dec = WanVAEDecoder.from_pretrained(original_dir)
    latents = torch.randn(1, 5, 16, 2, 3, generator=torch.Generator().manual_seed(4))
    z = latents.permute(0, 2, 1, 3, 4) * torch.tensor(LATENTS_STD).view(1, 16, 1, 1, 1) \
        + torch.tensor(LATENTS_MEAN).view(1, 16, 1, 1, 1)
    expected = ref.vae_decode(_saved(original_dir, VAE_FILE), z)
    expected = (255.0 * (expected * 0.5 + 0.5).clamp(0, 1)).floor().permute(0, 2, 3, 4, 1)  # upstream truncates
    whole = dec.decode(latents)
    stream = dec.stream()
    streamed = torch.cat([stream.decode(latents[:, :2]), stream.decode(latents[:, 2:])], dim=1)
    assert stream.mode == "cached" and whole.shape == expected.shape == streamed.shape
    for frames in (whole, streamed):
        diff = (frames.float() - expected).abs()
        assert diff.max() <= 1 and (diff == 0).float().mean() > 0.99  # rounding of 2e-6 differences only


def test_latent_normalisation_is_wans():
    """Wan keeps it in code; it must be what diffusers' AutoencoderKLWan defaults to (its Wan2.1 config)."""
    from diffusers import AutoencoderKLWan

    defaults = inspect.signature(AutoencoderKLWan.__init__).parameters
    assert list(LATENTS_MEAN) == list(defaults["latents_mean"].default)
    assert list(LATENTS_STD) == list(defaults["latents_std"].default)
    assert len(LATENTS_MEAN) == len(LATENTS_STD) == 16
    assert LATENTS_MEAN[:2] == (-0.7571, -0.7089) and LATENTS_STD[-2:] == (2.8251, 1.9160)  # Wan's vae.py


def test_loaded_vae_config_carries_the_normalisation(original_dir):
    vae = load_wan_vae(original_dir / VAE_FILE)
    assert list(vae.config.latents_mean) == list(LATENTS_MEAN) and list(vae.config.latents_std) == list(LATENTS_STD)


# ---------------------------------------------------------------- folder kinds


def test_both_folder_kinds_are_detected(original_dir, tmp_path):
    diffusers_dir = make_wan_dir(tmp_path / "diffusers")
    assert check_wan_dir(original_dir) == "original"
    assert check_wan_dir(diffusers_dir) == "diffusers"
    assert locate_wan_part(original_dir, "tokenizer") == ("original", original_dir / TOKENIZER_DIR)
    assert locate_wan_part(original_dir, "vae") == ("original", original_dir / VAE_FILE)
    assert locate_wan_part(diffusers_dir, "text_encoder") == ("diffusers", diffusers_dir / "text_encoder")
    with pytest.raises(ValueError, match="part must be one of"):
        locate_wan_part(original_dir, "dit")


def test_neither_kind_lists_what_is_there_and_what_each_kind_needs(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "weights").mkdir()
    with pytest.raises(FileNotFoundError) as err:
        check_wan_dir(tmp_path)
    text = str(err.value)
    for expected in ("notes.txt", "weights/", "neither kind", "Diffusers-format", "text_encoder/config.json",
                     "tokenizer/", "vae/config.json", "original Wan2.1 download", T5_FILE, TOKENIZER_DIR + "/",
                     VAE_FILE):
        assert expected in text
    with pytest.raises(FileNotFoundError, match="empty"):
        check_wan_dir(tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_wan_dir(tmp_path / "nowhere")


def test_original_folder_missing_a_part_names_it(tmp_path):
    root = make_original_wan_dir(tmp_path / "wan", dit=False)
    (root / VAE_FILE).unlink()
    assert WanTextEncoder.from_pretrained(root, text_len=8).d_model == TEXT_DIM  # the text parts are all there
    with pytest.raises(FileNotFoundError, match=rf"no VAE .*original Wan2.1 download.*lacks {VAE_FILE}"):
        WanVAEDecoder.from_pretrained(root)
    with pytest.raises(FileNotFoundError, match=rf"lacks {VAE_FILE}"):
        check_wan_dir(root)


def test_whole_original_folder_loads_offline(original_dir, monkeypatch):
    """DiT (config.json + safetensors), text encoder, tokenizer and VAE from the one folder, no network."""
    attempts = forbid_network(monkeypatch)
    model, info = load_dit(original_dir)
    enc = WanTextEncoder.from_pretrained(original_dir, text_len=model.config.text_len)
    dec = WanVAEDecoder.from_pretrained(original_dir)
    assert info["config_json"]["_class_name"] == "WanModel" and enc.d_model == model.config.text_dim
    assert enc.encode(["a dog jumps in snow"]).shape == (1, model.config.text_len, TEXT_DIM)
    assert dec.decode(torch.zeros(1, 2, 16, 2, 2)).shape == (1, 5, 16, 16, 3)
    assert attempts == []


# ---------------------------------------------------------------- bad files


class _RunsCode:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _load_part(root, name):
    return WanTextEncoder.from_pretrained(root, text_len=8) if name == T5_FILE else WanVAEDecoder.from_pretrained(root)


def _bad_folder(tmp_path, name, write):
    root = make_original_wan_dir(tmp_path / "wan", dit=False)
    write(root / name, _saved(root, name))
    return root


@pytest.mark.parametrize("name", [T5_FILE, VAE_FILE])
def test_truncated_file(tmp_path, name):
    root = _bad_folder(tmp_path, name, lambda p, sd: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}.*corrupt or not a PyTorch file"):
        _load_part(root, name)


@pytest.mark.parametrize("name", [T5_FILE, VAE_FILE])
def test_pickle_that_runs_code_is_refused_and_not_run(tmp_path, name):
    marker = tmp_path / "ran"
    root = _bad_folder(tmp_path, name, lambda p, sd: torch.save(
        {**sd, "extra": _RunsCode(os.system, f"touch '{marker}'")}, p))
    with pytest.raises(CheckpointError, match="run code") as err:
        _load_part(root, name)
    assert name in str(err.value) and not marker.exists()


@pytest.mark.parametrize("name", [T5_FILE, VAE_FILE])
def test_file_that_is_not_a_state_dict(tmp_path, name):
    root = _bad_folder(tmp_path, name, lambda p, sd: torch.save([torch.zeros(2)], p))
    with pytest.raises(CheckpointError, match=rf"{re.escape(name)}.*must hold a state dict.*list"):
        _load_part(root, name)


@pytest.mark.parametrize("name, key", [(T5_FILE, "blocks.1.attn.k.weight"),
                                       (VAE_FILE, "decoder.upsamples.5.residual.2.weight")])
def test_unknown_missing_and_misshaped_keys(tmp_path, name, key):
    def unknown(p, sd):
        torch.save({**sd, "blocks.0.attn.extra.weight": torch.zeros(2)}, p)

    def missing(p, sd):
        torch.save({k: v for k, v in sd.items() if k != key}, p)

    def misshaped(p, sd):
        torch.save({**sd, key: sd[key][:1]}, p)

    cases = ((unknown, r"not in Wan's .* layout.*1 keys it does not have: blocks\.0\.attn\.extra"),
             (missing, r"does not match .*\n  1 missing keys"),
             (misshaped, r"does not match .*\n  1 shape mismatches"))
    for i, (write, problem) in enumerate(cases):
        root = _bad_folder(tmp_path / str(i), name, write)
        with pytest.raises(CheckpointError, match=problem) as err:
            _load_part(root, name)
        assert str(root / name) in str(err.value)


def test_non_finite_weights_are_refused(tmp_path):
    def poison(p, sd):
        sd["norm.weight"][0] = float("nan")
        torch.save(sd, p)

    root = _bad_folder(tmp_path, T5_FILE, poison)
    with pytest.raises(CheckpointError, match=r"inf or NaN: encoder\.final_layer_norm\.weight"):
        _load_part(root, T5_FILE)


def test_vae_with_attention_in_the_up_path_is_refused(tmp_path):
    sd = original_vae_weights()
    sd["decoder.upsamples.0.to_qkv.weight"] = torch.zeros(48, 16, 1, 1)
    torch.save(sd, tmp_path / VAE_FILE)
    with pytest.raises(CheckpointError, match="attention blocks between the up / down sampling stages"):
        load_wan_vae(tmp_path / VAE_FILE)


def test_shared_position_table_t5_is_refused(tmp_path):
    sd = original_t5_weights()
    sd = {k: v for k, v in sd.items() if "pos_embedding" not in k}
    sd["pos_embedding.embedding.weight"] = torch.zeros(16, 4)
    torch.save(sd, tmp_path / T5_FILE)
    with pytest.raises(CheckpointError, match="shares one relative position table"):
        load_wan_t5(tmp_path / T5_FILE)
