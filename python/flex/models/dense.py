"""The dense twin of the cached model: the whole sequence through plain attention.

``dense_forward`` runs every frame of a sequence at once through the same blocks as the
cached pass, with an explicit [F, F] frame mask, explicit query / key positions and a RoPE
per query frame. Norms and RoPE are computed here independently of flex.ops (Wan's complex
number form, float64 angles), so "cached rollout == dense recompute" tests tie the kernels,
the ring cache and the positions to the definitions.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..cache import TextCache
from ..rope import Rope3D


def dense_forward(
    model,
    x: torch.Tensor,
    timestep,
    text: TextCache | torch.Tensor,
    mask: torch.Tensor | None = None,
    rope: Rope3D | Sequence[Rope3D] | None = None,
    *,
    query_pos: torch.Tensor | None = None,
    key_pos: torch.Tensor | None = None,
    scale: float | Sequence[float] | None = None,
) -> torch.Tensor:
    """The whole sequence x [B, F, C, H, W] through plain attention with an explicit mask.

    mask [F, F] bool: query frame a may see key frame b (default: all). Positions default
    to absolute frame indices; ``query_pos`` [F] and ``key_pos`` [F] or [F, F] (the key
    position of frame b as seen by query frame a) override them, and ``rope`` / ``scale``
    may be given per query frame -- enough to express any chunk-wise cached rollout
    (sliding windows, re-indexed positions, a RoPE scale that changes over time).
    Norms and RoPE are computed here independently of flex.ops (Wan's complex-number form).
    """
    model._check_latents(x)
    b, n, _, h, w = x.shape
    _, ph, pw = model.config.patch_size
    gh, gw = h // ph, w // pw
    tpf = gh * gw
    dev = x.device
    mask = torch.ones(n, n, dtype=torch.bool, device=dev) if mask is None else mask.to(dev, torch.bool)
    if mask.shape != (n, n):
        raise ValueError(f"mask must be [F, F] = [{n}, {n}], got {tuple(mask.shape)}")
    ropes = list(rope) if isinstance(rope, (list, tuple)) else [rope or model.default_rope()] * n
    if len(ropes) != n:
        raise ValueError(f"rope must be one Rope3D or one per frame ({n}), got {len(ropes)}")
    scales = list(scale) if isinstance(scale, (list, tuple)) else [scale] * n
    scales = [model.head_dim ** -0.5 if s is None else float(s) for s in scales]
    qp = torch.arange(n, device=dev) if query_pos is None else torch.as_tensor(query_pos, device=dev)
    kp = qp if key_pos is None else torch.as_tensor(key_pos, device=dev)
    kp = kp.expand(n, n) if kp.dim() == 1 else kp
    if qp.shape != (n,) or kp.shape != (n, n):
        raise ValueError(f"query_pos must be [F] and key_pos [F] or [F, F] with F = {n}")

    # Group query frames that see the same keys the same way (one group in the plain case).
    groups: dict = {}
    for a in range(n):
        key = (id(ropes[a]), tuple(kp[a].tolist()), tuple(mask[a].tolist()), scales[a])
        groups.setdefault(key, []).append(a)
    all_tok = torch.arange(n * tpf, device=dev)
    token_frame, hh, ww = all_tok // tpf, (all_tok // gw) % gh, all_tok % gw
    sdt = model.stream_dtype if model.stream_dtype == torch.float64 else torch.float32

    def angles(r: Rope3D, t_pos, tok):
        """[T, D/2] float64 rotation angles of tokens ``tok`` at temporal positions t_pos [T]."""
        return torch.cat((
            t_pos.to(torch.float64)[:, None] * r.thetas_t.to(dev)[None],
            hh[tok].to(torch.float64)[:, None] * r.thetas_h.to(dev)[None],
            ww[tok].to(torch.float64)[:, None] * r.thetas_w.to(dev)[None]), dim=1)

    def apply_rope(z, ang):
        zc = torch.view_as_complex(z.to(torch.float64).reshape(*z.shape[:-1], -1, 2))
        rot = torch.polar(torch.ones_like(ang), ang)[None, :, None, :]
        return torch.view_as_real(zc * rot).flatten(-2).to(sdt)

    def attend(i, attn, q, k, v):
        qn = attn.norm_q(q.flatten(2)).view_as(q)
        kn = attn.norm_k(k.flatten(2)).view_as(k)
        out = torch.zeros(q.shape, dtype=sdt, device=dev)
        for (_, _, _, sc), frames in groups.items():
            a0 = frames[0]
            r = ropes[a0]
            q_tok = torch.cat([torch.arange(a * tpf, (a + 1) * tpf, device=dev) for a in frames])
            qr = apply_rope(qn[:, q_tok], angles(r, qp[token_frame[q_tok]], q_tok))
            kr = apply_rope(kn, angles(r, kp[a0][token_frame], all_tok))
            logits = torch.einsum("bqhd,bkhd->bhqk", qr, kr) * sc
            visible = mask[a0][token_frame]  # [Tk]
            logits = logits.masked_fill(~visible[None, None, None, :], float("-inf"))
            probs = torch.softmax(logits, dim=-1).nan_to_num(0.0)
            out[:, q_tok] = torch.einsum("bhqk,bkhd->bqhd", probs, v.to(sdt))
        return out.to(q.dtype)

    return model.forward_with_attention(x, timestep, text, attend)




__all__ = ["dense_forward"]
