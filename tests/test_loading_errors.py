"""DiT loading on broken input: every case is an error that names the file and what is wrong."""
import json
import math
import os
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from tiny_assets import forbid_network, make_dit_checkpoint, make_dit_folder, tiny_dit_state_dict
from flex.loading import (
    CheckpointError, infer_dims, load_dit, merge_lora, normalize_keys, read_lora, read_state_dict, resolve_config,
)



@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    attempts = forbid_network(monkeypatch)
    yield
    assert attempts == [], f"network connections were attempted: {attempts}"


@pytest.fixture(scope="module")
def sd():
    return tiny_dit_state_dict(seed=0)


def _save_generator(path, entry, **others):
    torch.save({"generator_ema": entry, **others}, path)
    return path


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize("text, problem", [
    ("[1, 2]", "must hold a JSON object.*not a list"),
    ('"tiny"', "must hold a JSON object.*not a str"),
    ("3", "must hold a JSON object.*not a int"),
    ("null", "must hold a JSON object.*not a NoneType"),
    ("{not json", "is not valid JSON"),
])
def test_config_json_not_an_object(tmp_path, text, problem):
    folder = make_dit_folder(tmp_path / "wan", config=text)
    with pytest.raises(CheckpointError, match=re.escape(str(folder / "config.json")) + ".*" + problem):
        load_dit(folder)


@pytest.mark.parametrize("config, problem", [
    ({"num_layers": "2"}, "num_layers must be an int >= 1, got '2'"),
    ({"patch_size": 2}, "not a valid Wan config"),
    ({"num_attention_heads": "2"}, "num_attention_heads must be an int >= 1, got '2'"),
    ({"num_attention_heads": 2, "attention_head_dim": [32]}, "attention_head_dim must be an int >= 1"),
])
def test_config_json_wrong_types(tmp_path, config, problem):
    folder = make_dit_folder(tmp_path / "wan", config=config)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*" + re.escape(problem)):
        load_dit(folder)


def test_diffusers_config_is_mapped_once(sd):
    """The shape cross-check and the chosen config read the Diffusers names the same way."""
    diffusers = {"num_attention_heads": 4, "attention_head_dim": 16, "in_channels": 16, "out_channels": 16,
                 "ffn_dim": 128, "num_layers": 2, "text_dim": 32, "freq_dim": 32, "patch_size": [1, 2, 2]}
    dims = infer_dims(sd, diffusers)
    cfg, how = resolve_config(sd, diffusers)
    assert how == "config.json" and (cfg.dim, cfg.num_heads, cfg.in_dim, cfg.out_dim) == (64, 4, 16, 16)
    assert dims["num_heads"] == cfg.num_heads == 4 and dims["dim"] == cfg.dim
    with pytest.raises(CheckpointError, match="dim = 128 but the weights have dim = 64"):
        infer_dims(sd, {**diffusers, "attention_head_dim": 32})
    with pytest.raises(CheckpointError, match="in_dim = 4 but the weights have in_dim = 16"):
        resolve_config(sd, {**diffusers, "in_channels": 4})


# ---------------------------------------------------------------- truncated and malformed files


def test_truncated_safetensors(tmp_path):
    folder = make_dit_folder(tmp_path / "wan")
    data = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors.*corrupt"):
        load_dit(tmp_path / "cut.safetensors")


def _sharded(folder, sd, index):
    from safetensors.torch import save_file

    folder.mkdir()
    keys = sorted(sd)
    save_file({k: sd[k] for k in keys[:5]}, str(folder / "a.safetensors"))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index(keys)))
    return folder


def test_shard_index_names_a_missing_shard(tmp_path, sd):
    folder = _sharded(tmp_path / "wan", sd, lambda keys: {"weight_map": {
        **{k: "a.safetensors" for k in keys[:5]}, **{k: "b.safetensors" for k in keys[5:]}}})
    with pytest.raises(CheckpointError, match=r"index\.json.*lists shards that are not in.*b\.safetensors"):
        load_dit(folder)


@pytest.mark.parametrize("index, problem", [
    (lambda keys: [keys], "must hold a JSON object"),
    (lambda keys: {"metadata": {}}, "needs a weight_map"),
    (lambda keys: {"weight_map": keys}, "needs a weight_map"),
    (lambda keys: {"weight_map": {k: 1 for k in keys}}, "needs a weight_map"),
])
def test_malformed_shard_index(tmp_path, sd, index, problem):
    folder = _sharded(tmp_path / "wan", sd, index)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors\.index\.json.*" + problem):
        load_dit(folder)


