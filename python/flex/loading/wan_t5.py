"""Wan's own T5 encoder file (``models_t5_umt5-xxl-enc-bf16.pth``) as a transformers ``UMT5EncoderModel``.

Wan's ``T5Encoder`` (wan/modules/t5.py, umt5-xxl with ``shared_pos=False``) and transformers'
UMT5 encoder compute the same function: pre-norm blocks with T5's RMS layer norm (eps 1e-6,
no mean, no bias), unscaled multi-head attention plus a per-layer bidirectional relative
position bias (same bucketing, max distance 128), a gated-GELU(tanh) FFN, a final norm. Only
the names differ:

    token_embedding.weight                    shared.weight (= encoder.embed_tokens.weight)
    blocks.i.norm1.weight                     encoder.block.i.layer.0.layer_norm.weight
    blocks.i.attn.{q,k,v,o}.weight            encoder.block.i.layer.0.SelfAttention.{q,k,v,o}.weight
    blocks.i.pos_embedding.embedding.weight   encoder.block.i.layer.0.SelfAttention.relative_attention_bias.weight
    blocks.i.norm2.weight                     encoder.block.i.layer.1.layer_norm.weight
    blocks.i.ffn.gate.0.weight  (GELU side)   encoder.block.i.layer.1.DenseReluDense.wi_0.weight
    blocks.i.ffn.fc1.weight     (linear side) encoder.block.i.layer.1.DenseReluDense.wi_1.weight
    blocks.i.ffn.fc2.weight                   encoder.block.i.layer.1.DenseReluDense.wo.weight
    norm.weight                               encoder.final_layer_norm.weight

The sizes come from the tensor shapes; the two numbers the file cannot tell are constants of
Wan's code (max distance 128, eps 1e-6).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .architecture import check_state_dict
from .errors import CheckpointError
from .wan_dir import read_original_part, rename_keys

MAX_DISTANCE = 128  # T5RelativeEmbedding's max_dist in Wan's t5.py
LAYER_NORM_EPS = 1e-6  # T5LayerNorm's eps in Wan's t5.py
LAYOUT = "Wan's T5 encoder layout (token_embedding, blocks.N.{norm1,attn,norm2,ffn,pos_embedding}, norm)"
_BLOCK = r"blocks\.(\d+)\."
_LAYER0, _LAYER1 = r"encoder.block.\1.layer.0.", r"encoder.block.\1.layer.1."
RULES = (
    (r"token_embedding\.weight", ("shared.weight", "encoder.embed_tokens.weight")),
    (r"norm\.weight", "encoder.final_layer_norm.weight"),
    (_BLOCK + r"norm1\.weight", _LAYER0 + "layer_norm.weight"),
    (_BLOCK + r"attn\.([qkvo])\.weight", _LAYER0 + r"SelfAttention.\2.weight"),
    (_BLOCK + r"pos_embedding\.embedding\.weight", _LAYER0 + "SelfAttention.relative_attention_bias.weight"),
    (_BLOCK + r"norm2\.weight", _LAYER1 + "layer_norm.weight"),
    (_BLOCK + r"ffn\.gate\.0\.weight", _LAYER1 + "DenseReluDense.wi_0.weight"),
    (_BLOCK + r"ffn\.fc1\.weight", _LAYER1 + "DenseReluDense.wi_1.weight"),
    (_BLOCK + r"ffn\.fc2\.weight", _LAYER1 + "DenseReluDense.wo.weight"),
)


def _shape(sd: dict, key: str, source: str, ndim: int) -> tuple:
    if key not in sd:
        raise CheckpointError(f"{source!r} is not in {LAYOUT}: it has no {key!r}")
    shape = tuple(sd[key].shape)
    if len(shape) != ndim:
        raise CheckpointError(f"{source!r}: {key!r} has shape {shape}, expected {ndim} dimensions")
    return shape


def umt5_config(sd: dict, source: str):
    """The ``UMT5Config`` of a state dict in Wan's T5 encoder layout (sizes read from the shapes)."""
    from transformers import UMT5Config

    if "pos_embedding.embedding.weight" in sd:
        raise CheckpointError(f"{source!r} shares one relative position table across layers (a T5, shared_pos=True); "
                              f"Wan2.1's umt5-xxl has one per layer")
    vocab, dim = _shape(sd, "token_embedding.weight", source, 2)
    dim_attn = _shape(sd, "blocks.0.attn.q.weight", source, 2)[0]
    dim_ffn = _shape(sd, "blocks.0.ffn.fc1.weight", source, 2)[0]
    num_buckets, num_heads = _shape(sd, "blocks.0.pos_embedding.embedding.weight", source, 2)
    if dim_attn % num_heads:
        raise CheckpointError(f"{source!r}: attention width {dim_attn} is not a multiple of {num_heads} heads")
    num_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks.") and k.split(".")[1].isdigit())
    return UMT5Config(
        vocab_size=vocab, d_model=dim, d_kv=dim_attn // num_heads, d_ff=dim_ffn, num_layers=num_layers,
        num_decoder_layers=num_layers, num_heads=num_heads, relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=MAX_DISTANCE, feed_forward_proj="gated-gelu",
        layer_norm_epsilon=LAYER_NORM_EPS, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def wan_t5_to_umt5(sd: dict, source: str) -> dict:
    """Wan T5 encoder names -> ``UMT5EncoderModel`` names (the embedding goes to both tied names)."""
    return rename_keys(sd, RULES, source, LAYOUT)


def load_wan_t5(path, dtype: torch.dtype | None = None):
    """``UMT5EncoderModel`` (eval, no grad, on the CPU) from Wan's ``models_t5_umt5-xxl-enc-bf16.pth``.

    Strict: every weight of the model comes from the file and every tensor in the file is used.
    ``dtype`` None keeps the file's (bf16 for the released file).
    """
    from transformers import UMT5EncoderModel

    source = str(Path(path))
    original = read_original_part(path, "T5 encoder")
    config = umt5_config(original, source)
    sd = wan_t5_to_umt5(original, source)
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    what = (f"UMT5EncoderModel (mapped from {LAYOUT}: d_model {config.d_model}, {config.num_layers} layers, "
            f"{config.num_heads} heads)")
    check_state_dict(model, sd, source, what)
    model.load_state_dict(sd, strict=True, assign=True)
    model.set_input_embeddings(model.shared)  # one embedding for both tied names, as transformers ties them
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)
