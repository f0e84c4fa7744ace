"""Denoiser networks F(x_in, c_noise): a diffusers UNet2DModel for images, an MLP for vectors.

Both take the preconditioned input c_in * x and the noise conditioning c_noise (a float per
sample, on DDPM's 0..1000 timestep scale, see objectives.TIMESTEP_SCALE) and return a tensor
shaped like x.  `build_net(spec)` makes one from a plain dict, so a checkpoint's config.json
rebuilds exactly the network whose weights it holds.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DModel
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


class UNet(nn.Module):
    """diffusers' UNet2DModel with continuous noise conditioning.

    diffusers casts integer timesteps to long, so c_noise is always passed as float."""

    kind = "unet"

    def __init__(self, sample_size: int = 8, in_channels: int = 1,
                 channels: tuple[int, ...] = (32, 64), layers_per_block: int = 1,
                 attention: bool = False, norm_num_groups: int = 8, dropout: float = 0.0):
        super().__init__()
        channels = tuple(channels)
        bad = [c for c in channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count; "
                             f"it does not divide {bad}")
        down = ["DownBlock2D"] * len(channels)
        up = ["UpBlock2D"] * len(channels)
        if attention:  # attention at the lowest resolution only: cheap and the usual choice
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.unet = UNet2DModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
            block_out_channels=channels, layers_per_block=layers_per_block,
            down_block_types=tuple(down), up_block_types=tuple(up),
            norm_num_groups=norm_num_groups, dropout=dropout,
            time_embedding_type="positional", flip_sin_to_cos=True, freq_shift=0,
        )

    def forward(self, x, c_noise):
        return self.unet(x, c_noise.to(torch.float32)).sample


class MLP(nn.Module):
    """Residual MLP for vectors, conditioned by a sinusoidal embedding of c_noise
    (the same embedding the UNet uses) added to every hidden layer."""

    kind = "mlp"

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, embed_dim: int = 64):
        super().__init__()
        self.embed_dim = embed_dim
        self.inp = nn.Linear(dim, hidden)
        self.embed = nn.Sequential(nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, c_noise):
        e = get_timestep_embedding(c_noise.to(torch.float32), self.embed_dim,
                                   flip_sin_to_cos=True, downscale_freq_shift=0)
        e = self.embed(e.to(x.dtype))
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h + e)
        return self.out(h)


NETS = {"unet": UNet, "mlp": MLP}


def build_net(spec: dict) -> nn.Module:
    """spec: {"kind": "unet" | "mlp", ...constructor arguments}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in NETS:
        raise ValueError(f"unknown network kind {kind!r}; allowed: {sorted(NETS)}")
    try:
        return NETS[kind](**spec)
    except TypeError as e:
        raise ValueError(f"bad arguments for network {kind!r}: {e}") from None


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
