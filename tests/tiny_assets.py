"""Tiny random stand-ins for the real weights, built offline in a temporary folder.

``make_wan_dir(root)`` writes a Diffusers-format Wan folder (text_encoder/, tokenizer/, vae/)
whose parts have the real classes and file formats but a few thousand parameters each;
``make_dit_checkpoint(path)`` writes a Self Forcing style generator checkpoint
({"generator_ema": {"model.<name>": tensor}, "generator": ...}) of the model's "tiny" preset.
Nothing here touches the network.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch

TEXT_DIM = 32  # d_model of the tiny UMT5; the tiny DiT's text_dim must match
WORDS = (
    "a cat dog runs jumps on the beach in snow red blue car city night sunset over ocean waves "
    "slowly fast camera pans forest mountain river bird flies sky"
).split()


def make_tokenizer(folder) -> None:
    """A WordLevel tokenizer (pad 0, eos 1, unk 2) saved as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=512,
    )
    fast.save_pretrained(str(folder))


def make_text_encoder(folder, seed: int = 0) -> None:
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    cfg = UMT5Config(
        vocab_size=64, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    UMT5EncoderModel(cfg).eval().save_pretrained(str(folder))


def make_vae(folder, seed: int = 0) -> None:
    """AutoencoderKLWan with the real structure (8x spatial, 4x temporal) and base_dim 8."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1, attn_scales=[],
        temperal_downsample=[False, True, True],
    )
    vae.eval().save_pretrained(str(folder))


def make_wan_dir(root) -> Path:
    """<root> with text_encoder/, tokenizer/, vae/ and a model_index.json."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    make_tokenizer(root / "tokenizer")
    make_text_encoder(root / "text_encoder")
    make_vae(root / "vae")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline",
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }))
    return root


def tiny_dit_state_dict(seed: int = 0) -> dict:
    """Random weights of the model's "tiny" preset (text_dim = TEXT_DIM), original Wan names."""
    from flex.models.wan import CausalWanModel

    torch.manual_seed(seed)
    model = CausalWanModel("tiny")
    assert model.config.text_dim == TEXT_DIM, "the tiny DiT must read the tiny UMT5's embeddings"
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def make_dit_checkpoint(path, seed: int = 0, ema: bool = True, raw: bool = True, fsdp: bool = False) -> Path:
    """A Self Forcing style generator checkpoint: {"generator_ema": {"model.<name>": w}, "generator": ...}.

    ``raw`` weights are the EMA ones plus 1 (so tests can tell which entry was loaded);
    ``fsdp`` inserts "_fsdp_wrapped_module." like FSDP-saved EMA shadows.
    """
    sd = tiny_dit_state_dict(seed)
    mid = "_fsdp_wrapped_module." if fsdp else ""
    ckpt = {}
    if ema:
        ckpt["generator_ema"] = {f"model.{mid}{k}": v for k, v in sd.items()}
    if raw:
        ckpt["generator"] = {f"model.{k}": v + 1 for k, v in sd.items()}
    path = Path(path)
    torch.save(ckpt, path)
    return path


def make_dit_folder(folder, sd: dict | None = None, config=None) -> Path:
    """A Wan2.1 base folder: diffusion_pytorch_model.safetensors (of ``sd``, default the tiny
    weights) and, when given, config.json (``config``: a JSON value, or a str written as is)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tiny_dit_state_dict() if sd is None else sd, str(folder / "diffusion_pytorch_model.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder


OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "DIFFUSERS_OFFLINE")
for _name in OFFLINE_ENV:  # before transformers / huggingface_hub read them (import time)
    os.environ.setdefault(_name, "1")


def forbid_network(monkeypatch) -> list:
    """Make every outgoing socket connection fail; returns the list of attempted addresses."""
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted during a test: {address!r}")

    def refuse_create(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(f"network access attempted during a test: {address!r}")

    for name in OFFLINE_ENV:
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)
    return attempts