def test_legacy_torch_save_format(tmp_path, sd):
    """Files of the old (non-zip) format cannot be memory-mapped; they are read without mmap."""
    torch.save({"generator": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "old.pt",
               _use_new_zipfile_serialization=False)
    model, info = load_dit(tmp_path / "old.pt")
    assert info["entry"] == "generator"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())


# ---------------------------------------------------------------- what the checkpoint holds


def test_empty_dict(tmp_path):
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match=r"empty\.pt.*empty dict"):
        load_dit(tmp_path / "empty.pt")
    _save_generator(tmp_path / "empty_entry.pt", {})
    with pytest.raises(CheckpointError, match=r"empty_entry\.pt.*contains no tensors"):
        load_dit(tmp_path / "empty_entry.pt")


@pytest.mark.parametrize("entry, kind", [(torch.zeros(3), "Tensor"), ([1, 2], "list"), (None, "NoneType")])
def test_generator_entry_not_a_dict(tmp_path, entry, kind):
    torch.save({"generator": entry}, tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=rf"odd\.pt.*'generator' is a {kind}"):
        load_dit(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match=rf"odd\.pt.*'generator' entry is a {kind}, not a state dict"):
        load_dit(tmp_path / "odd.pt", use_ema=False)


def test_unusable_ema_entry_falls_back_to_the_generator(tmp_path, sd):
    torch.save({"generator_ema": None, "generator": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "g.pt")
    assert load_dit(tmp_path / "g.pt")[1]["entry"] == "generator"
    with pytest.raises(CheckpointError, match=r"g\.pt.*'generator_ema' entry is a NoneType"):
        load_dit(tmp_path / "g.pt", use_ema=True)


def test_non_string_keys(tmp_path):
    _save_generator(tmp_path / "intkeys.pt", {0: torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"intkeys\.pt.*key 0 is a int"):
        load_dit(tmp_path / "intkeys.pt")


def test_two_keys_with_one_name(tmp_path, sd):
    entry = {f"model.{k}": v for k, v in sd.items()}
    entry["model._orig_mod.head.head.bias"] = sd["head.head.bias"]
    _save_generator(tmp_path / "twice.pt", entry)
    with pytest.raises(CheckpointError, match=r"twice\.pt.*'model\.head\.head\.bias' and "
                                              r"'model\._orig_mod\.head\.head\.bias' both map to 'head\.head\.bias'"):
        load_dit(tmp_path / "twice.pt")
    with pytest.raises(CheckpointError, match="both map to"):
        normalize_keys({"model.x": torch.zeros(1), "x": torch.zeros(1)})


def test_weights_of_the_wrong_rank(tmp_path, sd):
    bad = dict(sd, **{"text_embedding.0.weight": torch.zeros(5)})
    make_dit_folder(tmp_path / "wan", sd=bad)
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*text_embedding\.0\.weight "
                                              r"must be 2-D, got shape \(5,\)"):
        load_dit(tmp_path / "wan")


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.float8_e4m3fn])
def test_non_float_weights(tmp_path, sd, dtype):
    bad = dict(sd, **{"blocks.0.ffn.0.weight": sd["blocks.0.ffn.0.weight"].to(dtype)})
    make_dit_folder(tmp_path / "wan", sd=bad)
    with pytest.raises(CheckpointError, match=rf"(?s)diffusion_pytorch_model\.safetensors.*1 tensors of a dtype .*"
                                              rf"blocks\.0\.ffn\.0\.weight \({dtype}\)"):
        load_dit(tmp_path / "wan")


def test_dtype_argument_must_be_float(tmp_path):
    with pytest.raises(ValueError, match="dtype must be one of .*got torch.int32"):
        load_dit(make_dit_checkpoint(tmp_path / "sf.pt"), dtype=torch.int32)


