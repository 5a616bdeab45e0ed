"""AMT-S, the frame-interpolation network VBench's motion smoothness uses, in plain torch.

AMT ("All-Pairs Multi-Field Transforms for Efficient Frame Interpolation", Li et al., CVPR
2023) predicts the frame at time t between two frames: a RAFT-style small feature encoder
gives all-pairs correlation volumes (both directions, 4 pooled levels); an IFRNet-style
pyramid encoder/decoder estimates bidirectional flows coarse to fine, each level refined by
an update block that looks the correlations up around the flow targets; the finest decoder
emits ``num_flows`` flow pairs with blend masks and residuals, and the warped candidates are
merged by a small conv block. Written from the paper and from the public code (MCG-NKU/AMT,
networks/AMT-S.py and networks/blocks/{feat_enc,raft,ifrnet,multi_flow}.py, utils/flow_utils.py,
commit 70f988fbfc0d3d458beba1ee49caf876e57968fe; VBench vendors the same files). Module and
parameter names follow that code so the released ``amt-s.pth`` (``{"state_dict": ...}``) loads
by name; ``AMTS()(img0, img1, t)`` takes RGB in 0..1, [B, 3, H, W] with H and W multiples of 16.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def warp(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: out(p) = img(p + flow(p)), bilinear, border padding (AMT's flow_utils.warp)."""
    b, _, h, w = flow.shape
    xs = torch.linspace(-1.0, 1.0, w).view(1, 1, 1, w).expand(b, -1, h, -1)
    ys = torch.linspace(-1.0, 1.0, h).view(1, 1, h, 1).expand(b, -1, -1, w)
    base = torch.cat([xs, ys], 1).to(img)
    step = torch.cat([flow[:, :1] / ((w - 1.0) / 2.0), flow[:, 1:2] / ((h - 1.0) / 2.0)], 1)
    grid = (base + step).permute(0, 2, 3, 1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pixel_grid(b: int, h: int, w: int, device) -> torch.Tensor:
    """[B, 2, H, W] pixel coordinates (x, y)."""
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([x, y]).float()[None].repeat(b, 1, 1, 1)


def sample_pixels(img: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """grid_sample at pixel coordinates [..., 2] (x, y), zeros outside, align_corners=True."""
    h, w = img.shape[-2:]
    x, y = coords.split([1, 1], dim=-1)
    return F.grid_sample(img, torch.cat([2 * x / (w - 1) - 1, 2 * y / (h - 1) - 1], -1), align_corners=True)


class Correlation:
    """All-pairs correlation of two feature maps, both directions, as pyramids of ``levels``;
    ``lookup(c0, c1)`` samples a (2r+1)^2 window per level around target coordinates."""

    def __init__(self, f0: torch.Tensor, f1: torch.Tensor, levels: int, radius: int):
        b, c, h, w = f0.shape
        vol = (f0.view(b, c, h * w).transpose(1, 2) @ f1.view(b, c, h * w)).view(b, h, w, 1, h, w)
        vol = vol / torch.sqrt(torch.tensor(c).float())
        fwd = vol.reshape(b * h * w, 1, h, w)
        bwd = vol.permute(0, 4, 5, 3, 1, 2).reshape(b * h * w, 1, h, w)
        self.radius, self.pyramids = radius, [[fwd], [bwd]]
        for _ in range(levels - 1):
            for pyr in self.pyramids:
                pyr.append(F.avg_pool2d(pyr[-1], 2, stride=2))

    def lookup(self, coords0: torch.Tensor, coords1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.radius
        d = torch.linspace(-r, r, 2 * r + 1, device=coords0.device)
        delta = torch.stack(torch.meshgrid(d, d, indexing="ij"), -1).view(1, 2 * r + 1, 2 * r + 1, 2)
        outs = []
        for pyr, coords in zip(self.pyramids, (coords0, coords1)):
            b, _, h, w = coords.shape
            centre = coords.permute(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
            levels = [sample_pixels(vol, centre / 2 ** i + delta).view(b, h, w, -1) for i, vol in enumerate(pyr)]
            outs.append(torch.cat(levels, -1).permute(0, 3, 1, 2).contiguous().float())
        return outs[0], outs[1]


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 convolutions with instance norm and a residual path."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // 4
        self.conv1 = nn.Conv2d(cin, mid, 1)
        self.conv2 = nn.Conv2d(mid, mid, 3, padding=1, stride=stride)
        self.conv3 = nn.Conv2d(mid, cout, 1)
        self.norm1, self.norm2, self.norm3 = nn.InstanceNorm2d(mid), nn.InstanceNorm2d(mid), nn.InstanceNorm2d(cout)
        self.downsample = None if stride == 1 else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride),
                                                                 nn.InstanceNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.norm1(self.conv1(x)))
        y = F.relu(self.norm2(self.conv2(y)))
        y = F.relu(self.norm3(self.conv3(y)))
        return F.relu((x if self.downsample is None else self.downsample(x)) + y)


class SmallEncoder(nn.Module):
    """RAFT's small feature encoder (1/8 resolution), instance norm."""

    def __init__(self, out_dim: int = 84):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 7, stride=2, padding=3)
        self.norm1 = nn.InstanceNorm2d(32)
        self.layer1 = nn.Sequential(Bottleneck(32, 32, 1), Bottleneck(32, 32, 1))
        self.layer2 = nn.Sequential(Bottleneck(32, 64, 2), Bottleneck(64, 64, 1))
        self.layer3 = nn.Sequential(Bottleneck(64, 96, 2), Bottleneck(96, 96, 1))
        self.conv2 = nn.Conv2d(96, out_dim, 1)

    def forward(self, x):
        x = F.relu(self.norm1(self.conv1(x)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


def conv_prelu(cin: int, cout: int, k: int = 3, stride: int = 1, pad: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad), nn.PReLU(cout))


class ResBlock(nn.Module):
    """IFRNet's residual block: the last ``side`` channels get extra convolutions twice."""

    def __init__(self, ch: int, side: int):
        super().__init__()
        self.side = side
        self.conv1, self.conv2 = conv_prelu(ch, ch), conv_prelu(side, side)
        self.conv3, self.conv4 = conv_prelu(ch, ch), conv_prelu(side, side)
        self.conv5 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.prelu = nn.PReLU(ch)

    def forward(self, x):
        s = self.side
        out = self.conv1(x)
        out = self.conv3(torch.cat([out[:, :-s], self.conv2(out[:, -s:])], 1))
        out = self.conv5(torch.cat([out[:, :-s], self.conv4(out[:, -s:])], 1))
        return self.prelu(x + out)


class PyramidEncoder(nn.Module):
    """Four stride-2 levels (attributes pyramid1..4), each conv-PReLU twice."""

    def __init__(self, channels):
        super().__init__()
        self.levels = len(channels)
        for i, (cin, cout) in enumerate(zip([3, *channels[:-1]], channels), 1):
            self.register_module(f"pyramid{i}", nn.Sequential(conv_prelu(cin, cout, 3, 2, 1), conv_prelu(cout, cout)))

    def forward(self, x):
        feats = []
        for i in range(1, self.levels + 1):
            x = getattr(self, f"pyramid{i}")(x)
            feats.append(x)
        return feats


def decoder_block(cin: int, mid: int, cout: int, side: int) -> nn.Sequential:
    """conv-PReLU to ``mid`` channels, a ResBlock, a 2x transposed convolution to ``cout``."""
    return nn.Sequential(conv_prelu(cin, mid), ResBlock(mid, side), nn.ConvTranspose2d(mid, cout, 4, 2, 1))


class InitDecoder(nn.Module):
    """Coarsest level: both features and t -> flows to both frames and the t-feature, 2x up."""

    def __init__(self, ch: int, out: int, side: int):
        super().__init__()
        self.convblock = decoder_block(2 * ch + 1, 2 * ch, out + 4, side)

    def forward(self, f0, f1, t):
        out = self.convblock(torch.cat([f0, f1, t.repeat(1, 1, *f0.shape[2:])], 1))
        return out[:, :2], out[:, 2:4], out[:, 4:]


class IntermediateDecoder(nn.Module):
    """A finer level: t-feature, warped features and flows -> flow residuals and t-feature, 2x up."""

    def __init__(self, ch: int, out: int, side: int):
        super().__init__()
        self.convblock = decoder_block(3 * ch + 4, 3 * ch, out + 4, side)

    def forward(self, ft, f0, f1, flow0, flow1):
        out = self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        return out[:, :2] + 2.0 * resize(flow0, 2.0), out[:, 2:4] + 2.0 * resize(flow1, 2.0), out[:, 4:]


class MultiFlowDecoder(nn.Module):
    """Finest level: ``n`` flow pairs, blend masks (sigmoid) and image residuals at full size."""

    def __init__(self, ch: int, side: int, n: int):
        super().__init__()
        self.n = n
        self.convblock = decoder_block(3 * ch + 4, 3 * ch, 8 * n, side)

    def forward(self, ft, f0, f1, flow0, flow1):
        n = self.n
        out = self.convblock(torch.cat([ft, warp(f0, flow0), warp(f1, flow1), flow0, flow1], 1))
        d0, d1, mask, res = torch.split(out, [2 * n, 2 * n, n, 3 * n], 1)
        return (d0 + 2.0 * resize(flow0, 2.0).repeat(1, n, 1, 1), d1 + 2.0 * resize(flow1, 2.0).repeat(1, n, 1, 1),
                torch.sigmoid(mask), res)


class UpdateBlock(nn.Module):
    """RAFT-style small update: correlation + flow features -> feature and flow residuals,
    computed at 1/``scale`` of the level's size when ``scale`` is set."""

    def __init__(self, cdim: int, scale: int | None, levels: int, radius: int,
                 hidden: int = 76, flow_dim: int = 20, corr_dim: int = 64, fc_dim: int = 68):
        super().__init__()
        planes = levels * (2 * radius + 1) ** 2
        self.scale = scale
        self.convc1 = nn.Conv2d(2 * planes, corr_dim, 1)
        self.convf1 = nn.Conv2d(4, 2 * flow_dim, 7, padding=3)
        self.convf2 = nn.Conv2d(2 * flow_dim, flow_dim, 3, padding=1)
        self.conv = nn.Conv2d(corr_dim + flow_dim, fc_dim, 3, padding=1)

        def head(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv2d(hidden, cout, 3, padding=1))

        self.gru = head(fc_dim + 4 + cdim, hidden)
        self.feat_head = head(hidden, cdim)
        self.flow_head = head(hidden, 4)

    def forward(self, feat, flow, corr):
        lrelu = F.leaky_relu
        if self.scale is not None:
            feat = resize(feat, 1 / self.scale)
        c = lrelu(self.convc1(corr), 0.1)
        f = lrelu(self.convf2(lrelu(self.convf1(flow), 0.1)), 0.1)
        x = torch.cat([lrelu(self.conv(torch.cat([c, f], 1)), 0.1), flow, feat], 1)
        hidden = self.gru(x)
        d_feat, d_flow = self.feat_head(hidden), self.flow_head(hidden)
        if self.scale is not None:
            d_feat, d_flow = resize(d_feat, self.scale), self.scale * resize(d_flow, self.scale)
        return d_feat, d_flow


class AMTS(nn.Module):
    """AMT-S (corr radius 3, 4 correlation levels, 3 flows; the released amt-s.pth)."""

    def __init__(self, radius: int = 3, levels: int = 4, num_flows: int = 3, channels=(20, 32, 44, 56), side: int = 20):
        super().__init__()
        c = channels
        self.radius, self.levels = radius, levels
        self.feat_encoder = SmallEncoder(84)
        self.encoder = PyramidEncoder(c)
        self.decoder4 = InitDecoder(c[3], c[2], side)
        self.decoder3 = IntermediateDecoder(c[2], c[1], side)
        self.decoder2 = IntermediateDecoder(c[1], c[0], side)
        self.decoder1 = MultiFlowDecoder(c[0], side, num_flows)
        self.update4 = UpdateBlock(c[2], None, levels, radius)
        self.update3 = UpdateBlock(c[1], 2, levels, radius)
        self.update2 = UpdateBlock(c[0], 4, levels, radius)
        self.comb_block = nn.Sequential(nn.Conv2d(3 * num_flows, 6 * num_flows, 3, 1, 1), nn.PReLU(6 * num_flows),
                                        nn.Conv2d(6 * num_flows, 3, 3, 1, 1))

    def _refine(self, update, corr, grid, flow0, flow1, ft, t, down: int):
        """One update step: correlations looked up where the flows (rescaled from t to 0->1 and
        1->0 under linear motion) point on the 1/8 grid, then residuals added."""
        f0, f1 = (flow0, flow1) if down == 1 else (resize(flow0, 1 / down) / down, resize(flow1, 1 / down) / down)
        c0, c1 = corr.lookup(grid + f1 * (1.0 / t), grid + f0 * (1.0 / (1.0 - t)))
        d_ft, d_flow = update(ft, torch.cat([f0, f1], 1), torch.cat([c0, c1], 1))
        return flow0 + d_flow[:, :2], flow1 + d_flow[:, 2:], ft + d_ft

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The frame at time ``t`` ([B, 1, 1, 1], e.g. 0.5) between img0 and img1, clamped to 0..1."""
        mean = torch.cat([img0, img1], 2).mean(1, keepdim=True).mean(2, keepdim=True).mean(3, keepdim=True)
        img0, img1 = img0 - mean, img1 - mean
        b, _, h, w = img0.shape
        grid = pixel_grid(b, h // 8, w // 8, img0.device)
        fmaps = self.feat_encoder(torch.cat([img0, img1])).split(b)
        corr = Correlation(fmaps[0], fmaps[1], self.levels, self.radius)
        e0, e1 = self.encoder(img0), self.encoder(img1)

        flow0, flow1, ft = self.decoder4(e0[3], e1[3], t)
        flow0, flow1, ft = self._refine(self.update4, corr, grid, flow0, flow1, ft, t, 1)
        flow0, flow1, ft = self.decoder3(ft, e0[2], e1[2], flow0, flow1)
        flow0, flow1, ft = self._refine(self.update3, corr, grid, flow0, flow1, ft, t, 2)
        flow0, flow1, ft = self.decoder2(ft, e0[1], e1[1], flow0, flow1)
        flow0, flow1, ft = self._refine(self.update2, corr, grid, flow0, flow1, ft, t, 4)
        flow0, flow1, mask, res = self.decoder1(ft, e0[0], e1[0], flow0, flow1)
        return self._merge(img0, img1, flow0, flow1, mask, res, mean).clamp(0, 1)

    def _merge(self, img0, img1, flow0, flow1, mask, res, mean):
        """Each flow pair warps both frames, blended by its mask plus residual; mean + comb_block."""
        b, c, h, w = flow0.shape
        n = c // 2
        warped0 = warp(img0.repeat_interleave(n, 0), flow0.reshape(b * n, 2, h, w))
        warped1 = warp(img1.repeat_interleave(n, 0), flow1.reshape(b * n, 2, h, w))
        mask = mask.reshape(b * n, 1, h, w)
        cands = mask * warped0 + (1 - mask) * warped1 + mean.repeat_interleave(n, 0) + res.reshape(b * n, 3, h, w)
        cands = cands.reshape(b, n, 3, h, w)
        return cands.mean(1) + self.comb_block(cands.view(b, -1, h, w))
