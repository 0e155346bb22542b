"""A small text-conditioned 3D U-Net (both GVGEN stages use it).

GVGEN's U-Nets (REFERENCES.md "GVGEN": 224 x [1, 2, 4, 4] channels, 2 res blocks per level,
cross-attention to the text's per-token states at the 8^3 and 4^3 levels and the middle) are sized
for GPUs; this one keeps the structure at CPU size:

* residual blocks (GroupNorm, SiLU, 3^3 convolutions) whose second normalisation is modulated by
  the conditioning vector (FiLM / adaptive GroupNorm: ``h * (1 + scale) + shift``, zero-initialised
  so a new block starts as the identity modulation). The vector is the pooled text embedding
  (projected), plus the diffusion timestep's sinusoidal embedding for stage 1;
* multi-head cross-attention from every voxel to the caption's token states (padding masked) at the
  levels listed in ``attn_levels`` and in the middle (zero-initialised output projection);
* optionally a space-to-depth stem (``patch = 2``: each 2^3 block of voxels becomes channels, the
  U-Net runs at N/2 and the output is folded back), which makes N = 32 cost about what N = 16 does
  on a CPU;
* strided-convolution downsampling, nearest-neighbour upsampling + convolution, skip connections
  by concatenation.

Input ``(B, C_in, N, N, N)``, output ``(B, C_out, N, N, N)``; N must be divisible by
``2 ** (len(mults) - 1)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _groups(c: int) -> int:
    for g in (8, 4, 2, 1):
        if c % g == 0:
            return g
    return 1


class Conv3d3(nn.Conv3d):
    """A 3^3 convolution (padding 1, stride 1) computed as one 2D convolution over the depth slices
    with the three depth taps folded into the output channels, then summed with a one-slice shift.

    Same parameters and values as :class:`torch.nn.Conv3d` (a test compares them); on CPU torch runs
    3D convolutions through its slow unfold path, this one through oneDNN's 2D kernels (2-3x faster
    forward and backward at 16-32^3 here)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, D, H, W = x.shape
        O = self.out_channels
        w2 = self.weight.permute(2, 0, 1, 3, 4).reshape(3 * O, C, 3, 3)
        y = F.conv2d(x.transpose(1, 2).reshape(B * D, C, H, W), w2, padding=1).reshape(B, D, 3, O, H, W)
        out = y[:, :, 1] + self.bias[None, None, :, None, None]
        if D > 1:   # tap kd = 0 reads the slice before, kd = 2 the slice after (zero padding at the ends)
            out = torch.cat([out[:, :1], out[:, 1:] + y[:, :-1, 0]], 1)
            out = torch.cat([out[:, :-1] + y[:, 1:, 2], out[:, -1:]], 1)
        return out.transpose(1, 2)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer timesteps ``t`` (B,) (the DDPM/Transformer one)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], -1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, FiLM-modulated GroupNorm-SiLU-conv, plus a (1^3 conv) skip."""

    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = Conv3d3(cin, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.film = nn.Linear(cond_dim, 2 * cout)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        self.conv2 = Conv3d3(cout, cout)
        self.skip = nn.Conv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(cond)[:, :, None, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return h + self.skip(x)


class CrossAttention3D(nn.Module):
    """Every voxel attends to the caption tokens ``(B, L, text_dim)`` (``mask (B, L)`` True = real
    token); residual, zero-initialised output."""

    def __init__(self, channels: int, text_dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads if channels % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.q = nn.Linear(channels, channels, bias=False)
        self.kv = nn.Linear(text_dim, 2 * channels, bias=False)
        self.out = nn.Linear(channels, channels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, C = x.shape[:2]
        sp = x.shape[2:]
        h = self.norm(x).flatten(2).transpose(1, 2)                     # (B, V, C)
        nh, d = self.heads, C // self.heads
        q = self.q(h).reshape(B, -1, nh, d).transpose(1, 2)             # (B, nh, V, d)
        k, v = self.kv(tokens).chunk(2, dim=-1)
        k = k.reshape(B, -1, nh, d).transpose(1, 2)
        v = v.reshape(B, -1, nh, d).transpose(1, 2)
        am = None if mask is None else mask[:, None, None, :].to(torch.bool)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=am)      # (B, nh, V, d)
        o = self.out(o.transpose(1, 2).reshape(B, -1, C))
        return x + o.transpose(1, 2).reshape(B, C, *sp)


def space_to_depth(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, N, N, N) -> (B, C p^3, N/p, N/p, N/p): each p^3 block of voxels becomes channels."""
    if p == 1:
        return x
    B, C, D, H, W = x.shape
    x = x.reshape(B, C, D // p, p, H // p, p, W // p, p).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(B, C * p ** 3, D // p, H // p, W // p)


def depth_to_space(x: torch.Tensor, p: int) -> torch.Tensor:
    """The inverse of :func:`space_to_depth`."""
    if p == 1:
        return x
    B, Cp, D, H, W = x.shape
    C = Cp // p ** 3
    x = x.reshape(B, C, p, p, p, D, H, W).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(B, C, D * p, H * p, W * p)


class UNet3D(nn.Module):
    """See the module docstring. ``time_embedding=False`` for stage 2 (no diffusion step)."""

    def __init__(self, in_channels: int, out_channels: int, *, channels: int = 16, mults=(1, 2, 4),
                 blocks: int = 1, attn_levels=(1, 2), text_dim: int = 384, heads: int = 4,
                 time_embedding: bool = True, patch: int = 1):
        super().__init__()
        self.hparams = {"in_channels": in_channels, "out_channels": out_channels, "channels": channels,
                        "mults": list(mults), "blocks": blocks, "attn_levels": list(attn_levels),
                        "text_dim": text_dim, "heads": heads, "time_embedding": time_embedding, "patch": patch}
        self.patch = int(patch)
        in_channels, out_channels = in_channels * self.patch ** 3, out_channels * self.patch ** 3
        cd = channels * 4
        self.cond_dim = cd
        self.time_embedding = time_embedding
        if time_embedding:
            self.t_mlp = nn.Sequential(nn.Linear(channels, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.txt_mlp = nn.Sequential(nn.Linear(text_dim, cd), nn.SiLU(), nn.Linear(cd, cd))
        self.inp = Conv3d3(in_channels, channels)
        chans = [channels * m for m in mults]
        self.down = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [channels]
        c = channels
        for lvl, ch in enumerate(chans):
            blk, att = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks):
                blk.append(ResBlock(c, ch, cd))
                att.append(CrossAttention3D(ch, text_dim, heads) if lvl in attn_levels else nn.Identity())
                c = ch
                skips.append(c)
            self.down.append(blk)
            self.down_attn.append(att)
            if lvl < len(chans) - 1:
                self.downsample.append(nn.Conv3d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1 = ResBlock(c, c, cd)
        self.mid_attn = CrossAttention3D(c, text_dim, heads)
        self.mid2 = ResBlock(c, c, cd)
        self.up = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for lvl in reversed(range(len(chans))):
            ch = chans[lvl]
            blk, att = nn.ModuleList(), nn.ModuleList()
            for _ in range(blocks + 1):
                blk.append(ResBlock(c + skips.pop(), ch, cd))
                att.append(CrossAttention3D(ch, text_dim, heads) if lvl in attn_levels else nn.Identity())
                c = ch
            self.up.append(blk)
            self.up_attn.append(att)
            if lvl > 0:
                self.upsample.append(Conv3d3(c, c))
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = Conv3d3(c, out_channels)
        self.levels = len(chans)

    @property
    def multiple(self) -> int:
        """N must be a multiple of this."""
        return self.patch * 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, pooled: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor | None,
                t: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] % self.multiple:
            raise ValueError(f"grid size {x.shape[-1]} is not a multiple of {self.multiple}")
        cond = self.txt_mlp(pooled)
        if self.time_embedding:
            cond = cond + self.t_mlp(timestep_embedding(t, self.hparams["channels"]))
        cond = F.silu(cond)
        h = self.inp(space_to_depth(x, self.patch))
        hs = [h]
        for lvl in range(self.levels):
            for blk, att in zip(self.down[lvl], self.down_attn[lvl]):
                h = blk(h, cond)
                if not isinstance(att, nn.Identity):
                    h = att(h, tokens, mask)
                hs.append(h)
            if lvl < self.levels - 1:
                h = self.downsample[lvl](h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, cond), tokens, mask), cond)
        for i, lvl in enumerate(reversed(range(self.levels))):
            for blk, att in zip(self.up[i], self.up_attn[i]):
                h = blk(torch.cat([h, hs.pop()], 1), cond)
                if not isinstance(att, nn.Identity):
                    h = att(h, tokens, mask)
            if lvl > 0:
                h = self.upsample[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return depth_to_space(self.out(F.silu(self.out_norm(h))), self.patch)