def test_folder_with_one_checkpoint_keeps_the_choices(tmp_path, sd):
    """A folder holding one .pt is read with the same use_ema / trust_pickle as the file itself."""
    import argparse

    folder = tmp_path / "ckpt"
    folder.mkdir()
    torch.save({"generator_ema": {f"model.{k}": v for k, v in sd.items()},
                "generator": {f"model.{k}": v + 1 for k, v in sd.items()}, "args": argparse.Namespace(lr=1)},
               folder / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt.*--trust-checkpoint"):
        load_dit(folder)
    model, info = load_dit(folder, use_ema=False, trust_pickle=True)
    assert info["entry"] == "generator" and torch.equal(model.state_dict()[KEY], sd[KEY] + 1)


KEY = "blocks.1.ffn.0.weight"


# ---------------------------------------------------------------- pickles


class _RunsCode:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("how", ["os.system", "open"])
def test_pickle_that_runs_code_is_not_run(tmp_path, sd, how):
    marker = tmp_path / "ran"
    payload = _RunsCode(os.system, f"touch '{marker}'") if how == "os.system" else _RunsCode(open, str(marker), "w")
    _save_generator(tmp_path / "evil.pt", {f"model.{k}": v for k, v in sd.items()}, extra=payload)
    with pytest.raises(CheckpointError, match=r"evil\.pt") as err:
        load_dit(tmp_path / "evil.pt")
    assert not marker.exists(), "the pickle's code ran"
    if how == "os.system":  # a blocked call: say it would run code, and do not suggest trusting it
        assert "run code" in str(err.value) and "trust" not in str(err.value)
    with pytest.raises(CheckpointError, match=r"evil\.pt"):
        read_lora(tmp_path / "evil.pt")
    assert not marker.exists()


def test_trusted_pickle_of_a_missing_class(tmp_path, monkeypatch, sd):
    gone = types.ModuleType("flex_test_gone_module")

    class Settings:
        pass

    Settings.__module__, Settings.__qualname__ = gone.__name__, "Settings"
    gone.Settings = Settings
    monkeypatch.setitem(sys.modules, gone.__name__, gone)
    _save_generator(tmp_path / "cls.pt", {f"model.{k}": v for k, v in sd.items()}, config=Settings())
    monkeypatch.delitem(sys.modules, gone.__name__)
    with pytest.raises(CheckpointError, match=r"cls\.pt.*cannot be unpickled.*flex_test_gone_module"):
        load_dit(tmp_path / "cls.pt", trust_pickle=True)


# ---------------------------------------------------------------- LoRA


def _lora_file(path, sd, name="blocks.0.ffn.0", rank=2, fill=None, dtype=torch.float32):
    out_f, in_f = sd[f"{name}.weight"].shape
    a, b = torch.ones(rank, in_f, dtype=dtype), torch.ones(out_f, rank, dtype=dtype)
    if fill is not None:
        a[0, 0] = fill
    torch.save({"generator_lora": {f"base_model.model.{name}.lora_A.weight": a,
                                   f"base_model.model.{name}.lora_B.weight": b}}, path)
    return path


def test_rank_zero_lora(tmp_path, sd):
    path = _lora_file(tmp_path / "rank0.pt", sd, rank=0)
    with pytest.raises(CheckpointError, match=r"rank0\.pt.*blocks\.0\.ffn\.0 has rank 0"):
        read_lora(path)
    with pytest.raises(CheckpointError, match=r"rank0\.pt.*blocks\.0\.ffn\.0 has rank 0"):
        load_dit(make_dit_checkpoint(tmp_path / "base.pt"), lora=path)
    with pytest.raises(CheckpointError, match="x has rank 0"):
        merge_lora({"x.weight": torch.zeros(3, 2)}, {"x": (torch.zeros(0, 2), torch.zeros(3, 0))})


@pytest.mark.parametrize("alpha, scale, name", [
    (math.inf, 1.0, "lora_alpha"), (math.nan, 1.0, "lora_alpha"), (0.0, 1.0, "lora_alpha"), (-4.0, 1.0, "lora_alpha"),
    (None, math.nan, "lora_scale"), (None, -math.inf, "lora_scale"), (None, "2", "lora_scale"),
])
def test_non_finite_lora_factors(tmp_path, sd, alpha, scale, name):
    lora = _lora_file(tmp_path / "lora.pt", sd)
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        load_dit(tmp_path / "not_read_yet.pt", lora=lora, lora_alpha=alpha, lora_scale=scale)
    with pytest.raises(ValueError, match=f"{name} must be a finite number"):
        merge_lora(sd, read_lora(lora), alpha=alpha, scale=scale)


def test_non_finite_lora_weights(tmp_path, sd):
    lora = _lora_file(tmp_path / "nan.pt", sd, fill=math.nan)
    with pytest.raises(CheckpointError, match=r"nan\.pt.*blocks\.0\.ffn\.0\.weight is not finite"):
        load_dit(make_dit_checkpoint(tmp_path / "base.pt"), lora=lora)


def test_non_float_lora_weights(tmp_path, sd):
    lora = _lora_file(tmp_path / "int.pt", sd, dtype=torch.int64)
    with pytest.raises(CheckpointError, match=r"int\.pt.*blocks\.0\.ffn\.0\.lora_A \(torch\.int64\)"):
        read_lora(lora)
    w = {"x.weight": torch.zeros(3, 2, dtype=torch.int32)}
    with pytest.raises(CheckpointError, match=r"base weight x\.weight is torch\.int32"):
        merge_lora(w, {"x": (torch.ones(1, 2), torch.ones(3, 1))})


def test_two_adapters_for_one_module(tmp_path, sd):
    out_f, in_f = sd["blocks.0.ffn.0.weight"].shape
    pairs = {}
    for adapter in ("default", "other"):
        pairs[f"blocks.0.ffn.0.lora_A.{adapter}.weight"] = torch.ones(2, in_f)
        pairs[f"blocks.0.ffn.0.lora_B.{adapter}.weight"] = torch.ones(out_f, 2)
    torch.save(pairs, tmp_path / "two.pt")
    with pytest.raises(CheckpointError, match=r"two\.pt' has two lora_A weights for blocks\.0\.ffn\.0"):
        read_lora(tmp_path / "two.pt")


# ---------------------------------------------------------------- suggested options exist


def _cli_options():
    from flex import cli

    options, choices = set(), {}
    parsers = [cli.build_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                parsers.extend(action.choices.values())
            for opt in action.option_strings:
                options.add(opt)
                choices[opt] = action.choices
    return options, choices


def test_suggested_cli_options_exist():
    options, _ = _cli_options()
    import flex.loading

    init = Path(flex.loading.__file__)
    files = sorted(init.parent.glob("*.py")) if init.name == "__init__.py" else [init]
    source = "\n".join(p.read_text() for p in files)
    suggested = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", source))
    assert suggested, "the loading messages name CLI options (--trust-checkpoint, --weights, --preset)"
    assert suggested <= options, f"loading messages suggest options the CLI lacks: {sorted(suggested - options)}"


@pytest.mark.parametrize("ema, raw, use_ema, suggestion", [
    (False, True, True, "--weights generator"), (True, False, False, "--weights ema"),
])
def test_missing_entry_suggests_the_weights_option(tmp_path, ema, raw, use_ema, suggestion):
    _, choices = _cli_options()
    path = make_dit_checkpoint(tmp_path / "one.pt", ema=ema, raw=raw)
    with pytest.raises(CheckpointError) as err:
        read_state_dict(path, use_ema=use_ema)
    assert suggestion in str(err.value) and suggestion.split()[1] in choices["--weights"]
    assert "--ema" not in str(err.value) and "--no-ema" not in str(err.value)


# ---------------------------------------------------------------- other arguments and values


def test_non_finite_weights(tmp_path, sd):
    bad = dict(sd, **{"blocks.1.self_attn.q.weight": sd["blocks.1.self_attn.q.weight"].clone()})
    bad["blocks.1.self_attn.q.weight"][3, 4] = math.inf
    bad["head.modulation"] = torch.full_like(sd["head.modulation"], math.nan)
    make_dit_folder(tmp_path / "wan", sd=bad)
    with pytest.raises(CheckpointError, match=r"(?s)diffusion_pytorch_model\.safetensors.*2 tensors hold inf or NaN: "
                                              r"blocks\.1\.self_attn\.q\.weight, head\.modulation"):
        load_dit(tmp_path / "wan")


def test_use_ema_must_be_a_choice(tmp_path):
    with pytest.raises(ValueError, match="use_ema must be None.*got 'ema'"):
        load_dit(make_dit_checkpoint(tmp_path / "sf.pt"), use_ema="ema")


def test_lora_path_is_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"LoRA file .* is a folder"):
        read_lora(tmp_path)
