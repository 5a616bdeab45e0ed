"""A direct implementation of Wan2.1's original T5 encoder and VAE, reading state dicts in Wan's key layout.

Written from the math of Wan's wan/modules/t5.py and wan/modules/vae.py, independently of
transformers and diffusers, so tests can check that the key mappings in flex.loading put
every original tensor where it computes the same function. Also: the original layouts'
names and shapes at any (tiny) size, and random weights in them.

The VAE is computed on the whole clip at once. Wan decodes (and encodes) chunk by chunk with
a cache of each causal conv's last two input frames, which is the same as one causal conv
over the whole clip, except that its temporal resamplers treat the first frame on its own:
upsampling passes frame 0 through as one frame and runs the time conv on frames 1.. only;
downsampling keeps frame 0 and runs the stride-2 time conv (no padding) over all frames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

T5_MAX_DISTANCE = 128


# ---------------------------------------------------------------- layouts and random weights


def t5_shapes(vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets) -> dict:
    """Names and shapes of Wan's T5Encoder (shared_pos=False, as umt5-xxl)."""
    shapes = {"token_embedding.weight": (vocab, dim), "norm.weight": (dim,)}
    for i in range(num_layers):
        b = f"blocks.{i}."
        shapes.update({
            b + "norm1.weight": (dim,), b + "norm2.weight": (dim,),
            b + "attn.q.weight": (dim_attn, dim), b + "attn.k.weight": (dim_attn, dim),
            b + "attn.v.weight": (dim_attn, dim), b + "attn.o.weight": (dim, dim_attn),
            b + "ffn.gate.0.weight": (dim_ffn, dim), b + "ffn.fc1.weight": (dim_ffn, dim),
            b + "ffn.fc2.weight": (dim, dim_ffn),
            b + "pos_embedding.embedding.weight": (num_buckets, num_heads),
        })
    return shapes


def _resblock_shapes(prefix, cin, cout) -> dict:
    shapes = {
        prefix + "residual.0.gamma": (cin, 1, 1, 1), prefix + "residual.2.weight": (cout, cin, 3, 3, 3),
        prefix + "residual.2.bias": (cout,), prefix + "residual.3.gamma": (cout, 1, 1, 1),
        prefix + "residual.6.weight": (cout, cout, 3, 3, 3), prefix + "residual.6.bias": (cout,),
    }
    if cin != cout:
        shapes.update({prefix + "shortcut.weight": (cout, cin, 1, 1, 1), prefix + "shortcut.bias": (cout,)})
    return shapes


def _middle_shapes(prefix, c) -> dict:
    return {
        **_resblock_shapes(prefix + "middle.0.", c, c), **_resblock_shapes(prefix + "middle.2.", c, c),
        prefix + "middle.1.norm.gamma": (c, 1, 1), prefix + "middle.1.to_qkv.weight": (3 * c, c, 1, 1),
        prefix + "middle.1.to_qkv.bias": (3 * c,), prefix + "middle.1.proj.weight": (c, c, 1, 1),
        prefix + "middle.1.proj.bias": (c,),
    }


