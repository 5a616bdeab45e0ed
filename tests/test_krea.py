"""Krea Realtime 14B: the 14B architecture on the meta device, Krea's file layouts on reduced-size files."""
import json

import pytest
import torch
from safetensors.torch import save_file

from tiny_assets import forbid_network, tiny_dit_state_dict
from flex.loading import (
    KREA_FILE, CheckpointError, check_on_meta, krea_weights_file, load_dit, meta_state_dict,
)
from flex.models import CausalWanModel
from flex.presets import MODEL_PRESETS

SHARDS = [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
INDEX = "diffusion_pytorch_model.safetensors.index.json"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    attempts = forbid_network(monkeypatch)
    yield
    assert attempts == [], f"network connections were attempted: {attempts}"


def wan_shapes(dim, ffn, layers, text_dim=4096, freq_dim=256, in_dim=16, out_dim=16, patch=(1, 2, 2)):
    """Every Wan2.1 T2V parameter name and shape, written out from the architecture."""
    p = patch[0] * patch[1] * patch[2]
    shapes = {
        "patch_embedding.weight": (dim, in_dim, *patch), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.head.weight": (out_dim * p, dim), "head.head.bias": (out_dim * p,),
        "head.modulation": (1, 2, dim),
    }
    for i in range(layers):
        b = f"blocks.{i}."
        shapes[b + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                shapes[f"{b}{attn}.{lin}.weight"] = (dim, dim)
                shapes[f"{b}{attn}.{lin}.bias"] = (dim,)
            shapes[f"{b}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{b}{attn}.norm_k.weight"] = (dim,)
        shapes[b + "norm3.weight"] = (dim,)
        shapes[b + "norm3.bias"] = (dim,)
        shapes[b + "ffn.0.weight"] = (ffn, dim)
        shapes[b + "ffn.0.bias"] = (ffn,)
        shapes[b + "ffn.2.weight"] = (dim, ffn)
        shapes[b + "ffn.2.bias"] = (dim,)
    return shapes


KREA_14B = wan_shapes(5120, 13824, 40)  # Wan2.1-T2V-14B config.json


def meta_sd(shapes, prefix="model.", dtype=torch.bfloat16):
    return {prefix + k: torch.empty(s, dtype=dtype, device="meta") for k, s in shapes.items()}


def write_krea_repo(root, sd, shard_offset=1.0, shard_prefix=""):
    """Krea's Hugging Face layout, reduced: the single file ("model." names) at the top and
    transformer/ (config.json + 3 shards + index), the shards holding ``sd + shard_offset``."""
    root.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v for k, v in sd.items()}, str(root / KREA_FILE))
    tdir = root / "transformer"
    tdir.mkdir()
    names = sorted(sd)
    weight_map = {}
    for i, shard in enumerate(SHARDS):
        part = names[i::3]
        save_file({shard_prefix + k: sd[k] + shard_offset for k in part}, str(tdir / shard))
        weight_map.update({shard_prefix + k: shard for k in part})
    (tdir / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (tdir / "config.json").write_text(json.dumps({"dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2,
                                                  "text_len": 16, "text_dim": 32, "freq_dim": 32}))
    (root / "README.md").write_text("reduced-size stand-in")
    return root


def same(model, sd, offset=0.0):
    got = model.state_dict()
    return sorted(got) == sorted(sd) and all(torch.equal(got[k], sd[k] + offset) for k in sd)


# ------------------------------------------------------------- the 14B architecture, meta device


def test_14b_preset_has_the_architecture_of_wan_14b():
    with torch.device("meta"):
        model = CausalWanModel("wan2.1-t2v-14b")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == KREA_14B and len(got) == 15 + 40 * 27
    count = sum(torch.Size(s).numel() for s in KREA_14B.values())
    assert sum(p.numel() for p in model.parameters()) == count == 14_288_491_584  # 28.58 GB in 2-byte floats
    cfg = model.config
    assert (cfg.num_heads, cfg.head_dim, cfg.text_len, cfg.eps, cfg.patch_size) == (40, 128, 512, 1e-6, (1, 2, 2))
    assert MODEL_PRESETS["krea-14b"].architecture == "wan2.1-t2v-14b"


@pytest.mark.parametrize("prefix", ["model.", ""])  # the single file, the transformer/ shards
def test_krea_names_and_shapes_fit_the_14b_model_on_meta(prefix):
    cfg, how = check_on_meta(meta_sd(KREA_14B, prefix))
    assert cfg.dim == 5120 and cfg.num_heads == 40 and how == "preset 'wan2.1-t2v-14b' (matched from tensor shapes)"
    cfg, how = check_on_meta(meta_sd(KREA_14B, prefix), preset="wan2.1-t2v-14b")
    assert how == "preset 'wan2.1-t2v-14b'"


def test_meta_check_names_what_does_not_fit():
    shapes = dict(KREA_14B)
    shapes["blocks.7.ffn.0.weight"] = (8960, 5120)
    del shapes["blocks.39.cross_attn.norm_k.weight"]
    shapes["blocks.3.self_attn.to_qkv.weight"] = (15360, 5120)  # Krea's fused projection is made after loading
    with pytest.raises(CheckpointError) as err:
        check_on_meta(meta_sd(shapes), preset="wan2.1-t2v-14b", source="krea.safetensors")
    msg = str(err.value)
    assert "'krea.safetensors' does not match the model (preset 'wan2.1-t2v-14b'" in msg
    assert "1 missing keys: blocks.39.cross_attn.norm_k.weight" in msg
    assert "1 unexpected keys: blocks.3.self_attn.to_qkv.weight" in msg
    assert "blocks.7.ffn.0.weight (checkpoint (8960, 5120), model (13824, 5120))" in msg
    with pytest.raises(CheckpointError, match="does not match the model \\(preset 'wan2.1-t2v-1.3b'"):
        check_on_meta(meta_sd(KREA_14B), preset="wan2.1-t2v-1.3b")
    with pytest.raises(CheckpointError, match="cannot infer the model size: the weights have no 'head.head.weight'"):
        check_on_meta(meta_sd({k: v for k, v in KREA_14B.items() if not k.startswith("head.")}))


def test_meta_check_refuses_float8_weights():
    sd = meta_sd(KREA_14B)
    sd["model.blocks.0.ffn.0.weight"] = torch.empty((13824, 5120), dtype=torch.float8_e4m3fn, device="meta")
    with pytest.raises(CheckpointError, match=r"1 tensors of a dtype weights cannot have.*blocks\.0\.ffn\.0\.weight"):
        check_on_meta(sd)


# ------------------------------------------------------------- Krea's files, reduced size


def test_meta_state_dict_reads_the_header_only(tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in tiny_dit_state_dict().items()}
    path = tmp_path / KREA_FILE
    save_file({f"model.{k}": v for k, v in sd.items()}, str(path))
    meta = meta_state_dict(path)
    assert sorted(meta) == sorted(f"model.{k}" for k in sd)
    assert all(v.is_meta and v.dtype == torch.bfloat16 and v.shape == sd[k[6:]].shape for k, v in meta.items())
    assert meta_state_dict(tmp_path).keys() == meta.keys()  # the folder holding the file
    assert check_on_meta(path)[1] == "preset 'tiny' (matched from tensor shapes)"


def test_meta_state_dict_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        meta_state_dict(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match=f"holds no {KREA_FILE}"):
        meta_state_dict(tmp_path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(CheckpointError, match=r"bad\.safetensors' is corrupt or not a safetensors file"):
        meta_state_dict(bad)


def test_load_the_single_file(tmp_path):
    sd = tiny_dit_state_dict()
    path = tmp_path / KREA_FILE
    save_file({f"model.{k}": v.to(torch.bfloat16) for k, v in sd.items()}, str(path))
    model, info = load_dit(path)
    assert info["entry"] == "state dict" and info["source"] == str(path)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert same(model, {k: v.to(torch.bfloat16) for k, v in sd.items()})


def test_repository_folder_reads_the_single_file_not_the_shards(tmp_path):
    sd = tiny_dit_state_dict()
    root = write_krea_repo(tmp_path / "krea-realtime-video", sd, shard_offset=1.0)
    model, info = load_dit(root)
    assert info["source"] == str(root / KREA_FILE) and same(model, sd)
    assert krea_weights_file(root) == root / KREA_FILE


@pytest.mark.parametrize("shard_prefix", ["", "model."])
def test_transformer_shards_load_on_their_own(tmp_path, shard_prefix):
    sd = tiny_dit_state_dict()
    root = write_krea_repo(tmp_path / "repo", sd, shard_offset=1.0, shard_prefix=shard_prefix)
    model, info = load_dit(root / "transformer")
    assert info["source"].endswith("(3 shards)") and info["config_source"] == "config.json"
    assert same(model, sd, offset=1.0)


def test_single_file_next_to_other_weights_is_refused(tmp_path):
    sd = tiny_dit_state_dict()
    save_file({f"model.{k}": v for k, v in sd.items()}, str(tmp_path / KREA_FILE))
    torch.save({"generator_ema": sd}, tmp_path / "self_forcing_dmd.pt")
    with pytest.raises(CheckpointError, match=rf"holds Krea's {KREA_FILE} and other weights \(self_forcing_dmd\.pt\)"):
        load_dit(tmp_path)
    model, _ = load_dit(tmp_path / KREA_FILE)  # naming the file resolves it
    assert same(model, sd)


def test_truncated_single_file_names_the_file(tmp_path):
    sd = tiny_dit_state_dict()
    path = tmp_path / KREA_FILE
    save_file({f"model.{k}": v for k, v in sd.items()}, str(path))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=rf"{KREA_FILE}' is corrupt or not a safetensors file"):
        load_dit(tmp_path)


def test_krea_preset_refuses_a_checkpoint_of_another_size(tmp_path):
    path = tmp_path / KREA_FILE
    save_file({f"model.{k}": v for k, v in tiny_dit_state_dict().items()}, str(path))
    with pytest.raises(CheckpointError, match=r"does not match the model \(preset 'wan2.1-t2v-14b'"):
        load_dit(path, **MODEL_PRESETS["krea-14b"].load_kwargs())
