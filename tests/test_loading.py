"""DiT checkpoint loading: every accepted format, strict errors, LoRA merge, text encoder."""
import json

import pytest
import torch

from tiny_assets import (
    TEXT_DIM, forbid_network, make_dit_checkpoint, make_text_encoder, make_tokenizer, tiny_dit_state_dict,
)
from flex.loading import (
    CheckpointError, diffusers_to_wan, load_dit, merge_lora, normalize_key, read_lora, read_state_dict,
)

KEY = "blocks.1.ffn.0.weight"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    attempts = forbid_network(monkeypatch)
    yield
    assert attempts == [], f"network connections were attempted: {attempts}"


@pytest.fixture(scope="module")
def sd():
    return tiny_dit_state_dict(seed=0)


def _same(model, sd, offset=0.0):
    got = model.state_dict()
    return all(torch.equal(got[k], sd[k] + offset) for k in sd)


# ---------------------------------------------------------------- formats


def test_self_forcing_checkpoint_prefers_ema(tmp_path, sd):
    path = make_dit_checkpoint(tmp_path / "sf.pt")
    model, info = load_dit(path)
    assert info["entry"] == "generator_ema" and "tiny" in info["config_source"]
    assert _same(model, sd)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_choose_raw_generator(tmp_path, sd):
    path = make_dit_checkpoint(tmp_path / "sf.pt")
    model, info = load_dit(path, use_ema=False)
    assert info["entry"] == "generator" and _same(model, sd, offset=1.0)


def test_missing_entry_is_named(tmp_path):
    path = make_dit_checkpoint(tmp_path / "raw_only.pt", ema=False)
    model, info = load_dit(path)  # auto falls back to the raw generator
    assert info["entry"] == "generator"
    with pytest.raises(CheckpointError, match=r"raw_only\.pt.*no 'generator_ema'"):
        load_dit(path, use_ema=True)


def test_fsdp_wrapped_keys(tmp_path, sd):
    path = make_dit_checkpoint(tmp_path / "fsdp.pt", fsdp=True)
    assert _same(load_dit(path)[0], sd)


def test_key_normalisation():
    assert normalize_key("model._fsdp_wrapped_module.blocks.0.self_attn.q.weight") == "blocks.0.self_attn.q.weight"
    assert normalize_key("module._orig_mod.model.head.head.bias") == "head.head.bias"
    assert normalize_key("blocks.0.modulation") == "blocks.0.modulation"


def test_bare_state_dict_and_safetensors(tmp_path, sd):
    from safetensors.torch import save_file

    torch.save({f"model.{k}": v for k, v in sd.items()}, tmp_path / "bare.pth")
    assert _same(load_dit(tmp_path / "bare.pth")[0], sd)
    save_file(sd, str(tmp_path / "w.safetensors"))
    assert _same(load_dit(tmp_path / "w.safetensors")[0], sd)


def test_wan_folder_with_config(tmp_path, sd):
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    cfg = {"_class_name": "WanModel", "model_type": "t2v", "dim": 64, "ffn_dim": 128, "num_heads": 4,
           "num_layers": 2, "text_len": 8, "text_dim": TEXT_DIM, "freq_dim": 32, "in_dim": 16, "out_dim": 16,
           "eps": 1e-6}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model, info = load_dit(tmp_path)
    assert info["config_source"] == "config.json"
    assert (model.config.num_heads, model.config.text_len) == (4, 8)  # from config.json, not the preset
    assert _same(model, sd)
    cfg["num_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_layers = 3 but the weights have num_layers = 2"):
        load_dit(tmp_path)


def test_sharded_wan_folder(tmp_path, sd):
    from safetensors.torch import save_file

    keys = sorted(sd)
    half = len(keys) // 2
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[:half],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[half:]}
    for name, ks in shards.items():
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    assert _same(load_dit(tmp_path)[0], sd)
    (tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="00002-of-00002.safetensors"):
        load_dit(tmp_path)