def vae_shapes(dim, z_dim, dim_mult, num_res_blocks, temperal_downsample) -> dict:
    """Names and shapes of Wan's WanVAE_ (attn_scales empty, as Wan2.1's VAE)."""
    shapes = {"encoder.conv1.weight": (dim, 3, 3, 3, 3), "encoder.conv1.bias": (dim,)}
    dims = [dim * m for m in [1] + list(dim_mult)]
    n = 0
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
        for _ in range(num_res_blocks):
            shapes.update(_resblock_shapes(f"encoder.downsamples.{n}.", cin, cout))
            cin, n = cout, n + 1
        if i != len(dim_mult) - 1:
            p = f"encoder.downsamples.{n}."
            shapes.update({p + "resample.1.weight": (cout, cout, 3, 3), p + "resample.1.bias": (cout,)})
            if temperal_downsample[i]:
                shapes.update({p + "time_conv.weight": (cout, cout, 3, 1, 1), p + "time_conv.bias": (cout,)})
            n += 1
    top = dims[-1]
    shapes.update(_middle_shapes("encoder.", top))
    shapes.update({"encoder.head.0.gamma": (top, 1, 1, 1), "encoder.head.2.weight": (2 * z_dim, top, 3, 3, 3),
                   "encoder.head.2.bias": (2 * z_dim,)})
    shapes.update({"conv1.weight": (2 * z_dim, 2 * z_dim, 1, 1, 1), "conv1.bias": (2 * z_dim,),
                   "conv2.weight": (z_dim, z_dim, 1, 1, 1), "conv2.bias": (z_dim,)})
    up_dims = [dim * m for m in [dim_mult[-1]] + list(dim_mult)[::-1]]
    temperal_upsample = list(temperal_downsample)[::-1]
    shapes.update({"decoder.conv1.weight": (up_dims[0], z_dim, 3, 3, 3), "decoder.conv1.bias": (up_dims[0],)})
    shapes.update(_middle_shapes("decoder.", up_dims[0]))
    n = 0
    for i, (cin, cout) in enumerate(zip(up_dims[:-1], up_dims[1:])):
        if i > 0:
            cin //= 2  # the spatial upsampler before this stage halved the channels
        for _ in range(num_res_blocks + 1):
            shapes.update(_resblock_shapes(f"decoder.upsamples.{n}.", cin, cout))
            cin, n = cout, n + 1
        if i != len(dim_mult) - 1:
            p = f"decoder.upsamples.{n}."
            shapes.update({p + "resample.1.weight": (cout // 2, cout, 3, 3), p + "resample.1.bias": (cout // 2,)})
            if temperal_upsample[i]:
                shapes.update({p + "time_conv.weight": (2 * cout, cout, 3, 1, 1), p + "time_conv.bias": (2 * cout,)})
            n += 1
    last = up_dims[-1]
    shapes.update({"decoder.head.0.gamma": (last, 1, 1, 1), "decoder.head.2.weight": (3, last, 3, 3, 3),
                   "decoder.head.2.bias": (3,)})
    return shapes


def random_weights(shapes: dict, seed: int = 0, head_scale: float = 1.0) -> dict:
    """Random float32 tensors: gains near 1, matrices / kernels scaled by 1/sqrt(fan-in), embeddings N(0, 1).

    ``head_scale`` scales the VAE's output conv (keeps decoded values mostly inside [-1, 1], where
    the final clamp does not hide differences).
    """
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in shapes.items():
        x = torch.randn(shape, generator=gen)
        if name.endswith(("gamma", "norm1.weight", "norm2.weight")) or name == "norm.weight":
            x = 1 + 0.2 * x
        elif name.endswith("bias"):
            x = 0.1 * x
        elif "embedding" not in name:
            x = x / math.sqrt(math.prod(shape[1:]))
        if name.startswith("decoder.head.2."):
            x = head_scale * x
        sd[name] = x
    return sd


# ---------------------------------------------------------------- T5 encoder


def _t5_norm(x, weight, eps=1e-6):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _t5_buckets(length: int, num_buckets: int, max_dist: int = T5_MAX_DISTANCE) -> torch.Tensor:
    """[length, length] bidirectional relative-position buckets (key position minus query position)."""
    rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    bucket = (rel > 0).long() * half
    dist = rel.abs()
    log_bucket = exact + (torch.log(dist.float().clamp(min=1) / exact) / math.log(max_dist / exact)
                          * (half - exact)).long()
    return bucket + torch.where(dist < exact, dist, log_bucket.clamp(max=half - 1))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def t5_encode(sd: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Wan's T5Encoder forward: ids, mask [B, L] -> [B, L, dim] (in eval mode: no dropout)."""
    x = sd["token_embedding.weight"][ids]
    b, length = ids.shape
    num_layers = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    blocked = (mask == 0)[:, None, None, :]
    for i in range(num_layers):
        p = f"blocks.{i}."
        table = sd[p + "pos_embedding.embedding.weight"]  # [buckets, heads]
        heads = table.shape[1]
        bias = table[_t5_buckets(length, table.shape[0])].permute(2, 0, 1)[None]  # [1, heads, L, L]
        h = _t5_norm(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(b, length, heads, -1) for n in "qkv")
        scores = torch.einsum("bqhc,bkhc->bhqk", q, k) + bias  # T5 does not scale by 1/sqrt(head_dim)
        scores = scores.masked_fill(blocked, torch.finfo(scores.dtype).min)
        attn = torch.einsum("bhqk,bkhc->bqhc", scores.softmax(-1), v).reshape(b, length, -1)
        x = x + F.linear(attn, sd[p + "attn.o.weight"])
        h = _t5_norm(x, sd[p + "norm2.weight"])
        gated = F.linear(h, sd[p + "ffn.fc1.weight"]) * _gelu_tanh(F.linear(h, sd[p + "ffn.gate.0.weight"]))
        x = x + F.linear(gated, sd[p + "ffn.fc2.weight"])
    return _t5_norm(x, sd["norm.weight"])


# ---------------------------------------------------------------- VAE


def _causal_conv(x, sd, name, stride_t=1):
    """Wan's CausalConv3d: all temporal padding (2 * pad) in front, spatial padding on both sides."""
    w, b = sd[name + ".weight"], sd[name + ".bias"]
    kt, kh, kw = w.shape[2:]
    front = 0 if stride_t > 1 else 2 * (kt // 2)  # the stride-2 time conv is unpadded
    x = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2, front, 0))
    return F.conv3d(x, w, b, stride=(stride_t, 1, 1))


def _rms(x, gamma):
    """Wan's RMS_norm: unit L2 norm over channels, times sqrt(channels) and the gain."""
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12) * math.sqrt(x.shape[1]) * gamma


def _per_frame(x, fn):
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


def _resblock(x, sd, p):
    short = _causal_conv(x, sd, p + "shortcut") if p + "shortcut.weight" in sd else x
    h = _causal_conv(F.silu(_rms(x, sd[p + "residual.0.gamma"])), sd, p + "residual.2")
    h = _causal_conv(F.silu(_rms(h, sd[p + "residual.3.gamma"])), sd, p + "residual.6")
    return h + short


def _attention(x, sd, p):
    """Single-head attention over the pixels of each frame."""
    def frame(f):
        n, c, h, w = f.shape
        qkv = F.conv2d(_rms(f, sd[p + "norm.gamma"]), sd[p + "to_qkv.weight"], sd[p + "to_qkv.bias"])
        q, k, v = qkv.flatten(2).transpose(1, 2).split(c, dim=-1)  # [n, hw, c] each
        out = ((q @ k.transpose(1, 2)) / math.sqrt(c)).softmax(-1) @ v
        out = out.transpose(1, 2).reshape(n, c, h, w)
        return F.conv2d(out, sd[p + "proj.weight"], sd[p + "proj.bias"])
    return x + _per_frame(x, frame)


def _middle(x, sd, p):
    x = _resblock(x, sd, p + "middle.0.")
    return _resblock(_attention(x, sd, p + "middle.1."), sd, p + "middle.2.")


def _head(x, sd, p):
    return _causal_conv(F.silu(_rms(x, sd[p + "head.0.gamma"])), sd, p + "head.2")


def _upsample(x, sd, p):
    if p + "time_conv.weight" in sd and x.shape[2] > 1:
        rest = _causal_conv(x[:, :, 1:], sd, p + "time_conv")  # [b, 2c, t - 1, h, w]
        b, c2, t, h, w = rest.shape
        # channels [0, c) are each frame's first output frame, [c, 2c) its second
        rest = rest.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)
        x = torch.cat([x[:, :, :1], rest], dim=2)
    w, bias = sd[p + "resample.1.weight"], sd[p + "resample.1.bias"]
    return _per_frame(x, lambda f: F.conv2d(F.interpolate(f, scale_factor=2.0, mode="nearest-exact"), w, bias,
                                            padding=1))


def _downsample(x, sd, p):
    w, bias = sd[p + "resample.1.weight"], sd[p + "resample.1.bias"]
    x = _per_frame(x, lambda f: F.conv2d(F.pad(f, (0, 1, 0, 1)), w, bias, stride=2))
    if p + "time_conv.weight" in sd and x.shape[2] > 1:
        x = torch.cat([x[:, :, :1], _causal_conv(x, sd, p + "time_conv", stride_t=2)], dim=2)
    return x


def _stage_blocks(sd, prefix):
    return sorted({int(k.split(".")[2]) for k in sd if k.startswith(prefix)})


def vae_decode(sd: dict, z: torch.Tensor) -> torch.Tensor:
    """Wan's WanVAE_.decode (after the latent de-normalisation) then WanVAE's clamp:
    z [B, z_dim, F, h, w] -> video [B, 3, 4F - 3, 8h, 8w] in [-1, 1]."""
    x = _causal_conv(_causal_conv(z, sd, "conv2"), sd, "decoder.conv1")
    x = _middle(x, sd, "decoder.")
    for n in _stage_blocks(sd, "decoder.upsamples."):
        p = f"decoder.upsamples.{n}."
        x = _upsample(x, sd, p) if p + "resample.1.weight" in sd else _resblock(x, sd, p)
    return _head(x, sd, "decoder.").clamp(-1, 1)


def vae_encode_mean(sd: dict, video: torch.Tensor) -> torch.Tensor:
    """Wan's WanVAE_.encode before the normalisation: video [B, 3, 1 + 4k, H, W] -> mu [B, z_dim, 1 + k, H/8, W/8]."""
    x = _causal_conv(video, sd, "encoder.conv1")
    for n in _stage_blocks(sd, "encoder.downsamples."):
        p = f"encoder.downsamples.{n}."
        x = _downsample(x, sd, p) if p + "resample.1.weight" in sd else _resblock(x, sd, p)
    x = _head(_middle(x, sd, "encoder."), sd, "encoder.")
    return _causal_conv(x, sd, "conv1").chunk(2, dim=1)[0]