def test_diffusers_transformer_folder(tmp_path):
    """A Diffusers WanTransformer3DModel folder maps onto the original Wan names exactly."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    dm = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=32, ffn_dim=128, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6,
    )
    dm.save_pretrained(str(tmp_path / "transformer"))
    model, info = load_dit(tmp_path)  # the pipeline folder: its transformer/ is used
    assert info["config_source"] == "config.json"
    assert (model.config.dim, model.config.num_heads, model.config.num_layers) == (64, 2, 2)
    renamed = diffusers_to_wan(dm.state_dict())
    got = model.state_dict()
    assert set(renamed) == set(got)
    assert all(torch.equal(got[k], renamed[k]) for k in got)
    # diffusers' norm2 is Wan's cross-attention norm3 (the FFN norm has no weights).
    assert torch.equal(got["blocks.0.norm3.weight"], dm.state_dict()["blocks.0.norm2.weight"])


# ---------------------------------------------------------------- errors


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_dit("/nonexistent/nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10])
def test_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"broken\.pt.*corrupt"):
        load_dit(path)


def test_truncated_file_names_it(tmp_path):
    path = make_dit_checkpoint(tmp_path / "full.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt.*corrupt"):
        load_dit(tmp_path / "cut.pt")


def test_corrupt_safetensors(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*corrupt"):
        load_dit(tmp_path / "w.safetensors")


def test_mismatched_checkpoint_lists_keys(tmp_path, sd):
    bad = dict(sd)
    for k in [k for k in sd if k.startswith("blocks.1.")][:7]:
        bad.pop(k)
    bad["extra.weight"] = torch.zeros(2)
    bad["head.head.bias"] = torch.zeros(3)
    torch.save({"generator_ema": {f"model.{k}": v for k, v in bad.items()}}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_dit(tmp_path / "bad.pt", preset="tiny")
    msg = str(err.value)
    assert "bad.pt" in msg and "7 missing keys" in msg and "(2 more)" in msg
    assert "1 unexpected keys: extra.weight" in msg
    assert "1 shape mismatches: head.head.bias (checkpoint (3,), model (64,))" in msg


def test_wrong_preset(tmp_path):
    path = make_dit_checkpoint(tmp_path / "sf.pt")
    with pytest.raises(CheckpointError, match=r"sf\.pt.*does not match.*preset 'wan2.1-t2v-1.3b'"):
        load_dit(path, preset="wan2.1-t2v-1.3b")


def test_pickled_objects_need_trust(tmp_path, sd):
    import argparse

    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()}, "args": argparse.Namespace(lr=1)},
               tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match=r"pickled\.pt.*argparse\.Namespace.*trust"):
        load_dit(tmp_path / "pickled.pt")
    assert _same(load_dit(tmp_path / "pickled.pt", trust_pickle=True)[0], sd)


def test_dtype(tmp_path):
    model, _ = load_dit(make_dit_checkpoint(tmp_path / "sf.pt"), dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


# ---------------------------------------------------------------- LoRA


def _linear_names(sd):
    return sorted(k[:-len(".weight")] for k, v in sd.items()
                  if k.startswith("blocks.") and v.dim() == 2 and not k.endswith("modulation"))


def _make_lora(sd, rank=4, wrap=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in _linear_names(sd):
        out_f, in_f = sd[f"{name}.weight"].shape
        out[f"base_model.model.{name}.lora_A.weight"] = torch.randn(rank, in_f, generator=g)
        out[f"base_model.model.{name}.lora_B.weight"] = torch.randn(out_f, rank, generator=g)
    return {"generator_lora": out, "critic_lora": {}} if wrap else out


def test_lora_targets_every_block_linear(sd):
    names = _linear_names(sd)
    assert len(names) == 2 * 10  # self_attn q k v o, cross_attn q k v o, ffn.0, ffn.2
    assert "blocks.0.ffn.2" in names and "blocks.1.cross_attn.o" in names


def test_lora_merge(tmp_path, sd):
    ckpt = make_dit_checkpoint(tmp_path / "base.pt")
    lora = _make_lora(sd, rank=4)
    torch.save(lora, tmp_path / "lora.pt")
    model, info = load_dit(ckpt, lora=tmp_path / "lora.pt", lora_alpha=8.0)
    assert info["entry"] == "generator"  # LongLive: the LoRA sits on the raw generator
    got = model.state_dict()
    a = lora["generator_lora"][f"base_model.model.{KEY[:-7]}.lora_A.weight"]
    b = lora["generator_lora"][f"base_model.model.{KEY[:-7]}.lora_B.weight"]
    torch.testing.assert_close(got[KEY], sd[KEY] + 1 + (8.0 / 4) * b @ a)
    torch.testing.assert_close(got["head.head.weight"], sd["head.head.weight"] + 1)  # untouched
    # alpha defaults to the rank (scale 1), as LongLive's rank 256 / alpha 256
    model, _ = load_dit(ckpt, lora=tmp_path / "lora.pt", use_ema=True)
    torch.testing.assert_close(model.state_dict()[KEY], sd[KEY] + b @ a)


def test_lora_formats(tmp_path, sd):
    from safetensors.torch import save_file

    bare = _make_lora(sd, wrap=False)
    adapter = {k.replace(".weight", ".default.weight"): v for k, v in bare.items()}
    save_file(adapter, str(tmp_path / "lora.safetensors"))
    pairs = read_lora(tmp_path / "lora.safetensors")
    assert set(pairs) == set(_linear_names(sd))


def test_lora_errors(tmp_path, sd):
    bare = _make_lora(sd, wrap=False)
    odd = dict(bare)
    odd["base_model.model.blocks.0.nope.lora_A.weight"] = torch.zeros(4, 3)
    odd["base_model.model.blocks.0.nope.lora_B.weight"] = torch.zeros(3, 4)
    torch.save(odd, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=r"odd\.pt.*1 LoRA modules have no weight.*blocks\.0\.nope"):
        load_dit(make_dit_checkpoint(tmp_path / "base.pt"), lora=tmp_path / "odd.pt")
    half = {k: v for k, v in bare.items() if "lora_B" not in k or "blocks.0.ffn.0" not in k}
    torch.save(half, tmp_path / "half.pt")
    with pytest.raises(CheckpointError, match="only lora_A"):
        read_lora(tmp_path / "half.pt")
    dora = dict(bare)
    dora["base_model.model.blocks.0.ffn.0.lora_magnitude_vector"] = torch.ones(128)
    torch.save(dora, tmp_path / "dora.pt")
    with pytest.raises(CheckpointError, match="DoRA"):
        read_lora(tmp_path / "dora.pt")


def test_merge_lora_in_float32():
    w = torch.zeros(3, 2, dtype=torch.bfloat16)
    a, b = torch.ones(1, 2), torch.full((3, 1), 0.5)
    out = merge_lora({"x.weight": w}, {"x": (a, b)}, alpha=2.0)
    assert out["x.weight"].dtype == torch.bfloat16
    torch.testing.assert_close(out["x.weight"].float(), torch.ones(3, 2))


def test_read_state_dict_info(tmp_path):
    sd_, info = read_state_dict(make_dit_checkpoint(tmp_path / "sf.pt"))
    assert info["source"].endswith("sf.pt") and info["entry"] == "generator_ema" and info["config_json"] is None
    assert all(not k.startswith("model.") for k in sd_)


# ---------------------------------------------------------------- text encoder


@pytest.fixture(scope="module")
def tiny_text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_text")
    make_tokenizer(root / "tokenizer")
    make_text_encoder(root / "text_encoder")
    return root


def test_text_encoder_pads_and_zeros(tiny_text_dir):
    from flex.text import WanTextEncoder

    enc = WanTextEncoder.from_pretrained(tiny_text_dir, text_len=12)
    prompts = ["a cat runs", "the  red car\tin the city at night"]
    ids, mask = enc.tokenize(prompts)
    assert ids.shape == (2, 12) and mask.sum(1).tolist() == [4, 9]  # words + </s>
    emb = enc.encode(prompts)
    assert emb.shape == (2, 12, TEXT_DIM)
    assert emb[0, 4:].abs().sum() == 0 and emb[1, 9:].abs().sum() == 0
    assert (emb[0, :4].abs().sum(-1) > 0).all()
    # Zeroed padding does not change the prompt's own embeddings (the mask hides it).
    alone = enc.encode(prompts[:1])
    torch.testing.assert_close(alone[0], emb[0])


def test_text_prompt_cleaning():
    from flex.text import clean_prompt

    assert clean_prompt("  a &amp;  cat\n\truns ") == "a & cat runs"


def test_wan_dir_that_is_a_file_says_so(tmp_path):
    from flex.jobs.inputs import check_wan_dir as check_setting
    from flex.loading import check_wan_dir

    file = tmp_path / "Wan2.1_VAE.pth"
    file.write_bytes(b"not a folder")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder"):
        check_wan_dir(file)
    with pytest.raises(ValueError, match="wan_dir: .*is a file, not a folder") as err:
        check_setting(file)
    assert "does not exist" not in str(err.value)


def test_text_encoder_missing_parts(tmp_path, tiny_text_dir):
    from flex.text import WanTextEncoder

    with pytest.raises(FileNotFoundError, match="does not exist"):
        WanTextEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"tokenizer.*Diffusers-format"):
        WanTextEncoder.from_pretrained(tmp_path)
    (tmp_path / "tokenizer").symlink_to(tiny_text_dir / "tokenizer")
    (tmp_path / "text_encoder").mkdir()
    with pytest.raises(FileNotFoundError, match=r"text_encoder/config\.json"):
        WanTextEncoder.from_pretrained(tmp_path)
    (tmp_path / "text_encoder" / "config.json").write_text((tiny_text_dir / "text_encoder" / "config.json").read_text())
    with pytest.raises(RuntimeError, match=r"could not load the UMT5 text encoder from .*text_encoder"):
        WanTextEncoder.from_pretrained(tmp_path)
